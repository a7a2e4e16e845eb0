"""The replica's connection to Redis, and whether Redis is there.

Captions never wait on Redis: every call is bounded by `redis.timeout_s`, and once a call has failed Redis counts
as away (`up` is False) and nobody calls it until the reconnect loop has seen it answer again. Then the
`on_up` callbacks run (resubscribe, write what was kept, say this replica is alive again), with no restart.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

FAILURES = (RedisError, OSError, asyncio.TimeoutError)  # what "Redis is away" looks like from here
RETRY_S = 1.0  # between two reconnect attempts
# What a replica stops sharing while Redis is away: said in the log and in /healthz.
NOT_SHARED = ["room captions to viewers on other replicas", "room backlogs and transcripts in Redis (written "
              "once it is back; the local JSONL has them)", "resuming on another replica", "the rooms' speaker "
              "lists across replicas"]


def redact(url: str) -> str:
    """The URL without its password, for logs and /healthz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}"))


class Link:
    def __init__(self, url: str, timeout_s: float):
        self.url = redact(url)
        self.timeout_s = timeout_s
        # No retries inside redis-py: a failure is reported at once, and the reconnect loop owns retrying.
        self.client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                        retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.up = False
        self.since = time.time()  # when `up` last changed
        self.error = "not connected yet"
        self.on_up: list[Callable[[], Awaitable[None]]] = []
        self._up_event = asyncio.Event()
        self._reconnecting: asyncio.Task | None = None

    async def start(self) -> None:
        """Connects if Redis answers; if it does not, the replica starts anyway (degraded) and keeps trying."""
        try:
            await self.call(self.client.ping)
        except FAILURES as exc:
            self.failed(exc)
        else:
            self._set_up()

    async def call(self, fn: Callable[..., Awaitable], *args, **kwargs):
        """One Redis call, bounded; raises what Redis raised (and marks Redis away) or ConnectionError when it is
        known to be away, without waiting."""
        if not self.up and self._reconnecting is not None:
            raise ConnectionError(f"Redis is away: {self.error}")
        try:
            return await asyncio.wait_for(fn(*args, **kwargs), self.timeout_s)
        except FAILURES as exc:
            self.failed(exc)
            raise

    async def wait_up(self) -> None:
        await self._up_event.wait()

    def failed(self, exc: BaseException) -> None:
        """A call failed: Redis counts as away until it answers a ping again."""
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.up or self._reconnecting is None:
            log.warning("Redis at %s is away (%s): captions go on, but not shared now: %s. Reconnecting every "
                        "%.0f s.", self.url, message, "; ".join(NOT_SHARED), RETRY_S)
            self.up, self.since, self.error = False, time.time(), message
            self._up_event.clear()
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.create_task(self._reconnect(), name="redis-reconnect")

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(RETRY_S)
            try:
                await asyncio.wait_for(self.client.ping(), self.timeout_s)
            except FAILURES as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                continue
            break
        down_for = time.time() - self.since
        self._set_up()
        log.warning("Redis at %s is back after %.1f s: sharing again", self.url, down_for)
        self._reconnecting = None
        for callback in self.on_up:
            try:
                await callback()
            except FAILURES as exc:  # gone again: the next reconnect runs the callbacks again
                self.failed(exc)
                return

    def _set_up(self) -> None:
        self.up, self.since, self.error = True, time.time(), ""
        self._up_event.set()

    def health(self) -> dict:
        report = {"url": self.url, "up": self.up, "since": round(self.since, 3)}
        if not self.up:
            report.update(error=self.error, not_shared=NOT_SHARED)
        return report

    async def close(self) -> None:
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        try:
            await asyncio.wait_for(self.client.aclose(), self.timeout_s)
        except FAILURES:
            pass
