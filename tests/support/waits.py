"""Waiting on a condition instead of sleeping: for state that has no event to await (a server's /healthz counters,
a list another thread fills), and for a server to have read everything sent (its in-order answer). The timeouts
are generous on purpose: a busy 2-core machine may be slow to transcribe, and a wait that holds returns as soon
as it does."""
from __future__ import annotations

import asyncio
import inspect
import json
import time
from typing import Callable

POLL_S = 0.05


async def until(condition: Callable[[], object], timeout: float = 120.0, what: str = "") -> None:
    """Returns once condition() is true (a coroutine function is awaited); fails the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or condition}")
        await asyncio.sleep(POLL_S)


def wait_until(condition: Callable[[], object], timeout: float = 120.0, what: str = "") -> None:
    """until() for a test that is not a coroutine."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or condition}")
        time.sleep(POLL_S)


async def all_read(ws, probe: dict, reply: str, timeout: float = 30) -> list[dict]:
    """Returns once the server behind `ws` has read everything sent on it so far (an abort may discard what it has
    not read yet): sends `probe`, a message it answers in order (a ping, one it does not understand), and reads up to
    that answer, of type `reply`. Returns the messages read, the answer last."""
    await ws.send(json.dumps(probe))
    read: list[dict] = []
    while not read or read[-1]["type"] != reply:
        read.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    return read
