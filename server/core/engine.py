"""The one inference engine shared by every session.

Sessions submit windows; the engine queues them, forms batches (finals first, then the newest partial of each
session), and runs the backend in one worker thread so that the event loop never waits on the model. A queued
partial is superseded (resolved with None) when a newer partial or a final of the same session arrives, so under
load each stream's partials come as often as the engine can serve them, and no more.

A batch costs what its longest window costs (padding), so the partials that fill it are those closest in length to
the oldest one waiting, which is always taken: nothing starves. A backend whose batches are costly (each window
adds about a window's cost: Whisper on a CPU) gets batches of at most COSTLY_BATCH windows, and partials never
share a batch with finals there.

A backend call that runs past batch_timeout_s fails its windows, and the engine is then *stalled* until that call
returns: queued windows fail at once instead of each waiting out the timeout, /healthz says why, and the server
takes no new streams. No second thread is started (it would queue behind the stuck one), so threads never pile up.

Below captions there is a lowest-priority lane (run_low) for other blocking work on the same model and thread: one
bounded slice at a time (a few LLM-mode decode steps for "ask the meeting", an embedding of 16 sentences), run only
while no caption window, final or partial, is queued. Caption batches always go first, and a window that arrives
while a slice runs waits for that one slice at most: slices are kept to a few tens of milliseconds by their callers.
A slice shares the batch timeout and the stall with batches, and fails fast while the engine is stalled.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..config import EngineConfig
from .requests import SAMPLE_RATE

log = logging.getLogger(__name__)

# Batch size for backends with costly_batches (Whisper on a CPU: a batch of 8 took 2.6 s, 8 single windows 2.9 s).
# Two keeps most of that small gain while a final waits at most ~0.6 s behind a batch already running.
COSTLY_BATCH = 2


class BackendError(Exception):
    """The backend failed on a batch; only the windows in that batch are affected."""


@dataclass
class _Request:
    session: str
    audio: np.ndarray
    final: bool
    future: asyncio.Future
    draft: str | None = None  # the window's previous partial text
    context: str | None = None  # the stream's context (names and terms), a prompt for the backend
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class EngineStats:
    batches: int = 0
    windows: int = 0
    superseded_partials: int = 0
    failed_windows: int = 0  # windows whose batch failed or timed out (their finals carry backend_error)
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    low_slices: int = 0  # run_low calls run (see the module docstring), and their time in the worker
    low_seconds: float = 0.0


class Engine:
    def __init__(self, backend, cfg: EngineConfig):
        self.backend = backend
        # Where a batch costs about what its windows cost one by one, big batches only make finals wait.
        self._costly = backend.costly_batches
        self._max_batch = min(cfg.max_batch, COSTLY_BATCH) if self._costly else cfg.max_batch
        self._max_wait = cfg.max_wait_ms / 1000
        self._timeout = cfg.batch_timeout_s
        self._bucket = cfg.bucket_by_length
        self._drafts = cfg.drafts and backend.uses_drafts
        self._finals: deque[_Request] = deque()
        self._partials: dict[str, _Request] = {}  # insertion order = age
        self._low: deque[tuple[Callable, tuple, asyncio.Future]] = deque()  # run_low slices, oldest first
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._task: asyncio.Task | None = None
        self.stalled_since: float | None = None  # monotonic time of the batch that ran past batch_timeout_s
        self.stats = EngineStats()
        # Called after each batch with (final, seconds since submission) per window: the server's /metrics.
        self.on_batch: Callable[[list[tuple[bool, float]]], None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine")

    async def close(self) -> None:
        """Stops scheduling and frees the backend, never blocking the event loop. A batch still running (a stalled
        backend) is left to its thread; the caller's deadline decides how long to wait for backend.close()."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for future in [*(r.future for r in [*self._finals, *self._partials.values()]), *(f for *_, f in self._low)]:
            if not future.done():
                future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.backend.close)

    @property
    def stalled(self) -> str | None:
        """Why the engine cannot serve now, or None: a backend call has run past batch_timeout_s and has not
        returned. Until it does, queued windows fail at once, and the server takes no new streams."""
        if self.stalled_since is None:
            return None
        stuck = time.monotonic() - self.stalled_since + self._timeout
        return f"the backend has been stuck in one batch for {stuck:.0f} s"

    @property
    def queue_depth(self) -> int:
        return len(self._finals) + len(self._partials)

    @property
    def queued_finals(self) -> int:
        return len(self._finals)

    @property
    def busy(self) -> bool:
        """More finals waiting than one batch takes: partials would only delay them, so sessions skip them."""
        return len(self._finals) >= self._max_batch

    def submit(self, session: str, audio: np.ndarray, final: bool, draft: str | None = None,
               context: str | None = None) -> asyncio.Future:
        """Queues one window; the future resolves to its Transcript (a final's with its words timed where the
        backend can), to None if superseded, or raises BackendError.
        `draft`: the text of this window's previous partial, a hint for backends that take one.
        `context`: the stream's names and terms, which the backend puts in the model's prompt."""
        future = asyncio.get_running_loop().create_future()
        stale = self._partials.pop(session, None)  # older than anything this session sends now
        if stale is not None and not stale.future.done():
            stale.future.set_result(None)
            self.stats.superseded_partials += 1
        req = _Request(session, audio, final, future, draft, context)
        if final:
            self._finals.append(req)
        else:
            self._partials[session] = req
        self._wake.set()
        return future

    async def run_low(self, fn: Callable, *args):
        """Runs ``fn(*args)``, one bounded slice of blocking work, in the worker thread when no caption window is
        queued; returns its result or raises its exception (BackendError if it ran past batch_timeout_s, or at once
        while the engine is stalled). Cancelled, it is skipped if it has not started; close() cancels it."""
        if self.stalled:
            raise BackendError(self.stalled)
        if self._task is None or self._task.done():
            raise BackendError("the engine is not running")
        future = asyncio.get_running_loop().create_future()
        self._low.append((fn, args, future))
        self._wake.set()
        return await future

    def _take_batch(self) -> list[_Request]:
        batch: list[_Request] = []
        while self._finals and len(batch) < self._max_batch:
            batch.append(self._finals.popleft())
        if batch and self._costly:
            return [r for r in batch if not r.future.done()]  # a partial here would cost the finals its time
        for session in self._pick_partials(self._max_batch - len(batch)):
            batch.append(self._partials.pop(session))
        return [r for r in batch if not r.future.done()]  # a session that went away cancelled its futures

    def _pick_partials(self, room: int) -> list[str]:
        """Sessions whose queued partials join the batch: the oldest, and those nearest to it in length."""
        waiting = list(self._partials)  # oldest first
        if len(waiting) <= room or room <= 0 or not self._bucket:
            return waiting[:room]
        by_length = sorted(waiting, key=lambda s: len(self._partials[s].audio))
        lengths = [len(self._partials[s].audio) for s in by_length]
        k = by_length.index(waiting[0])
        # the run of `room` neighbours in length order that contains the oldest and spans the least
        first = min(range(max(0, k - room + 1), min(k, len(waiting) - room) + 1),
                    key=lambda i: lengths[i + room - 1] - lengths[i])
        return by_length[first:first + room]

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self.queue_depth and self._low:
                await self._run_low_slice()  # then captions queued meanwhile, if any, before the next slice
                if not self.queue_depth and not self._low:
                    self._wake.clear()
                continue
            if self.queue_depth < self._max_batch and self._max_wait > 0:
                await asyncio.sleep(self._max_wait)  # let concurrent streams join this batch
            try:
                batch = self._take_batch()
            except Exception:  # noqa: BLE001 - a bug here must not stop the engine and hang every session
                log.exception("forming a batch failed; failing every queued window")
                queued = [*self._finals, *self._partials.values()]
                self._finals.clear()
                self._partials.clear()
                self._fail(queued, "the engine could not schedule this window")
                batch = []
            if not self.queue_depth and not self._low:
                self._wake.clear()
            if not batch:
                continue
            if self.stalled:
                self._fail(batch, self.stalled)  # fail fast: waiting would only add the stall to every window
                continue
            t0 = time.perf_counter()
            try:
                audios, contexts = [r.audio for r in batch], [r.context for r in batch]
                drafts = [r.draft for r in batch] if self._drafts else None
                timed = [r.final for r in batch]  # only finals carry words: a partial is replaced soon anyway
                work = await self._in_worker(self.backend.transcribe, audios, drafts, contexts, timed)
                if work is None:
                    log.error("a batch of %d windows ran past %.0f s: backend stalled", len(batch), self._timeout)
                    self._fail(batch, f"the batch ran past {self._timeout:.0f} s")
                    continue
                texts = work.result()
                if len(texts) != len(batch):
                    raise RuntimeError(f"backend returned {len(texts)} transcripts for {len(batch)} windows")
            except Exception as exc:  # noqa: BLE001 - any backend failure must fail only this batch
                log.exception("backend failed on a batch of %d windows", len(batch))
                self._fail(batch, f"{type(exc).__name__}: {exc}")
                continue
            finally:
                self._account(batch, time.perf_counter() - t0)
            for r, text in zip(batch, texts):
                if not r.future.done():
                    r.future.set_result(text)
            if self.on_batch is not None:
                now = time.monotonic()
                try:
                    self.on_batch([(r.final, now - r.submitted) for r in batch])
                except Exception:  # noqa: BLE001 - bookkeeping must never stop the engine
                    log.exception("on_batch failed")

    async def _in_worker(self, fn: Callable, *args) -> asyncio.Future | None:
        """Runs fn(*args) in the worker thread: its finished future, or None if it ran past batch_timeout_s.

        A call cannot be interrupted, and a second thread would only queue behind it (backends run one batch at a
        time): the engine is then stalled until this call returns."""
        work = asyncio.wrap_future(self._pool.submit(fn, *args))
        done, _ = await asyncio.wait({work}, timeout=self._timeout)
        if done:
            return work
        self.stalled_since = time.monotonic()
        work.add_done_callback(self._unstall)
        return None

    async def _run_low_slice(self) -> None:
        fn, args, future = self._low.popleft()
        try:
            if future.done():  # its caller went away before it started
                return
            if self.stalled:
                future.set_exception(BackendError(self.stalled))
                return
            t0 = time.perf_counter()
            work = await self._in_worker(fn, *args)
            self.stats.low_slices += 1
            self.stats.low_seconds += time.perf_counter() - t0
            if work is None:
                log.error("a low-priority call ran past %.0f s: backend stalled", self._timeout)
                if not future.done():  # its caller may have given up meanwhile
                    future.set_exception(BackendError(f"the call ran past {self._timeout:.0f} s"))
            elif (exc := work.exception()) is not None:  # retrieved even where its caller went away meanwhile
                if not future.done():
                    future.set_exception(exc)
            elif not future.done():
                future.set_result(work.result())
        finally:
            if not future.done():
                future.cancel()  # the engine closed while it ran: its caller must not wait forever

    def _unstall(self, work: asyncio.Future) -> None:
        stalled_for = time.monotonic() - self.stalled_since if self.stalled_since is not None else 0.0
        log.warning("the stalled batch returned after %.0f s: the engine serves again", stalled_for + self._timeout)
        self.stalled_since = None
        self._wake.set()

    def _fail(self, batch: list[_Request], why: str) -> None:
        for r in batch:
            if not r.future.done():
                r.future.set_exception(BackendError(why))
                self.stats.failed_windows += 1

    def _account(self, batch: list[_Request], seconds: float) -> None:
        s = self.stats
        s.batches += 1
        s.windows += len(batch)
        s.compute_seconds += seconds
        s.audio_seconds += sum(len(r.audio) for r in batch) / SAMPLE_RATE
