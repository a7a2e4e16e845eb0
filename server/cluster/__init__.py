"""Replicas sharing one Redis (`redis.url`): rooms, transcripts, resumable sessions and presence.

Without `redis.url` there is no Cluster and the server is one process, exactly as before. With it, this is all
the rest of the server knows of Redis:
- `final` / `partial`: a session's captions, for the room's viewers on every replica (fanout.py), the shared
  transcripts (Redis Streams, `redis.transcript_max` finals each) and the session's shared resume state
  (handover.py), written in the replica's order (outbox.py);
- `session_live` / `session_held` / `session_ended` / `take`: resuming on any replica (handover.py);
- `open_room`, `speakers`, `speaker_joined` / `speaker_left`: viewers and presence across replicas;
- `finals`: a session's or room's transcript for GET /v1/transcripts on any replica;
- `health`: for /healthz ("degraded" while Redis is away);
- `link`, `keys`, `replica`: for the rooms' caption outputs (outputs.py, wired by app.py).
Captions never wait on Redis beyond `redis.timeout_s` (link.py): with Redis away a replica goes on captioning its
own streams, keeps what it could not write, and shares again once Redis is back.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from typing import Callable

from ..config import Config
from ..core.events import Caption, Partial
from ..core.state import ResumeState
from ..delivery.rooms import Rooms
from .fanout import Fanout
from .handover import HELD, LIVE, Handover
from .keys import APPEND_FINAL, Keys
from .link import FAILURES, Link
from .outbox import Outbox

log = logging.getLogger(__name__)

PAGE = 1000  # transcript entries read per Redis call


class Cluster:
    def __init__(self, cfg: Config, rooms: Rooms, on_release: Callable[[str, str], None],
                 on_forget: Callable[[str], None]):
        r = cfg.redis
        self.replica = r.replica or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self._cfg = r
        self._keys = Keys(r.prefix)
        self.link = Link(r.url, r.timeout_s)
        self.outbox = Outbox(self.link, r.pending_max)
        self.fanout = Fanout(self.link, self._keys, self.replica, cfg.rooms.backlog, rooms, self._on_control)
        self.handover = Handover(self.link, self._keys, self.replica, cfg.limits.resume_s,
                                 cfg.limits.shutdown_deadline_s)
        self._on_release, self._on_forget = on_release, on_forget  # asked by another replica
        self._live: set[str] = set()  # sessions live here, whose records the heartbeat keeps from expiring
        self._heartbeat: asyncio.Task | None = None
        self.link.on_up.append(self._beat)

    @property
    def keys(self) -> Keys:
        return self._keys

    @property
    def up(self) -> bool:
        return self.link.up

    async def start(self) -> None:
        await self.link.start()
        self.outbox.start()
        self.fanout.start()
        self._heartbeat = asyncio.create_task(self._heartbeats(), name="redis-heartbeat")
        if self.link.up:
            await self._beat()
        log.info("replica %s sharing through Redis at %s%s", self.replica, self.link.url,
                 "" if self.link.up else " (away for now: retrying)")

    async def close(self, timeout: float) -> None:
        """Shutdown, after the sessions are flushed: what is queued is written (bounded), then this replica
        says it is gone."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self.outbox.put(lambda pipe: pipe.delete(self._keys.alive(self.replica)), keep=False)
        await self.outbox.drain(timeout)
        await self.fanout.close()
        await self.outbox.close()
        await self.link.close()

    def health(self) -> dict:
        return {**self.link.health(), "replica": self.replica, "pending_writes": self.outbox.pending,
                "dropped_writes": self.outbox.dropped}

    # -- captions ----------------------------------------------------------------------------------------------

    async def final(self, session: str, room: str | None, line: dict, published: Caption | None,
                    state: ResumeState) -> None:
        """A final's shared writes, together: transcript entries, the live resume state, the room message.
        Returns once written, or at once when Redis is away (they are kept and written later)."""
        def write(pipe) -> None:
            text = json.dumps(line, ensure_ascii=False)
            self._append_final(pipe, "sessions", session, session, line["segment"], text)
            if room is not None and published is not None:
                self._append_final(pipe, "rooms", room, session, line["segment"], text)
                pipe.publish(*self.fanout.publish(room, published))
            self.handover.write(pipe, LIVE, state)
        await self.outbox.written(write)

    def partial(self, room: str, caption: Partial) -> None:
        """Live only: dropped, not kept, while Redis is away."""
        self.outbox.put(lambda pipe: pipe.publish(*self.fanout.publish(room, caption)), keep=False)

    def _append_final(self, pipe, kind: str, name: str, session: str, segment: int, line: str) -> None:
        # EVAL, not EVALSHA: a restarted Redis has forgotten its scripts, and this one is short.
        pipe.eval(APPEND_FINAL, 2, self._keys.finals(kind, name), self._keys.last_segments(kind, name),
                  session, segment, self._cfg.transcript_max, line, int(self._cfg.transcript_ttl_s * 1000))

    async def finals(self, kind: str, name: str) -> list[dict] | None:
        """A transcript from Redis, or None (Redis away, or nothing there: the caller reads the local JSONL)."""
        if not self.link.up:
            return None
        key, lines, start = self._keys.finals(kind, name), [], "-"
        try:
            while True:
                entries = await self.link.call(self.link.client.xrange, key, min=start, count=PAGE)
                lines += [fields[b"final"] for _, fields in entries]
                if len(entries) < PAGE:
                    break
                start = "(" + entries[-1][0].decode()
        except FAILURES:
            return None
        # up to redis.transcript_max lines: parsed in a thread, off the event loop
        return await asyncio.to_thread(lambda: [json.loads(line) for line in lines]) if lines else None

    # -- sessions ----------------------------------------------------------------------------------------------

    async def session_live(self, state: ResumeState) -> None:
        """A session starts (or resumes) here: resumable from here on, even if this replica dies."""
        self._live.add(state.session)
        await self.outbox.written(lambda pipe: self.handover.write(pipe, LIVE, state))

    async def session_held(self, state: ResumeState) -> None:
        """A dropped (or drained) session is flushed: any replica may take it now."""
        self._live.discard(state.session)
        await self.outbox.written(lambda pipe: self.handover.write(pipe, HELD, state))

    def session_ended(self, session: str) -> None:
        self._live.discard(session)
        self.outbox.put(lambda pipe: self.handover.forget(pipe, session))

    async def take(self, session: str, token: str | None, known_here) -> tuple[dict, ResumeState | None]:
        """See Handover.take; after a take from another replica, that one forgets its local copy."""
        rec, state = await self.handover.take(session, token, self._release, known_here)
        if state is not None and rec["phase"] == HELD:
            self._control(rec["owner"], {"op": "forget", "session": session})
        return rec, state

    def disown(self, session: str) -> None:
        """Asked to let go of a session not live here: mark its record held for the taker."""
        self.outbox.put(lambda pipe: self.handover.disown(pipe, session), keep=False)

    def _release(self, owner: str, session: str, token: str | None) -> None:
        self._control(owner, {"op": "release", "session": session, "token": token})

    def _control(self, replica: str, msg: dict) -> None:
        self.outbox.put(lambda pipe: pipe.publish(self._keys.control(replica), json.dumps(msg)), keep=False)

    def _on_control(self, msg: dict) -> None:
        if msg.get("op") == "release":
            self._on_release(msg["session"], msg.get("token") or "")
        elif msg.get("op") == "forget":
            self._on_forget(msg["session"])

    # -- rooms and presence ------------------------------------------------------------------------------------

    async def open_room(self, room: str) -> None:
        await self.fanout.open(room)

    def forget_room(self, room: str) -> None:
        self.fanout.forget(room)

    def speaker_joined(self, room: str, session: str, label: str) -> None:
        entry = json.dumps({"speaker": label, "replica": self.replica}, ensure_ascii=False)
        self.outbox.put(lambda pipe: pipe.hset(self._keys.speakers(room), session, entry))

    def speaker_left(self, room: str, session: str) -> None:
        self.outbox.put(lambda pipe: pipe.hdel(self._keys.speakers(room), session))

    async def speakers(self, room: str) -> list[str] | None:
        """The room's speaker labels on every live replica (entries of dead replicas are removed), or None."""
        if not self.link.up:
            return None
        try:
            entries = {k.decode(): json.loads(v) for k, v in
                       (await self.link.call(self.link.client.hgetall, self._keys.speakers(room))).items()}
            replicas = sorted({e["replica"] for e in entries.values()})
            alive = dict(zip(replicas, await self.link.call(
                self.link.client.mget, [self._keys.alive(r) for r in replicas]))) if replicas else {}
            dead = [s for s, e in entries.items() if alive.get(e["replica"]) is None]
            if dead:
                await self.link.call(self.link.client.hdel, self._keys.speakers(room), *dead)
        except FAILURES:
            return None
        return sorted({e["speaker"] for s, e in entries.items() if s not in dead})

    # -- liveness ----------------------------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Says this replica is alive (its speakers and live sessions count only while it does), and keeps its
        live sessions' records from expiring while they are quiet."""
        refresh_every = max(1, int(self.handover.ttl_ms / 3000 / self._cfg.heartbeat_s))
        beat = 0
        while True:
            await asyncio.sleep(self._cfg.heartbeat_s)
            beat += 1
            if self.link.up:
                await self._beat(refresh=beat % refresh_every == 0)

    async def _beat(self, refresh: bool = True) -> None:
        ttl_ms = int(self._cfg.heartbeat_s * 3000)
        live = list(self._live) if refresh else []

        def write(pipe) -> None:
            pipe.set(self._keys.alive(self.replica), "1", px=ttl_ms)
            for session in live:
                pipe.pexpire(self._keys.resume(session), self.handover.ttl_ms)
        self.outbox.put(write, keep=False)


