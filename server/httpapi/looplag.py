"""Event-loop lag, measured inside the server: how late a short sleep wakes up. Anything that blocks the loop
(model work that slipped onto it, a slow callback, a long GC pause) shows here, in the server's own process,
apart from the lag a client-side probe also picks up from its own machine."""
from __future__ import annotations

import asyncio
import logging
from collections import deque

import numpy as np

log = logging.getLogger(__name__)

# A lag this long means a caption or a pong waited that long: worth a line in the log.
WARN_S = 0.25


class LoopLag:
    def __init__(self, period_s: float = 0.02, keep: int = 3000):
        self.period = period_s
        self.recent: deque[float] = deque(maxlen=keep)  # the last keep * period seconds (60 s by default)
        self.max_s = 0.0  # since start
        self.over_warn = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.period)
            self.add(loop.time() - t - self.period)

    def add(self, lag: float) -> None:
        lag = max(0.0, lag)
        self.recent.append(lag)
        self.max_s = max(self.max_s, lag)
        if lag >= WARN_S:
            self.over_warn += 1
            log.warning("the event loop was blocked for %.0f ms", lag * 1000)

    def snapshot(self) -> dict:
        """Milliseconds: p99 and max over the recent window, max since start, and how many lags passed WARN_S."""
        recent = np.fromiter(self.recent, float) * 1000
        return {"recent_p99_ms": round(float(np.percentile(recent, 99)), 1) if len(recent) else None,
                "recent_max_ms": round(float(recent.max()), 1) if len(recent) else None,
                "max_ms": round(self.max_s * 1000, 1), "over_250ms": self.over_warn}
