"""Per-connection budgets: a token bucket used to throttle audio rate and frame rate."""
from __future__ import annotations

import time


class TokenBucket:
    """`rate` units per second sustained, up to `burst` at once. `take` returns how long to wait (seconds) until
    the taken amount is covered: the caller sleeps that long before reading more, which pushes back on the
    client through TCP instead of dropping its audio."""

    def __init__(self, rate: float, burst: float, clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._level = burst
        self._t = clock()

    def take(self, amount: float) -> float:
        now = self._clock()
        self._level = min(self.burst, self._level + (now - self._t) * self.rate)
        self._t = now
        self._level -= amount
        return 0.0 if self._level >= 0 else -self._level / self.rate
