"""Rooms: one or more speakers' captions fanned out to many viewers (`/v1/watch?room=NAME`).

A room keeps a bounded backlog of recent finals for late joiners and outlives its speakers' reconnects. A
viewer never slows a speaker down: each viewer has its own queue, drained by its own task; when a viewer falls
behind, its partials are skipped first, and one that falls far behind is disconnected rather than let to grow
without bound.

With replicas (server/cluster/), a room here holds this replica's viewers; captions from speakers on other
replicas arrive through Redis and are published here like local ones. A final may then arrive twice (read from
the room's stream and received live), so a room lets each (session, segment) through once.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from typing import Awaitable, Callable

from ..core.events import Caption, Final, Partial

log = logging.getLogger(__name__)

MAX_QUEUED = 1000  # messages waiting for one viewer before it is dropped as too slow
MAX_QUEUED_PARTIALS = 20  # past this many waiting messages, partials to that viewer are skipped
SEEN = 5000  # finals remembered per room to let each through once


# One caption to a viewer's connection, encoded by the viewer endpoint; `backlog`: said before the viewer joined.
ViewerSend = Callable[[Caption, bool], Awaitable[None]]


class Viewer:
    def __init__(self, send: ViewerSend):
        self._send = send
        self._backlog: deque[Final] = deque()  # sent first; not counted against the live queue's limits
        self._queue: asyncio.Queue[Caption] = asyncio.Queue()
        self.too_slow = asyncio.Event()

    def offer(self, caption: Caption) -> None:
        if self.too_slow.is_set():
            return
        waiting = self._queue.qsize()
        if waiting >= MAX_QUEUED:
            self.too_slow.set()
        elif not isinstance(caption, Partial) or waiting < MAX_QUEUED_PARTIALS:
            self._queue.put_nowait(caption)

    async def run(self) -> None:
        while self._backlog:
            await self._send(self._backlog.popleft(), True)
        while True:
            await self._send(await self._queue.get(), False)


class Room:
    def __init__(self, name: str, backlog: int, on_final: Callable[[str, Final], None] | None = None):
        self.name = name
        self._on_final = on_final  # each final once, as it is let through (the room's outputs: server/outputs/)
        self.backlog: deque[Final] = deque(maxlen=backlog)
        self.viewers: set[Viewer] = set()
        self.speakers: dict[str, str] = {}  # session id -> speaker label, while connected
        self._seen: OrderedDict[tuple[str | None, int], None] = OrderedDict()  # (session, segment): finals let through

    def join(self, viewer: Viewer) -> None:
        """The backlog first, then every caption published after: in one step (no await), so a caption published
        while a viewer joins is in exactly one of the two."""
        viewer._backlog.extend(self.backlog)
        self.viewers.add(viewer)

    def publish(self, caption: Caption) -> None:
        """A caption labelled with its speaker and session (a room's captions come from several sessions)."""
        key = (caption.session, caption.segment)
        if key in self._seen:
            return  # a final let through already, or a partial of a segment whose final is out
        if isinstance(caption, Final):
            self._remember(key)
            self.backlog.append(caption)
            if self._on_final is not None:
                try:
                    self._on_final(self.name, caption)
                except Exception:  # noqa: BLE001 - an output's fault must never cost the room's viewers a caption
                    log.exception("room %s: handing a final to its outputs failed", self.name)
        for viewer in self.viewers:
            viewer.offer(caption)

    def merge(self, finals: list[Final]) -> None:
        """Finals read from the room's shared stream, oldest first. Before any viewer has joined they become the
        backlog's older part; after, the ones this room has not let through yet (missed while Redis was away)
        are published now."""
        fresh = [f for f in finals if (f.session, f.segment) not in self._seen]
        if self.viewers:
            for final in fresh:
                self.publish(final)
            return
        for final in fresh:
            self._remember((final.session, final.segment))
        combined = fresh + list(self.backlog)
        self.backlog.clear()
        self.backlog.extend(combined)  # the deque keeps the newest `backlog` of them

    def _remember(self, key: tuple[str | None, int]) -> None:
        self._seen[key] = None
        if len(self._seen) > SEEN:
            self._seen.popitem(last=False)

    @property
    def idle(self) -> bool:
        return not self.viewers and not self.speakers


class Rooms:
    def __init__(self, backlog: int = 50, max_rooms: int = 1000, on_forget: Callable[[str], None] | None = None,
                 on_final: Callable[[str, Final], None] | None = None):
        self._backlog = backlog
        self._on_final = on_final  # called with (room, final) for each final a room lets through
        self._max_rooms = max_rooms
        self._rooms: OrderedDict[str, Room] = OrderedDict()  # least recently used first
        self.on_forget = on_forget  # called with the name of each room forgotten

    def find(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def get(self, name: str) -> Room:
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = Room(name, self._backlog, self._on_final)
            self._evict()
        self._rooms.move_to_end(name)
        return room

    def _evict(self) -> None:
        """Forget the least recently used idle rooms (their backlog goes with them) beyond max_rooms."""
        for name in [n for n, r in self._rooms.items() if r.idle][:max(0, len(self._rooms) - self._max_rooms)]:
            del self._rooms[name]
            if self.on_forget is not None:
                self.on_forget(name)

    def __len__(self) -> int:
        return len(self._rooms)
