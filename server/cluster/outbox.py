"""Writes to Redis, in the order the replica made them, each batch in one pipeline (one round trip).

A final's writes (its transcript entries, its session's resume state, its room message) go out together, and the
final is sent to its client only after they are acknowledged, so that what a client saw is in Redis for any
replica to resume from. That wait is bounded by `redis.timeout_s`, and is nothing at all while Redis is away:
then the writes worth keeping (finals, resume states, presence) wait in `pending`, bounded by
`redis.pending_max`, and go out first once Redis is back; partials and heartbeats are simply dropped.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable

from redis.asyncio.client import Pipeline

from .link import FAILURES, Link

log = logging.getLogger(__name__)

Write = Callable[[Pipeline], object]  # adds commands to a redis-py pipeline (what it returns is not used)


@dataclass
class Op:
    write: Write
    keep: bool  # kept while Redis is away, and written once it is back
    done: asyncio.Future | None = None  # set (True: written) for a caller that waits


class Outbox:
    def __init__(self, link: Link, pending_max: int):
        self._link = link
        self._queue: deque[Op] = deque()
        self._pending: deque[Op] = deque(maxlen=pending_max)  # kept while Redis is away, oldest first
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.dropped = 0  # kept writes pushed out of `pending` by newer ones during a long outage
        link.on_up.append(self._resume)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-outbox")

    def put(self, write: Write, keep: bool = True) -> None:
        """Queues writes; `keep`: kept (bounded) while Redis is away, written once it is back."""
        self._enqueue(Op(write, keep))

    def written(self, write: Write, keep: bool = True) -> asyncio.Future:
        """Queues writes; the future is done once they are written or known not to be (Redis away: at once)."""
        done = asyncio.get_running_loop().create_future()
        self._enqueue(Op(write, keep, done))
        return done

    def _enqueue(self, op: Op) -> None:
        if self._link.up:
            self._queue.append(op)
            self._wake.set()
        else:
            self._keep([op])

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def drain(self, timeout: float) -> None:
        """Shutdown: waits (bounded) until what is queued is written."""
        marker = self.written(lambda pipe: None, keep=False)
        try:
            await asyncio.wait_for(asyncio.shield(marker), timeout)
        except asyncio.TimeoutError:
            log.warning("Redis writes still queued at shutdown: %d", len(self._queue))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _resume(self) -> None:
        """Redis is back: what was kept goes out first, in its order."""
        if self._pending:
            log.info("Redis is back: writing %d kept write(s)", len(self._pending))
        self._queue.extendleft(reversed(self._pending))
        self._pending.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                continue
            batch = list(self._queue)
            self._queue.clear()
            if not self._link.up:
                self._keep(batch)
                continue
            # MULTI/EXEC: a batch is applied whole or not at all; a batch applied whose reply was lost is kept and
            # written again, which the idempotent transcript writes (keys.py) and plain SETs make harmless.
            pipe = self._link.client.pipeline(transaction=True)
            for op in batch:
                op.write(pipe)
            try:
                results = await self._link.call(pipe.execute, raise_on_error=False)
            except FAILURES:
                self._keep(batch)
                continue
            for result in results:
                if isinstance(result, Exception):  # a bad command, not Redis away: say so, go on
                    log.error("a Redis write failed: %s", result)
            for op in batch:
                _resolve(op, True)

    def _keep(self, ops: list[Op]) -> None:
        for op in ops:
            if op.keep:
                if len(self._pending) == self._pending.maxlen:
                    self.dropped += 1
                self._pending.append(op)
            _resolve(op, False)


def _resolve(op: Op, written: bool) -> None:
    if op.done is not None and not op.done.done():
        op.done.set_result(written)
