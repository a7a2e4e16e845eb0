"""Protocol v1 by hand over a raw websocket: reading the server's messages, knowing that it has read everything
sent (it answers a ping in order), and the checks that every stream's messages must pass."""
from __future__ import annotations

import asyncio
import json

from .waits import all_read


async def recv(ws, timeout: float = 60) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def collect_until(ws, done, messages: list, timeout: float = 60) -> None:
    """Reads messages into `messages` until done(messages) or the timeout."""
    async def read():
        while not done(messages):
            messages.append(await recv(ws, timeout))
    await asyncio.wait_for(read(), timeout)


async def read_all_sent(ws, messages: list) -> None:
    """Returns once the server has read everything sent so far: it answers a ping in order. What came meanwhile
    goes into `messages`, the pong last."""
    messages += await all_read(ws, {"type": "ping"}, "pong")


def check_protocol_order(messages: list[dict]) -> None:
    """Finals numbered 0,1,2... once each, in order; no partial of a segment after its final; sane times."""
    finals = [m for m in messages if m["type"] == "final"]
    assert [f["segment"] for f in finals] == list(range(len(finals)))
    done: set[int] = set()
    for m in messages:
        if m["type"] in ("partial", "final"):
            assert m["segment"] not in done, f"{m['type']} of segment {m['segment']} after its final"
            assert 0 <= m["start"] < m["end"] and m["end"] - m["start"] <= 10.0
        if m["type"] == "partial":
            assert 0 <= m["stable"] <= len(m["text"].split())
        if m["type"] == "final":
            done.add(m["segment"])
    assert messages[-1]["type"] == "end"


def text(finals: list[dict]) -> str:
    """The finals' words in order, the empty ones (windows of noise) left out."""
    return " ".join(f["text"] for f in finals if f["text"].strip())
