"""Where one session's captions go: the transcript on disk, the room's viewers, and the client's connection.

The first two never depend on the third: when the client's connection is gone (detached), finals are still
persisted and published, so a dropped speaker's last words reach the transcript and the room. A final is on disk
before it is published or sent, so nothing anyone saw can be missing from the transcript.

With replicas (`replicas`: the Cluster), a final is also in Redis before it is sent: its transcript entries, the
room message for other replicas' viewers and the session's resume state go out together (bounded by
redis.timeout_s, not at all while Redis is away), so any replica can resume the session from what its client has
seen.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Awaitable, Callable, Protocol, TypeVar

from ..core.events import Caption, Event, Final, Partial
from ..core.state import ResumeState
from .records import transcript_line
from .rooms import Room, Rooms
from .transcripts import TranscriptStore

log = logging.getLogger(__name__)

C = TypeVar("C", Partial, Final)

# One event to the client, encoded by its adapter; False once the client's connection is gone.
Send = Callable[[Event], Awaitable[bool]]


class Replicas(Protocol):
    """What the sink shares with other replicas (server/cluster/): declared here, so that delivery depends on no
    Redis code."""

    def speaker_joined(self, room: str, session: str, label: str) -> None: ...
    def speaker_left(self, room: str, session: str) -> None: ...
    async def session_live(self, state: ResumeState) -> None: ...
    async def final(self, session: str, room: str | None, line: dict, published: Caption | None,
                    state: ResumeState) -> None: ...
    def partial(self, room: str, caption: Partial) -> None: ...


class OutputSink:
    def __init__(self, session_id: str, store: TranscriptStore | None, send: Send, rooms: Rooms | None = None,
                 replicas: Replicas | None = None):
        self.session_id = session_id
        self._store = store
        self._rooms = rooms
        self._replicas = replicas
        self._send: Send | None = send
        self._room: Room | None = None
        self.speaker: str | None = None  # the label a room's viewers see

    @property
    def room(self) -> str | None:
        return self._room.name if self._room else None

    def join(self, room: str, speaker: str) -> None:
        if self._rooms is None:
            return
        self._room, self.speaker = self._rooms.get(room), speaker
        self._room.speakers[self.session_id] = speaker
        if self._replicas is not None:
            self._replicas.speaker_joined(room, self.session_id, speaker)

    def leave(self) -> None:
        if self._room is not None:
            self._room.speakers.pop(self.session_id, None)
            if self._replicas is not None:
                self._replicas.speaker_left(self._room.name, self.session_id)

    @property
    def attached(self) -> bool:
        return self._send is not None

    def detach(self) -> None:
        """The client's connection is gone: from now on only the transcript and the room get captions."""
        self._send = None

    async def started(self, state: ResumeState) -> None:
        """The session starts (or resumes): with replicas, its resume state is shared before `ready` is sent."""
        if self._replicas is not None:
            await self._replicas.session_live(state)

    async def final(self, final: Final, state: ResumeState) -> None:
        """Persist, publish, then send (the order matters: see the module doc). `state`: the session's resume
        state once this final is out, shared with the other replicas."""
        labelled = self._labelled(final)
        line = transcript_line(labelled)
        if self._store is not None:
            await self._store.save(self.session_id, self.room, line)
        published = self._publish(labelled)
        if self._replicas is not None:
            await self._replicas.final(self.session_id, self.room, line, labelled if published else None, state)
        await self.to_client(final)

    async def partial(self, partial: Partial) -> None:
        labelled = self._labelled(partial)
        if self._publish(labelled) and self._replicas is not None and self._room is not None:
            self._replicas.partial(self._room.name, labelled)
        await self.to_client(partial)

    async def to_client(self, event: Event) -> None:
        """Only to the client (ready, errors, end), if it is still there. A connection found closed here is
        detached: the adapter sees the drop on its side and flushes the session; the captions go on to the
        transcript and the room."""
        if self._send is not None and not await self._send(event):
            self.detach()

    def _labelled(self, caption: C) -> C:
        """As the room and the transcript keep it: with this session and (in a room) its speaker label."""
        return dataclasses.replace(caption, speaker=self.speaker, session=self.session_id)

    def _publish(self, labelled: Caption) -> bool:
        """To this replica's viewers of the room; False: not in a room."""
        if self._room is None:
            return False
        self._room.publish(labelled)
        return True
