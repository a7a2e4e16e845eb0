"""A client for each server `python -m bench.peers` compares, speaking that server's own websocket protocol.

Every client records when each 100 ms audio frame left and what arrived when (finals, partials), on the same
monotonic clock, so that bench.peers computes every server's numbers the same way."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.client import connect

from client.stream import encode

from .clips import RATE

FRAME = RATE // 10  # 100 ms frames


@dataclass
class Final:
    arrival: float  # time.monotonic()
    start: float  # seconds of stream audio
    end: float
    text: str


@dataclass
class StreamRun:
    """One stream: when each frame left, and what came back when."""
    index: int
    sent_at: list[float] = field(default_factory=list)  # frame i holds samples [i * FRAME, (i + 1) * FRAME)
    finals: list[Final] = field(default_factory=list)
    partials: list[float] = field(default_factory=list)  # arrival times
    text: str = ""  # the stream's final transcript
    finished: bool = False  # the server finished the stream before the drain bound
    error: str | None = None
    tail: str = ""  # text the server still held uncommitted when the stream was closed (not in `text`)
    notes: list[str] = field(default_factory=list)

    def sent_time(self, end_s: float) -> float:
        """When the frame holding the sample just before `end_s` left (the last frame if it lies beyond)."""
        position = round(end_s * RATE)
        return self.sent_at[min(max(position - 1, 0) // FRAME, len(self.sent_at) - 1)]


def s16le(frame: np.ndarray) -> bytes:
    return encode(frame, "pcm_s16le")


def f32le(frame: np.ndarray) -> bytes:
    return encode(frame, "pcm_f32le")


class Client:
    """One stream to one server: `open` (connect, handshake, start receiving), `run` (audio at the pace, then
    whatever this protocol does to end a stream, bounded by `drain_s`), `close`."""

    encode = staticmethod(s16le)

    def __init__(self, url: str, audio: np.ndarray, run: StreamRun):
        self.url, self.audio, self.run = url, audio, run
        self.ws = None
        self.receiver: asyncio.Task | None = None
        self.last_message = time.monotonic()

    async def open(self, timeout: float = 60.0) -> None:
        raise NotImplementedError

    async def finish(self, drain_s: float) -> None:
        raise NotImplementedError

    async def send_audio(self, start_at: float) -> None:
        for i in range(0, len(self.audio), FRAME):
            frame = self.audio[i:i + FRAME]
            # Like a microphone: a frame leaves once all of its audio has been spoken.
            await asyncio.sleep(max(0.0, start_at + (i + len(frame)) / RATE - time.monotonic()))
            # Stamped before the send: a caption of this frame may be read while the send waits to drain.
            self.run.sent_at.append(time.monotonic())
            await self.ws.send(self.encode(frame))

    async def run_stream(self, start_at: float, drain_s: float) -> None:
        try:
            await self.send_audio(start_at)
            await self.finish(drain_s)
        except Exception as exc:  # noqa: BLE001 - a failed stream is reported, the others go on
            self.run.error = self.run.error or f"{type(exc).__name__}: {exc}"
        finally:
            await self.close()

    def start_receiving(self) -> None:
        async def receive() -> None:
            try:
                async for raw in self.ws:
                    self.last_message = time.monotonic()
                    if isinstance(raw, str):
                        self.on_message(self.last_message, json.loads(raw))
            except Exception as exc:  # noqa: BLE001 - a dropped connection ends the stream, it is reported
                if not self.run.finished:
                    self.run.error = self.run.error or f"receiving: {type(exc).__name__}: {exc}"
        self.receiver = asyncio.create_task(receive())

    def on_message(self, t: float, msg: dict) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), timeout=5)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        if self.receiver is not None:
            self.receiver.cancel()
            try:
                await self.receiver
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass


class OursClient(Client):
    """docs/protocol.md: `start`, pcm_s16le frames, `stop`; `partial` and `final` messages, then `end`."""

    async def open(self, timeout: float = 60.0) -> None:
        self.ws = await connect(self.url, max_size=None, open_timeout=timeout)
        await self.ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le",
                                       "channels": 1}))
        ready = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=timeout))
        if ready.get("type") != "ready":
            raise RuntimeError(f"the server refused the stream: {ready}")
        self.ended = asyncio.Event()
        self.start_receiving()

    def on_message(self, t: float, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "final":
            self.run.finals.append(Final(t, float(msg["start"]), float(msg["end"]), msg.get("text", "")))
        elif kind == "partial":
            self.run.partials.append(t)
        elif kind == "error":
            self.run.notes.append(f"error {msg.get('code')}: {msg.get('message')}")
        elif kind == "end":
            self.run.finished = True
            self.ended.set()

    async def finish(self, drain_s: float) -> None:
        await self.ws.send(json.dumps({"type": "stop"}))
        try:
            await asyncio.wait_for(self.ended.wait(), timeout=drain_s)
        except asyncio.TimeoutError:
            pass
        self.run.text = " ".join(f.text.strip() for f in self.run.finals if f.text.strip())


class WhisperLiveClient(Client):
    """WhisperLive 0.10.0 (whisper_live/server.py, backend/base.py): a JSON options message, float32 frames, the
    bytes END_OF_AUDIO. The server answers SERVER_READY (or WAIT when full, and closes), then `segments` lists:
    the last few completed segments and, last, the one still being transcribed (`completed` false). A segment is
    final once it arrives completed; it is counted once, by its start time. A change of the uncompleted segment
    is a partial.

    The server has no flush: on END_OF_AUDIO it drops whatever it has not completed. So the client first waits,
    after its last frame, until the server has caught up: nothing uncompleted left, no message for 3 s and
    segments up to the last 3 s of the audio; bounded by the drain time, and by 30 s without a message (then the
    stream counts as unfinished)."""

    encode = staticmethod(f32le)

    def __init__(self, url: str, audio: np.ndarray, run: StreamRun):
        super().__init__(url, audio, run)
        self.uid = str(uuid.uuid4())
        self.completed: dict[str, Final] = {}
        self.pending: tuple[str, str] | None = None  # (start, text) of the uncompleted segment
        self.covered = 0.0  # the latest segment end seen, seconds

    async def open(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.ws = await connect(self.url, max_size=None, open_timeout=timeout)
            await self.ws.send(json.dumps({
                "uid": self.uid, "language": "en", "task": "transcribe", "model": "tiny.en", "use_vad": True,
                "send_last_n_segments": 10, "no_speech_thresh": 0.45, "clip_audio": False,
                "same_output_threshold": 10}))
            try:
                msg = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=max(1.0, deadline - time.monotonic())))
            except Exception as exc:  # noqa: BLE001 - refused (closed without a word) counts as a WAIT
                msg = {"status": "CLOSED", "message": f"{type(exc).__name__}"}
            if msg.get("message") == "SERVER_READY":
                break
            await self.close_quietly()
            if msg.get("status") not in ("WAIT", "CLOSED") or time.monotonic() > deadline:
                raise RuntimeError(f"WhisperLive refused the stream: {msg}")
            self.run.notes.append(f"connect retried after {msg.get('status')}")
            await asyncio.sleep(1.0)
        self.start_receiving()

    async def close_quietly(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), timeout=5)
        except Exception:  # noqa: BLE001
            pass

    def on_message(self, t: float, msg: dict) -> None:
        if msg.get("uid") not in (None, self.uid):
            return
        if msg.get("message") == "DISCONNECT":
            self.run.notes.append("server disconnected the stream (max_connection_time)")
        if "segments" not in msg:
            return
        segments = msg["segments"]
        pending = None
        for seg in segments:
            start, end, text = seg["start"], float(seg["end"]), seg.get("text", "")
            self.covered = max(self.covered, end)
            if seg.get("completed"):
                if start not in self.completed:
                    self.completed[start] = Final(t, float(start), end, text)
                    self.run.finals.append(self.completed[start])
            else:
                pending = (start, text)
        if pending is not None and pending != self.pending:
            self.run.partials.append(t)
        self.pending = pending

    async def finish(self, drain_s: float) -> None:
        audio_s = len(self.audio) / RATE
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            quiet = time.monotonic() - self.last_message
            if self.pending is None and quiet >= 3.0 and self.covered >= audio_s - 3.0:
                self.run.finished = True
                break
            if quiet >= 30.0:  # behind, stalled, or its last words filtered out: it is not finishing
                self.run.notes.append(f"server quiet for 30 s with segments up to {self.covered:.1f} s of "
                                      f"{audio_s:.1f} s")
                break
            if self.receiver.done():
                break
        if self.pending is not None:
            self.run.tail = self.pending[1].strip()
        if not self.receiver.done():
            await self.ws.send(b"END_OF_AUDIO")
            try:
                await asyncio.wait_for(asyncio.shield(self.receiver), timeout=5)
            except asyncio.TimeoutError:
                pass
        ordered = sorted(self.completed.values(), key=lambda f: f.start)
        self.run.text = " ".join(f.text.strip() for f in ordered if f.text.strip())


def wlk_seconds(value) -> float:
    """WhisperLiveKit's times: "H:MM:SS.cc" (timed_objects.format_time) or a number."""
    if isinstance(value, (int, float)):
        return float(value)
    seconds = 0.0
    for part in str(value).split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


class WhisperLiveKitClient(Client):
    """WhisperLiveKit 0.2.26 /asr with --pcm-input (basic_server.py, audio_processor.py): s16le PCM frames, an
    empty frame to end. The server sends `config`, then its whole state on each change: `lines` (committed text,
    one line per stretch between silences, each growing as LocalAgreement commits words; silences are lines of
    speaker -2) and `buffer_transcription` (the uncommitted hypothesis), and `ready_to_stop` once it has
    processed everything. Committed words never change: each time a line's committed words grow, the new words
    are a final ending at that line's end. A change of a non-empty buffer_transcription is a partial."""

    async def open(self, timeout: float = 60.0) -> None:
        self.ws = await connect(self.url, max_size=None, open_timeout=timeout)
        config = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=timeout))
        if config.get("type") != "config":
            raise RuntimeError(f"WhisperLiveKit did not start the stream: {config}")
        self.lines: dict[float, str] = {}  # line start -> committed text
        self.buffer = ""
        self.done = asyncio.Event()
        self.start_receiving()

    def on_message(self, t: float, msg: dict) -> None:
        if msg.get("type") == "ready_to_stop":
            self.run.finished = True
            self.done.set()
            return
        if msg.get("error"):
            self.run.notes.append(f"error: {msg['error']}")
        for line in msg.get("lines", []):
            text = (line.get("text") or "").strip()
            if line.get("speaker") == -2 or not text:
                continue
            start, end = wlk_seconds(line["start"]), wlk_seconds(line["end"])
            before = self.lines.get(start, "")
            if len(text.split()) > len(before.split()):
                added = " ".join(text.split()[len(before.split()):])
                self.run.finals.append(Final(t, start, end, added))
            self.lines[start] = text
        buffer = (msg.get("buffer_transcription") or "").strip()
        if buffer and buffer != self.buffer:
            self.run.partials.append(t)
        self.buffer = buffer

    async def finish(self, drain_s: float) -> None:
        await self.ws.send(b"")
        try:
            await asyncio.wait_for(self.done.wait(), timeout=drain_s)
        except asyncio.TimeoutError:
            pass
        self.run.tail = self.buffer
        self.run.text = " ".join(self.lines[s] for s in sorted(self.lines))


CLIENTS = {"ours": OursClient, "whisperlive": WhisperLiveClient, "whisperlivekit": WhisperLiveKitClient}
