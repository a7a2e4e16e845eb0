"""Where one session's captions go: the transcript on disk, the room's viewers, and the client's socket.

The first two never depend on the third: when the client's socket is gone (detached), finals are still persisted
and published, so a dropped speaker's last words reach the transcript and the room. A final is on disk before it
is published or sent, so nothing anyone saw can be missing from the transcript.

With replicas (`cluster`), a final is also in Redis before it is sent: its transcript entries, the room message
for other replicas' viewers and the session's resume state go out together (bounded by redis.timeout_s, not at
all while Redis is away), so any replica can resume the session from what its client has seen.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Awaitable, Callable


from ..streams.connection import ConnectionClosed
from .rooms import Room
from .transcripts import TranscriptStore, record

if TYPE_CHECKING:
    from ..cluster import Cluster
    from ..core.session import ResumeState

log = logging.getLogger(__name__)

Send = Callable[[dict], Awaitable[None]]  # one message to the client: its adapter encodes it


class OutputSink:
    def __init__(self, session_id: str, store: TranscriptStore | None, send: Send, cluster: "Cluster | None" = None):
        self.session_id = session_id
        self._store = store
        self._cluster = cluster
        self._send: Send | None = send
        self.room: Room | None = None
        self.speaker = session_id  # the label a room's viewers see

    def join(self, room: Room, speaker: str) -> None:
        self.room, self.speaker = room, speaker
        room.speakers[self.session_id] = speaker
        if self._cluster is not None:
            self._cluster.speaker_joined(room.name, self.session_id, speaker)

    def leave(self) -> None:
        if self.room is not None:
            self.room.speakers.pop(self.session_id, None)
            if self._cluster is not None:
                self._cluster.speaker_left(self.room.name, self.session_id)

    @property
    def attached(self) -> bool:
        return self._send is not None

    def attach(self, send: Send) -> None:
        """A resumed session's new connection."""
        self._send = send

    def detach(self) -> None:
        """The client's socket is gone: from now on only the transcript and the room get captions."""
        self._send = None

    async def started(self, state: "ResumeState") -> None:
        """The session starts (or resumes): with replicas, its resume state is shared before `ready` is sent."""
        if self._cluster is not None:
            await self._cluster.session_live(state)

    async def final(self, msg: dict, state: "ResumeState | None" = None) -> None:
        """Persist, publish, then send (the order matters: see the module doc). `state`: the session's resume
        state once this final is out, shared with the other replicas."""
        labelled = {**msg, "speaker": self.speaker} if self.room else msg
        room = self.room and self.room.name
        if self._store is not None:
            await self._store.save(self.session_id, room, labelled)
        published = self._publish(msg)
        if self._cluster is not None and state is not None:
            await self._cluster.final(self.session_id, room, record(self.session_id, labelled), published, state)
        await self.to_client(msg)

    async def partial(self, msg: dict) -> None:
        published = self._publish(msg)
        if self._cluster is not None and published is not None:
            self._cluster.partial(self.room.name, published)
        await self.to_client(msg)

    async def to_client(self, msg: dict) -> None:
        """Only to the client (ready, errors, end), if it is still there. A connection found closed here is
        detached: the adapter sees the drop on its side and flushes the session; the captions go on to the
        transcript and the room."""
        if self._send is not None:
            try:
                await self._send(msg)
            except ConnectionClosed:
                self.detach()

    def _publish(self, msg: dict) -> dict | None:
        """To this replica's viewers of the room; returns the room message (None: not in a room)."""
        if self.room is None:
            return None
        published = {**msg, "speaker": self.speaker, "session": self.session_id}
        self.room.publish(published)
        return published
