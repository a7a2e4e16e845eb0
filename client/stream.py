"""Streams audio to `/v1/listen` at a given pace and collects the captions: the core of the file client,
also used by tests and benchmarks."""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import soundfile as sf
import soxr
from websockets.asyncio.client import connect

from .resample import to_pcm16

SERVER_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
DEFAULT_URL = "ws://127.0.0.1:8765/v1/listen"
MAX_CONTEXT = 500  # characters of `context` (names and terms likely to be said) a start may carry


def start_message(sample_rate: int, encoding: str = "pcm_s16le", *, context: str | None = None,
                  room: str | None = None, speaker: str | None = None, **extra) -> dict:
    """The `start` message every client sends, first on each connection (a reconnect sends it again, context
    included: the server keeps nothing between sessions). Optional fields are left out when empty."""
    msg = {"type": "start", "sample_rate": sample_rate, "encoding": encoding, "channels": 1}
    context = (context or "").strip()
    if len(context) > MAX_CONTEXT:
        raise ValueError(f"context is {len(context)} characters; at most {MAX_CONTEXT}")
    for key, value in (("context", context), ("room", room), ("speaker", speaker)):
        if value:
            msg[key] = value
    return {**msg, **extra}


def context_arg(value: str) -> str:
    """The argparse type of the clients' --context: at most MAX_CONTEXT characters once its ends are trimmed."""
    value = value.strip()
    if len(value) > MAX_CONTEXT:
        raise argparse.ArgumentTypeError(f"{len(value)} characters, more than the {MAX_CONTEXT} the server "
                                         f"takes: keep it to the names and terms most likely to be said")
    return value


def load_audio(path: str) -> tuple[np.ndarray, int]:
    """Any file soundfile reads -> float32 mono at a rate the server accepts (resampled only if it must be)."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate not in SERVER_RATES:
        audio, rate = soxr.resample(audio, rate, 16000).astype(np.float32), 16000
    return audio, rate


def encode(audio: np.ndarray, encoding: str) -> bytes:
    if encoding == "pcm_f32le":
        return audio.astype("<f4").tobytes()
    return to_pcm16(audio).tobytes()


@dataclass
class StreamResult:
    ready: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)  # everything the server sent, in order
    close_code: int | None = None

    @property
    def finals(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "final"]

    @property
    def partials(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "partial"]

    @property
    def text(self) -> str:
        return " ".join(m["text"] for m in self.finals if m["text"])


async def stream_audio(audio: np.ndarray, rate: int, url: str = DEFAULT_URL, speed: float = 1.0,
                       frame_ms: int = 50, encoding: str = "pcm_s16le",
                       on_message: Callable[[dict], None] | None = None, start_extra: dict | None = None,
                       timeout: float = 300.0, context: str | None = None) -> StreamResult:
    """Sends `audio` in `frame_ms` frames, `speed` times real time (0 = as fast as the server reads), then
    `stop`; returns once the server has sent `end` and closed. `context`: names and terms likely to be said,
    sent in `start` for the model's prompt."""
    result = StreamResult()
    frame = max(1, rate * frame_ms // 1000)
    async with connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps(start_message(rate, encoding, context=context, **(start_extra or {}))))
        result.ready = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        if result.ready.get("type") != "ready":
            raise RuntimeError(f"server refused the stream: {result.ready}")

        async def receive() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                result.messages.append(msg)
                if on_message:
                    on_message(msg)

        receiver = asyncio.create_task(receive())
        t0 = time.monotonic()
        for i in range(0, len(audio), frame):
            await ws.send(encode(audio[i:i + frame], encoding))
            if speed > 0:
                due = t0 + (i + frame) / rate / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(receiver, timeout=timeout)
        result.close_code = ws.close_code
    return result
