"""Transcripts on disk: every final is appended to a JSONL file per session (and per room) as it is sent, so
that what was said survives a disconnect, a crash or a restart. Served at /v1/transcripts/."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from client.captions import WRITERS

SESSION_ID = re.compile(r"[0-9a-f]{12}")
FORMATS = ("json", "txt", "srt", "vtt")


class TranscriptStore:
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir)
        (self.root / "sessions").mkdir(parents=True, exist_ok=True)
        (self.root / "rooms").mkdir(parents=True, exist_ok=True)

    def append(self, session_id: str, room: str | None, final: dict) -> None:
        """One final, flushed before the client sees it. Small appends: cheap enough for the event loop."""
        line = json.dumps({**final, "session": session_id, "time": time.time()}, ensure_ascii=False) + "\n"
        paths = [self.root / "sessions" / f"{session_id}.jsonl"]
        if room is not None:
            paths.append(self.root / "rooms" / f"{room}.jsonl")
        for path in paths:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)

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

    def render(self, kind: str, name: str, fmt: str) -> tuple[str, str] | None:
        """(body, content type) of a transcript in one of FORMATS, or None."""
        finals = self.finals(kind, name)
        if finals is None or fmt not in FORMATS:
            return None
        if fmt == "json":
            return json.dumps({kind[:-1]: name, "finals": finals}, ensure_ascii=False), "application/json"
        ctype = {"txt": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}[fmt]
        return WRITERS["." + fmt](finals), ctype + "; charset=utf-8"
