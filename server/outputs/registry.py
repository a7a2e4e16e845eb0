"""Each room's outputs: made through the HTTP API or the config, fed every final of their room, closed with the
server.

An output is checked before it exists: its URL's scheme and host (guard.check_url: the service's documented
caption hosts, plus `outputs.allowed_hosts`) and the addresses its host resolves to (guard.check_resolved); a
refused one raises RefusedURL, which the API answers with 400. Once made it is listed by an id of its own and
described without its URL (a caption URL is a credential).

Finals come from the rooms (delivery/rooms.py calls `final` once per final of a room, whichever session or replica
said it); a final becomes an OutgoingCaption stamped with the time it reached the room, from which its max age
counts. Partials are never sent: these services cannot replace text.

With replicas (`shared`, a SharedOutputs over Redis: shared.py) an output is not made here but shared: its
definition is written where every replica sees it, exactly one replica (the holder of its lease) delivers it,
from the room's shared transcript rather than from `final` (a replica sees a room's finals only while it has
viewers or speakers there), and GET on any replica lists the holder's shared progress (as of the last
heartbeat). A fixed output gets an id derived from what it is, so every replica starting with the same config
defines it once.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable

from ..config import OutputsConfig
from ..core.events import Final
from .contracts import OutgoingCaption, make_contract
from .guard import DEFAULT_HOSTS, RefusedURL, Resolve, check_resolved, check_url
from .sender import OutputSender, OutputSettings
from .shared import Journal, OutputSpec, Progress, SharedOutputs, SharedUnavailable

log = logging.getLogger(__name__)


class TooMany(Exception):
    """The room has outputs.max_per_room outputs already."""


class RoomOutputs:
    def __init__(self, cfg: OutputsConfig, resolve: Resolve | None = None, clock: Callable[[], float] = time.time,
                 shared: SharedOutputs | None = None):
        self.cfg = cfg
        self.shared = shared  # with replicas: set by app.py before start()
        self._resolve = resolve
        self._clock = clock
        self._settings = OutputSettings(max_age_s=cfg.max_age_s, queue=cfg.queue, timeout_s=cfg.timeout_s,
                                        backoff_s=cfg.backoff_s, backoff_max_s=cfg.backoff_max_s)
        self._rooms: dict[str, dict[str, OutputSender]] = {}  # room -> output id -> its sender

    def allowed(self, kind: str) -> list[str]:
        return [*DEFAULT_HOSTS.get(kind, ()), *self.cfg.allowed_hosts]

    async def add(self, room: str, kind: str, url: str, lang: str = "en-US", secret: str | None = None,
                  output_id: str | None = None) -> dict:
        """Makes and starts an output; its description with its id. Raises RefusedURL or ValueError (a bad kind,
        a webhook without a secret, shared.SharedUnavailable), TooMany."""
        if self.shared is not None:
            return await self._add_shared(room, kind, url, lang, secret, output_id)
        outputs = self._rooms.get(room, {})
        if len(outputs) >= self.cfg.max_per_room:
            raise TooMany(f"room {room!r} has {len(outputs)} outputs already (outputs.max_per_room)")
        allowed = self.allowed(kind)
        await check_resolved(check_url(url, kind, allowed), allowed, self._resolve)  # before anything is sent
        sender = OutputSender(kind, url, lang=lang, secret=secret, allowed_hosts=allowed, settings=self._settings,
                              resolve=self._resolve, clock=self._clock)
        output_id = output_id or secrets.token_hex(4)
        self._rooms.setdefault(room, {})[output_id] = sender
        await sender.start()
        log.info("room %s: output %s to %s (%s)", room, output_id, sender.target.redacted, kind)
        return {"id": output_id, **sender.describe()}

    async def _add_shared(self, room: str, kind: str, url: str, lang: str, secret: str | None,
                          output_id: str | None) -> dict:
        assert self.shared is not None
        allowed = self.allowed(kind)
        target = check_url(url, kind, allowed)
        await check_resolved(target, allowed, self._resolve)  # before anything is shared or sent
        make_contract(kind, target.url, lang, secret)  # ValueError: a webhook without a secret
        spec = OutputSpec(kind, url, lang, secret, target.host)
        output_id = output_id or secrets.token_hex(4)
        if not await self.shared.define(room, output_id, spec, self.cfg.max_per_room):
            raise TooMany(f"room {room!r} has {self.cfg.max_per_room} outputs already (outputs.max_per_room)")
        log.info("room %s: output %s to %s (%s), shared", room, output_id, target.redacted, kind)
        progress = next((p for i, _, p in self.shared.listed(room) if i == output_id), None)  # held here now
        return {"id": output_id, **describe(spec, progress)}

    def _deliver(self, spec: OutputSpec, progress: Progress, journal: Journal) -> OutputSender:
        """A sender for an output this replica now holds, going on from its shared progress."""
        allowed = self.allowed(spec.kind)
        return OutputSender(spec.kind, spec.url, lang=spec.lang, secret=spec.secret, allowed_hosts=allowed,
                            settings=self._settings, resolve=self._resolve, clock=self._clock, journal=journal,
                            resume=progress)

    def list(self, room: str) -> list[dict]:
        if self.shared is not None:
            return [{"id": output_id, **describe(spec, progress)}
                    for output_id, spec, progress in self.shared.listed(room)]
        return [{"id": output_id, **sender.describe()} for output_id, sender in self._rooms.get(room, {}).items()]

    async def remove(self, room: str, output_id: str) -> bool:
        if self.shared is not None:
            removed = await self.shared.undefine(room, output_id)
            if removed:
                log.info("room %s: output %s removed", room, output_id)
            return removed
        sender = self._rooms.get(room, {}).pop(output_id, None)
        if sender is None:
            return False
        if not self._rooms[room]:
            del self._rooms[room]
        await sender.close()
        log.info("room %s: output %s removed", room, output_id)
        return True

    def final(self, room: str, final: Final) -> None:
        """One final of the room, to each of its outputs (never blocks: each output queues it)."""
        outputs = self._rooms.get(room)  # with replicas: none here (holders read the room's shared transcript)
        if not outputs or not final.text.strip():
            return
        caption = OutgoingCaption.of(room, final, self._clock())
        for sender in outputs.values():
            sender.offer(caption)

    async def start(self) -> None:
        """The config's fixed outputs; one that is refused is logged (redacted) and left out. With replicas, the
        shared outputs' leases are taken and renewed from now on."""
        if self.shared is not None:
            await self.shared.start(self._deliver)
        for out in self.cfg.fixed:
            fixed_id = hashlib.sha256(repr((out["room"], out["kind"], out["url"])).encode()).hexdigest()[:8]
            try:
                await self.add(out["room"], out["kind"], out["url"], out.get("lang", "en-US"), out.get("secret"),
                               fixed_id if self.shared is not None else None)
            except (RefusedURL, ValueError, TooMany, SharedUnavailable) as exc:
                log.error("outputs.fixed: room %s, %s output refused: %s", out["room"], out["kind"], exc)

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()  # the held outputs' leases are let go, for another replica to take now
        for room in list(self._rooms):
            for output_id in list(self._rooms.get(room, {})):
                await self.remove(room, output_id)


def describe(spec: OutputSpec, progress: Progress | None) -> dict:
    """A shared output as GET lists it (as OutputSender.describe, plus the replica delivering it); never the URL."""
    p = progress or Progress()
    return {"kind": spec.kind, "host": spec.host, "state": p.state, "delivered": p.delivered, "retried": p.retried,
            "dropped": p.dropped, "queued": p.queued, "last_error": p.last_error, "last_seq": p.last_seq,
            "replica": p.holder}
