"""Where one session's captions go: the transcript on disk, the room's viewers, and the client's socket.

The first two never depend on the third: when the client's socket is gone (detached), finals are still persisted
and published, so a dropped speaker's last words reach the transcript and the room. A final is on disk before it
is published or sent, so nothing anyone saw can be missing from the transcript.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

from . import protocol as P
from .rooms import Room
from .storage import TranscriptStore

log = logging.getLogger(__name__)

Send = Callable[[str], Awaitable[None]]


class OutputSink:
    def __init__(self, session_id: str, store: TranscriptStore | None, send: Send):
        self.session_id = session_id
        self._store = store
        self._send: Send | None = send
        self.room: Room | None = None
        self.speaker = session_id  # the label a room's viewers see

    def join(self, room: Room, speaker: str) -> None:
        self.room, self.speaker = room, speaker
        room.speakers[self.session_id] = speaker

    def leave(self) -> None:
        if self.room is not None:
            self.room.speakers.pop(self.session_id, None)

    @property
    def attached(self) -> bool:
        return self._send is not None

    def attach(self, send: Send) -> None:
        """A resumed session's new connection."""
        self._send = send

    def detach(self) -> None:
        """The client's socket is gone: from now on only the transcript and the room get captions."""
        self._send = None

    async def final(self, msg: dict) -> None:
        """Persist, publish, then send (the order matters: see the module doc)."""
        if self._store is not None:
            labelled = {**msg, "speaker": self.speaker} if self.room else msg
            await self._store.save(self.session_id, self.room and self.room.name, labelled)
        self._publish(msg)
        await self.to_client(P.dump(msg))

    async def partial(self, msg: dict) -> None:
        self._publish(msg)
        await self.to_client(P.dump(msg))

    async def to_client(self, text: str) -> None:
        """Only to the client (ready, errors, end), if it is still there."""
        if self._send is not None:
            await self._send(text)

    def _publish(self, msg: dict) -> None:
        if self.room is not None:
            self.room.publish({**msg, "speaker": self.speaker, "session": self.session_id})
