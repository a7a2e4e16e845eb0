"""What every connection on the websocket endpoints works with, typed: the config, the engine, where captions go,
what can be resumed, and the registry of what is connected now (changed only through its methods).

The CaptionServer (app.py) builds one StreamContext and owns what is in it; the connection handlers
(policy.py and its adapters, watch.py, intake.py) get it instead of the server itself, so they see what they use
and nothing of the server's lifecycle.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from ..cluster import Cluster
from ..config import Config
from ..core.engine import Engine
from ..core.session import Session
from ..core.vad import VadFactory
from ..delivery.rooms import Rooms
from ..delivery.transcripts import TranscriptStore
from ..speakers import Diarizer
from .connection import Connection
from .resume import Resumable


class LiveStream(Protocol):
    """A stream connection as the registry and the server's shutdown see it (policy.Stream)."""

    session: Session | None

    def release(self, token: str) -> bool: ...
    async def shut_down(self) -> None: ...


@dataclass
class Live:
    """The connections open now: streams by session id, room viewers, connections per client address."""

    streams: dict[str, LiveStream] = field(default_factory=dict)
    viewers: set[Connection] = field(default_factory=set)
    per_ip: Counter[str] = field(default_factory=Counter)
    closing: bool = False  # the server is shutting down: it closes every connection itself (shutting_down())

    def shutting_down(self) -> None:
        """From now on no connection is admitted, and streams leave closing to the server."""
        self.closing = True

    def add_stream(self, session_id: str, stream: LiveStream) -> None:
        self.streams[session_id] = stream

    def remove_stream(self, session_id: str, stream: LiveStream) -> None:
        """Only if it is still this stream's: a resumed session may be registered under a newer connection."""
        if self.streams.get(session_id) is stream:
            del self.streams[session_id]

    def knows(self, session_id: str) -> bool:
        return session_id in self.streams

    def connected(self, ip: str) -> None:
        self.per_ip[ip] += 1

    def disconnected(self, ip: str) -> None:
        self.per_ip[ip] -= 1
        if not self.per_ip[ip]:
            del self.per_ip[ip]

    def add_viewer(self, ws: Connection) -> None:
        self.viewers.add(ws)

    def remove_viewer(self, ws: Connection) -> None:
        self.viewers.discard(ws)


@dataclass(frozen=True)
class StreamContext:
    cfg: Config
    engine: Engine
    store: TranscriptStore
    rooms: Rooms
    vad_factory: VadFactory
    resumable: Resumable
    cluster: Cluster | None  # with redis.url: shared with the other replicas
    live: Live
    diarizer: Diarizer  # labels voices for the streams that ask (its model loads on the first that does)
