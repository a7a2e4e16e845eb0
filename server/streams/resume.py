"""Dropped sessions that a client may resume, for `limits.resume_s` after the drop.

A session whose connection drops without `stop` is flushed (its open window becomes a final) and then held here
as a ResumeState: plain data, which replicas share through Redis as well (cluster/handover.py). A client that
reconnects with the session's id and its resume token takes it back; a wrong or missing token is refused, so no
client can take over another's session. A resume that arrives while the drop is still being flushed waits for the flush.
"""
from __future__ import annotations

import asyncio
import time

from ..core.errors import RESUME_REFUSED, RESUME_UNKNOWN, ProtocolError
from ..core.state import ResumeState, tokens_match

MAX_HELD = 10_000  # dropped sessions held at once; the oldest go first


class Resumable:
    def __init__(self, hold_s: float, clock=time.monotonic):
        self.hold_s = hold_s
        self._clock = clock
        self._held: dict[str, tuple[float, ResumeState]] = {}  # id -> (expiry, state), oldest first
        self._flushing: dict[str, tuple[str, asyncio.Event]] = {}  # id -> (token, set once held)

    def dropping(self, state: ResumeState) -> None:
        """The connection of this session is gone and its flush has begun."""
        self._flushing[state.session] = (state.token, asyncio.Event())

    def hold(self, state: ResumeState) -> None:
        """The flush is done: the session can be resumed until it expires."""
        self._expire()
        self._held.pop(state.session, None)
        self._held[state.session] = (self._clock() + self.hold_s, state)
        while len(self._held) > MAX_HELD:
            del self._held[next(iter(self._held))]
        _, done = self._flushing.pop(state.session, (None, None))
        if done is not None:
            done.set()

    async def take(self, session: str, token: str | None) -> ResumeState:
        """The state to resume, once; raises ProtocolError (resume_unknown / resume_refused) otherwise."""
        if session in self._flushing:
            expected, done = self._flushing[session]
            _check(expected, token)
            await done.wait()
        self._expire()
        expiry, state = self._held.get(session, (0.0, None))
        if state is None:
            raise ProtocolError(RESUME_UNKNOWN, f"session {session} cannot be resumed: it ended, expired "
                                                    f"(after {self.hold_s:g} s) or was never here; start a new one")
        _check(state.token, token)
        del self._held[session]
        return state

    def holds(self, session: str) -> bool:
        return session in self._held or session in self._flushing

    def forget(self, session: str) -> None:
        """Another replica took this session over (cluster/handover.py): the copy here is stale."""
        self._held.pop(session, None)

    def __len__(self) -> int:
        return len(self._held)

    def _expire(self) -> None:
        now = self._clock()
        for session in [s for s, (expiry, _) in self._held.items() if expiry <= now]:
            del self._held[session]


def _check(expected: str, token: str | None) -> None:
    if not tokens_match(expected, token):
        raise ProtocolError(RESUME_REFUSED, "wrong resume_token for this session")
