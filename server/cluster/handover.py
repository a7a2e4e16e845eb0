"""Resumable sessions shared by the replicas: a client cut off from one replica resumes on any other.

Each session has one record in Redis, `{"owner": replica, "phase": "live" | "held", "state": ResumeState}`,
without its recent finals (those are the tail of the session's transcript stream). The owner rewrites it:
- "live" when the session starts and with every final, in the same write as the final, before the client gets
  it: so when a replica dies (SIGKILL), the record says what its clients have seen, and a resumed session
  goes on from there (the client resends the audio no final covers);
- "held" once a dropped session is flushed (or drained at shutdown): any replica may take it.
A replica taking a session claims the record atomically (keys.CLAIM), so two reconnects cannot both get it. If
the owner is alive and still has the session live (a half-open connection it has not noticed), the taker asks it,
on the owner's control channel, to let the session go; the owner drops the old connection, flushes, and writes
"held". A record lives `limits.resume_s` after its last write (live records are refreshed by the heartbeat).
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import fields, replace

from ..core import errors as E
from ..core.events import Final
from ..core.state import RECENT_FINALS, ResumeState, tokens_match
from .fanout import stored_final
from .keys import CLAIM, DISOWN, Keys
from .link import Link

log = logging.getLogger(__name__)

LIVE, HELD = "live", "held"
POLL_S = 0.05  # how often a taker looks whether the owner has let the session go
CLAIM_TRIES = 3


def record(owner: str, phase: str, state: ResumeState) -> str:
    data = {f.name: getattr(state, f.name) for f in fields(state) if f.name != "finals"}  # finals: in the transcript
    return json.dumps({"owner": owner, "phase": phase, "state": data}, ensure_ascii=False)


class Handover:
    def __init__(self, link: Link, keys: Keys, replica: str, hold_s: float, wait_s: float):
        self._link, self._keys, self._replica = link, keys, replica
        self.ttl_ms = int(hold_s * 1000)
        self._wait_s = wait_s  # how long a taker waits for a live owner to let a session go

    def write(self, pipe, phase: str, state: ResumeState) -> None:
        pipe.set(self._keys.resume(state.session), record(self._replica, phase, state), px=self.ttl_ms)

    def forget(self, pipe, session: str) -> None:
        pipe.delete(self._keys.resume(session))

    async def read(self, session: str) -> tuple[str, dict] | None:
        raw = await self._link.call(self._link.client.get, self._keys.resume(session))
        return None if raw is None else (raw.decode(), json.loads(raw))

    async def alive(self, replica: str) -> bool:
        return bool(await self._link.call(self._link.client.exists, self._keys.alive(replica)))

    def disown(self, pipe, session: str) -> None:
        pipe.eval(DISOWN, 1, self._keys.resume(session), self._replica)

    async def take(self, session: str, token: str | None, release, known_here) -> tuple[dict, ResumeState | None]:
        """Claims the shared record of `session` for this replica. Returns (record, state): state None when this
        replica owns it and has it (`known_here(session)`: taken over the local way); raises ProtocolError
        (resume_unknown / resume_refused) when it cannot be resumed. `release(owner, session, token)` asks a
        live owner to let the session go."""
        asked = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        for _ in range(CLAIM_TRIES):
            while True:
                found = await self.read(session)
                if found is None:
                    raise E.ProtocolError(E.RESUME_UNKNOWN, f"session {session} cannot be resumed: it ended, "
                                                            "expired or was never here; start a new one")
                raw, rec = found
                if not tokens_match(rec["state"]["token"], token):
                    raise E.ProtocolError(E.RESUME_REFUSED, "wrong resume_token for this session")
                owner = rec["owner"]
                if owner == self._replica and known_here(session):
                    return rec, None
                # Ours but not here (this replica restarted under its name), held, or its owner is dead: claim it.
                if owner == self._replica or rec["phase"] == HELD or not await self.alive(owner):
                    break
                if not asked:  # live on another replica that is alive: ask it to let the session go
                    log.info("session %s is live on %s: asking it to let the session go", session, owner)
                    release(owner, session, token)
                    asked = True
                if loop.time() > deadline:
                    raise E.ProtocolError(E.RESUME_UNKNOWN, f"session {session} is still live on replica "
                                                            f"{owner}, which did not let it go; start a new one")
                await asyncio.sleep(POLL_S)
            state = ResumeState(**{**rec["state"], "finals": []})
            mine = record(self._replica, LIVE, state)
            if await self._link.call(self._link.client.eval, CLAIM, 1, self._keys.resume(session), raw, mine,
                                     self.ttl_ms):
                state.finals = await self._recent_finals(session)
                log.info("session %s taken over from %s (%s)", session, owner, rec["phase"])
                return rec, state
        raise E.ProtocolError(E.RESUME_UNKNOWN, f"session {session} was taken by another connection meanwhile")

    async def _recent_finals(self, session: str) -> list[Final]:
        """The session's last finals as its client got them (for `resent`), from its transcript stream."""
        entries = await self._link.call(self._link.client.xrevrange, self._keys.finals("sessions", session),
                                        count=RECENT_FINALS)
        # As its client got them: on its own connection a caption carries neither speaker nor session.
        return [replace(stored_final(entry), speaker=None, session=None) for _, entry in reversed(entries)]
