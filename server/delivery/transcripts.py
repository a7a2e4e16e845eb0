"""Transcripts on disk: every final is appended to a JSONL file per session (and per room) before it is sent, so
that what was said survives a disconnect, a crash or a restart. Served at /v1/transcripts/.

Each append is fsynced before the final goes out, so a final a client saw survives a power cut too. The writes
run in one thread of their own, in order, never on the event loop; so does reading a transcript for rendering.
"""
from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from caption_formats import WRITERS

FORMATS = ("json", "txt", "srt", "vtt")


class TranscriptStore:
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir)
        (self.root / "sessions").mkdir(parents=True, exist_ok=True)
        (self.root / "rooms").mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transcripts")  # one: appends in order
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="transcript-render")

    async def save(self, session_id: str, room: str | None, line: dict) -> None:
        """Appends one final's transcript line (records.transcript_line), durably and off the event loop; returns
        once it is on disk."""
        await asyncio.get_running_loop().run_in_executor(self._writer, self.append, session_id, room, line)

    async def finals_async(self, kind: str, name: str) -> list[dict] | None:
        return await asyncio.get_running_loop().run_in_executor(self._readers, self.finals, kind, name)

    async def render_async(self, kind: str, name: str, fmt: str,
                           finals: list[dict] | None = None) -> tuple[str, str] | None:
        return await asyncio.get_running_loop().run_in_executor(self._readers, self.render, kind, name, fmt, finals)

    def close(self) -> None:
        """Waits for the appends already handed over (they are short), then lets the threads go."""
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=False, cancel_futures=True)

    def append(self, session_id: str, room: str | None, record: dict) -> None:
        """One final's line, written and fsynced (blocking: called through save())."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        paths = [self.root / "sessions" / f"{session_id}.jsonl"]
        if room is not None:
            paths.append(self.root / "rooms" / f"{room}.jsonl")
        for path in paths:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def finals(self, kind: str, name: str) -> list[dict] | None:
        """The stored finals of a session or room, or None if there is none."""
        path = self.root / kind / f"{name}.jsonl"
        if not path.is_file():
            return None
        finals = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                finals.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash mid-write: keep every whole one
        return finals

    def render(self, kind: str, name: str, fmt: str, finals: list[dict] | None = None) -> tuple[str, str] | None:
        """(body, content type) of a transcript in one of FORMATS (its finals: given, or read from disk), or
        None."""
        finals = self.finals(kind, name) if finals is None else finals
        if finals is None or fmt not in FORMATS:
            return None
        if fmt == "json":
            return json.dumps({kind[:-1]: name, "finals": finals}, ensure_ascii=False), "application/json"
        ctype = {"txt": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}[fmt]
        return WRITERS["." + fmt](finals), ctype + "; charset=utf-8"

