"""The mic client's resume link (client.link) driven as `python -m client.mic` drives it, for the tests that cut its
connection (a proxy's cut, a replica killed or drained): the clips, the cut point, and run_link."""
from __future__ import annotations

import asyncio
import json

import numpy as np

from client.capture import AudioFeed
from client.link import Backlog, CaptionLink

from .audio import RATE
from .waits import until

FRAME = RATE * 40 // 1000  # the mic client's 40 ms frames
BLOCK = RATE // 50         # 20 ms blocks, as the capture callback hands them over

CLIPS, PAUSES = ["lj001_0005.wav", "jfk_16k.wav", "ldc93s1.wav"], [1.5, 1.5, 1.0]  # 26 s: 8.1 + 11 + 2.9 s of speech
# The cut: 12.44 s, 2.83 s into jfk, in the 0.6 s pause after "my fellow Americans" (12.30-12.89 s), on a 40 ms
# frame edge. Even inside the pause Whisper tiny.en reads the window that ends there as "... am I fellow ..."
# for some ends (12.36, 12.49, 12.53 s, ...); from 12.37 to 12.48 s it reads it alike, so the cut is there.
CUT = int(12.44 * RATE)


def push(feed: AudioFeed, audio: np.ndarray) -> None:
    for i in range(0, len(audio), BLOCK):
        feed.push(audio[i:i + BLOCK])


async def all_read_one_final_open(link: CaptionLink, ws, messages: list[dict]) -> None:
    """Waits until the link has its first final and has sent all the audio it holds, and the server has read it
    all (through a proxy or nginx): it answers a ping after the audio before it, so the server's open window then
    ends where the fed audio does."""
    await until(lambda: len(link.finals) >= 1 and link.sent == link.backlog.end,
                what="the first final and all audio sent")
    pongs = sum(m["type"] == "pong" for m in messages)
    await ws.send(json.dumps({"type": "ping"}))
    await until(lambda: sum(m["type"] == "pong" for m in messages) > pongs, what="the server to read all audio sent")
    assert len(link.finals) == 1, link.finals  # the window at the cut is still open


async def run_link(url: str, audio: np.ndarray, cut_at: int | None = None, interrupt=None,
                   room: str | None = None) -> tuple[CaptionLink, dict, list[dict], list[str]]:
    """Streams `audio` through a CaptionLink as the mic command would (20 ms blocks at 16 kHz, as fast as the link
    takes them). With `cut_at`: that many samples, then, once the first final is in and the server has read the
    rest of them, `await interrupt(link)` (a proxy's cut, a replica's kill), then the rest. Returns the link, its
    first `ready`, what it showed, its statuses."""
    messages, statuses = [], []
    link = CaptionLink(url, Backlog(max_s=30), messages.append, statuses.append, room=room, backoff=(0.2, 1.0),
                       open_timeout=30)
    feed = AudioFeed(RATE, link.backlog, link.wake)
    ws = await link.connect()
    first_ready = dict(link.ready)
    runner = asyncio.create_task(link.run(ws))
    try:
        if cut_at is None:
            push(feed, audio)
        else:
            push(feed, audio[:cut_at])
            await all_read_one_final_open(link, ws, messages)
            await interrupt(link)
            push(feed, audio[cut_at:])
        feed.flush()
        link.finish()
        await asyncio.wait_for(runner, timeout=240)
    finally:
        runner.cancel()
    return link, first_ready, messages, statuses
