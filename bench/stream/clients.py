"""bench.stream's clients: N concurrent streams, each sending its clips back to back, one websocket a clip, paced
like a microphone; when each frame left and when each message arrived."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from websockets.asyncio.client import connect

from client.stream import encode

from ..clips import RATE, Clip

FRAME = RATE * 50 // 1000  # 50 ms frames, as the file client sends them


@dataclass
class ClipRun:
    """One clip streamed over one websocket: when each frame left, and each message with its arrival time."""

    clip: Clip
    ready: dict = field(default_factory=dict)
    sent_at: list[float] = field(default_factory=list)  # frame i holds samples [i * FRAME, (i + 1) * FRAME)
    messages: list[tuple[float, dict]] = field(default_factory=list)

    def sent_time(self, position: int) -> float:
        """When the audio just before stream position `position` (a sample index) was sent."""
        return self.sent_at[min(max(position - 1, 0) // FRAME, len(self.sent_at) - 1)]

    def of_type(self, kind: str) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in self.messages if m["type"] == kind]

    @property
    def hypothesis(self) -> str:
        return " ".join(m["text"] for _, m in self.of_type("final") if m["text"])



async def stream_clip(clip: Clip, url: str, speed: float, sent: asyncio.Event) -> ClipRun:
    """Streams one clip over its own websocket; sets `sent` once all of its audio has left (or on failure),
    then waits for the rest of its captions."""
    run = ClipRun(clip)
    try:
        async with connect(url, max_size=None, open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1}))
            run.ready = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
            if run.ready.get("type") != "ready":
                raise RuntimeError(f"server refused the stream: {run.ready}")

            async def receive() -> None:
                async for raw in ws:
                    run.messages.append((time.monotonic(), json.loads(raw)))

            receiver = asyncio.create_task(receive())
            t0 = time.monotonic()
            for i in range(0, len(clip.audio), FRAME):
                chunk = clip.audio[i:i + FRAME]
                # Like a microphone: a frame leaves once all of its audio has been spoken.
                await asyncio.sleep(max(0.0, t0 + (i + len(chunk)) / RATE / speed - time.monotonic()))
                # Stamped before the send: a caption of this frame may be read while the send waits to drain.
                run.sent_at.append(time.monotonic())
                await ws.send(encode(chunk, "pcm_s16le"))
            await ws.send(json.dumps({"type": "stop"}))
            sent.set()
            await asyncio.wait_for(receiver, timeout=900)  # a saturated server may owe many finals
    finally:
        sent.set()  # never leave the stream waiting on a clip that failed
    return run


async def stream_all(clips: list[Clip], url: str, streams: int, speed: float) -> list[ClipRun]:
    """`streams` concurrent streams. Each sends its clips back to back at the pace, like a speaker who goes on
    talking: the next clip starts when the previous one's audio is sent, not when its last final arrives, so a
    slow server sees the full offered load. Runs come back in clip order."""
    async def one_stream(indices: range) -> list[ClipRun]:
        tasks = []
        for i in indices:
            sent = asyncio.Event()
            tasks.append(asyncio.create_task(stream_clip(clips[i], url, speed, sent)))
            await sent.wait()
        return list(await asyncio.gather(*tasks))

    shares = await asyncio.gather(*(one_stream(range(s, len(clips), streams)) for s in range(streams)))
    runs = [None] * len(clips)
    for s, share in enumerate(shares):
        runs[s::streams] = share
    return runs

