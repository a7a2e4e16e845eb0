"""Room captions across replicas: Redis pub/sub for live messages, the room's transcript stream for the backlog.

Why pub/sub and not a stream read by every replica: live captions (partials above all) are worth nothing late,
pub/sub delivers them at once with no storage, and one subscription per room with local viewers is all a replica
holds. What must not be missed, the finals, is in the room's stream too: a replica that subscribes to a room
(first viewer) or subscribes again (Redis back) reads the stream's tail after the subscription is confirmed, so a
final is in the read, in the live messages, or in both; rooms drop the second copy by (session, segment).

A replica publishes its own speakers' captions to its own viewers directly (rooms.py), so local viewers never
depend on Redis; messages it receives back from Redis with its own name as origin are ignored.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

from ..core.events import Caption, Final
from ..delivery.records import caption_from_record, caption_record
from ..delivery.rooms import Rooms
from .keys import Keys
from .link import FAILURES, Link

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often the reader looks for subscriptions to add or drop between messages


class Fanout:
    def __init__(self, link: Link, keys: Keys, replica: str, backlog: int, rooms: Rooms,
                 on_control: Callable[[dict], None]):
        self._link, self._keys, self._replica = link, keys, replica
        self._backlog = backlog
        self._rooms = rooms  # where received captions go
        self._on_control = on_control
        self._wanted: set[str] = set()  # rooms this replica has viewers or speakers in
        self._confirmed: dict[str, asyncio.Event] = {}  # room -> set once its subscription is confirmed
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-fanout")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def publish(self, room: str, caption: Caption) -> tuple[str, str]:
        """(channel, payload) of a room's caption, for the outbox to PUBLISH."""
        return self._keys.room_channel(room), json.dumps({"origin": self._replica, "msg": caption_record(caption)},
                                                          ensure_ascii=False)

    async def open(self, room: str) -> None:
        """Before a viewer joins: the room is subscribed to and its backlog read from Redis (once per
        subscription). Bounded; with Redis away the viewer gets this replica's backlog only."""
        event = self._confirmed.setdefault(room, asyncio.Event())
        if room not in self._wanted:
            self._wanted.add(room)
            self._changed.set()
        if not self._link.up:
            return
        try:
            await asyncio.wait_for(event.wait(), self._link.timeout_s * 4)
        except asyncio.TimeoutError:
            log.warning("room %s: subscription not confirmed in time; its viewers get this replica's backlog", room)

    def forget(self, room: str) -> None:
        """The room is gone here (evicted): stop receiving it."""
        self._wanted.discard(room)
        self._confirmed.pop(room, None)
        self._changed.set()

    async def _run(self) -> None:
        while True:
            await self._link.wait_up()
            pubsub = self._link.client.pubsub()
            subscribed: set[str] = set()
            try:
                await self._link.call(pubsub.subscribe, self._keys.control(self._replica))
                while True:
                    await self._sync(pubsub, subscribed)
                    message = await self._link.call(pubsub.get_message, timeout=POLL_S)
                    if message is not None:
                        await self._on_message(message)
            except FAILURES:
                pass  # Redis away (the link logged it): subscribe again once it is back
            finally:
                for event in self._confirmed.values():
                    event.clear()
                try:
                    await asyncio.wait_for(pubsub.aclose(), self._link.timeout_s)
                except FAILURES:
                    pass

    async def _sync(self, pubsub, subscribed: set[str]) -> None:
        if not self._changed.is_set() and subscribed == self._wanted:
            return
        self._changed.clear()
        add, drop = self._wanted - subscribed, subscribed - self._wanted
        if add:
            await self._link.call(pubsub.subscribe, *(self._keys.room_channel(r) for r in add))
        if drop:
            await self._link.call(pubsub.unsubscribe, *(self._keys.room_channel(r) for r in drop))
        subscribed |= add
        subscribed -= drop

    async def _on_message(self, message: dict) -> None:
        channel = _text(message["channel"])
        room_name = self._keys.room_of_channel(channel)
        if message["type"] == "subscribe" and room_name is not None:
            await self._read_backlog(room_name)  # after the confirmation: no final falls between the two
            if (event := self._confirmed.get(room_name)) is not None:
                event.set()
        elif message["type"] == "message":
            data = json.loads(message["data"])
            if room_name is None:
                self._on_control(data)
            elif data.get("origin") != self._replica and (room := self._rooms.find(room_name)) is not None:
                room.publish(caption_from_record(data["msg"]))

    async def _read_backlog(self, room_name: str) -> None:
        entries = await self._link.call(self._link.client.xrevrange, self._keys.finals("rooms", room_name),
                                        count=self._backlog)
        room = self._rooms.find(room_name)
        if room is not None:
            room.merge([stored_final(fields) for _, fields in reversed(entries)])


def stored_final(fields: dict) -> Final:
    """A final as a transcript stream holds it (the time it was stored is not part of the caption)."""
    final = caption_from_record(json.loads(fields[b"final"] if b"final" in fields else fields["final"]))
    assert isinstance(final, Final)  # transcript streams hold finals only
    return final


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
