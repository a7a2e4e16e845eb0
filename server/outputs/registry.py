"""Each room's outputs: made through the HTTP API or the config, fed every final of their room, closed with the
server.

An output is checked before it exists: its URL's scheme and host (guard.check_url: the service's documented
caption hosts, plus `outputs.allowed_hosts`) and the addresses its host resolves to (guard.check_resolved); a
refused one raises RefusedURL, which the API answers with 400. Once made it is listed by an id of its own and
described without its URL (a caption URL is a credential).

Finals come from the rooms (delivery/rooms.py calls `final` once per final of a room, whichever session or replica
said it); a final becomes an OutgoingCaption stamped with the time it reached the room, from which its max age
counts. Partials are never sent: these services cannot replace text.

Not yet: with replicas, an output lives on the replica that made it, and only its finals reach it when the room's
captions reach that replica (a lease shared through Redis is the next step, docs/protocol.md says so).
"""
from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from ..config import OutputsConfig
from ..core.events import Final
from .contracts import OutgoingCaption
from .guard import DEFAULT_HOSTS, RefusedURL, Resolve, check_resolved, check_url
from .sender import OutputSender, OutputSettings

log = logging.getLogger(__name__)


class TooMany(Exception):
    """The room has outputs.max_per_room outputs already."""


class RoomOutputs:
    def __init__(self, cfg: OutputsConfig, resolve: Resolve | None = None, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self._resolve = resolve
        self._clock = clock
        self._settings = OutputSettings(max_age_s=cfg.max_age_s, queue=cfg.queue, timeout_s=cfg.timeout_s,
                                        backoff_s=cfg.backoff_s, backoff_max_s=cfg.backoff_max_s)
        self._rooms: dict[str, dict[str, OutputSender]] = {}  # room -> output id -> its sender

    def allowed(self, kind: str) -> list[str]:
        return [*DEFAULT_HOSTS.get(kind, ()), *self.cfg.allowed_hosts]

    async def add(self, room: str, kind: str, url: str, lang: str = "en-US", secret: str | None = None) -> dict:
        """Makes and starts an output; its description with its id. Raises RefusedURL or ValueError (a bad kind,
        a webhook without a secret), TooMany."""
        outputs = self._rooms.get(room, {})
        if len(outputs) >= self.cfg.max_per_room:
            raise TooMany(f"room {room!r} has {len(outputs)} outputs already (outputs.max_per_room)")
        allowed = self.allowed(kind)
        await check_resolved(check_url(url, kind, allowed), allowed, self._resolve)  # before anything is sent
        sender = OutputSender(kind, url, lang=lang, secret=secret, allowed_hosts=allowed, settings=self._settings,
                              resolve=self._resolve, clock=self._clock)
        output_id = secrets.token_hex(4)
        self._rooms.setdefault(room, {})[output_id] = sender
        await sender.start()
        log.info("room %s: output %s to %s (%s)", room, output_id, sender.target.redacted, kind)
        return {"id": output_id, **sender.describe()}

    def list(self, room: str) -> list[dict]:
        return [{"id": output_id, **sender.describe()} for output_id, sender in self._rooms.get(room, {}).items()]

    async def remove(self, room: str, output_id: str) -> bool:
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
        outputs = self._rooms.get(room)
        if not outputs or not final.text.strip():
            return
        caption = OutgoingCaption(room, final.session, final.segment, final.start, final.end, final.text,
                                  final.speaker, self._clock(), final.words)
        for sender in outputs.values():
            sender.offer(caption)

    async def start(self) -> None:
        """The config's fixed outputs; one that is refused is logged (redacted) and left out."""
        for out in self.cfg.fixed:
            try:
                await self.add(out["room"], out["kind"], out["url"], out.get("lang", "en-US"), out.get("secret"))
            except (RefusedURL, ValueError, TooMany) as exc:
                log.error("outputs.fixed: room %s, %s output refused: %s", out["room"], out["kind"], exc)

    async def close(self) -> None:
        for room in list(self._rooms):
            for output_id in list(self._rooms.get(room, {})):
                await self.remove(room, output_id)
