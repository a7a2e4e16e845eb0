"""One stream connection under the policy every protocol shares, and the interface a protocol adapter implements.

The policy (`Stream`): the audio-rate and frame-rate throttles, the idle and length limits, the send timeout,
starting a session (a new one, or a resumed one taken from this replica or another), and what a dropped
connection means (the session is flushed, then held for resuming if its protocol can resume). On shutdown a
stream is flushed and closed, or with replicas drained for its client to resume elsewhere.

The protocol (`Adapter`: v1.py, deepgram.py, realtime.py): what the client's frames mean (`on_text`, `on_audio`,
`opened`) and how the session's typed events are framed (`encode`, `error_frame`). An adapter uses the stream
only through `Stream`'s public methods: `start`, `send`, `session`, and what the connection was opened with.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from ..cluster.link import FAILURES
from ..config import SegmenterConfig
from ..core.errors import ALREADY_STARTED, RESUME_REFUSED, RESUME_UNKNOWN, ProtocolError
from ..core.events import Event
from ..core.requests import Start, check_room, new_session_id
from ..core.session import Session
from ..core.state import ResumeState, tokens_match
from ..delivery.sink import OutputSink
from .connection import Connection, ConnectionClosed
from .context import StreamContext
from .limits import TokenBucket

log = logging.getLogger(__name__)

# Close codes besides the standard ones (docs/protocol.md lists them all). 1012 (service restart): this replica is
# draining; the session is flushed and held for the client to resume on another replica.
CLOSE_IDLE, CLOSE_TOO_LONG, CLOSE_DRAINING, CLOSE_GOING_AWAY = 4408, 4409, 1012, 1001


class Adapter:
    """One protocol on a stream connection. Subclasses implement the frames; the defaults suit binary audio."""

    resumable = False  # a dropped session is held for its client to resume (protocol v1 can; the others cannot)

    def __init__(self, stream: Stream):
        self.stream = stream

    async def opened(self) -> None:
        """Before the first client frame (a protocol whose stream starts on connect starts it here)."""

    async def on_text(self, text: str) -> None:
        raise NotImplementedError

    async def on_audio(self, data: bytes) -> None:
        raise NotImplementedError

    def encode(self, event: Event) -> list[str]:
        """The frames that carry one session event to the client (none: the protocol has no such message)."""
        raise NotImplementedError

    def error_frame(self, code: str, message: str) -> str:
        raise NotImplementedError

    def audio_bytes(self, message: str | bytes) -> int:
        """Bytes of audio the frame just handled carried, for the audio-rate limit (binary frames by default)."""
        return len(message) if isinstance(message, bytes) else 0

    def segmenter_config(self) -> SegmenterConfig:
        """The windowing this protocol's settings ask for (the server's own by default)."""
        return self.stream.cfg.segmenter


class Stream:
    def __init__(self, ctx: StreamContext, ws: Connection, adapter: Callable[[Stream], Adapter],
                 url_room: str | None):
        self._ctx = ctx
        self.ws, self.url_room = ws, url_room
        self.cfg = ctx.cfg
        self.backend_name = ctx.engine.backend.name
        self.session: Session | None = None
        self._lim = ctx.cfg.limits
        self._lock = asyncio.Lock()  # one writer at a time keeps messages in the order the session produced them
        self._gone = asyncio.Event()  # set once a dropped session is flushed and held (a resume waits for it)
        self._draining = False  # shutdown with replicas: the session is flushed and held, not ended
        self.adapter = adapter(self)

    # -- what adapters use ----------------------------------------------------------------------------------

    async def send(self, frame: str) -> None:
        """One frame to the client; a client that stops reading for limits.send_timeout_s is dropped."""
        async with self._lock:
            try:
                await asyncio.wait_for(self.ws.send(frame), self._lim.send_timeout_s)
            except asyncio.TimeoutError:
                log.warning("a client stopped reading for %.0f s: dropping it", self._lim.send_timeout_s)
                self.ws.abort()  # its finals are on disk already, and it may resume

    async def start(self, start: Start, session_id: str | None = None) -> None:
        """Starts the session (or resumes `start.resume`). `session_id`: one the adapter has told its client
        already (a resumed session keeps its own). Raises ProtocolError, leaving the connection free for a
        start that can be served."""
        if self.session is not None:
            raise ProtocolError(ALREADY_STARTED, "this stream has started already; open a new connection for a "
                                                 "new stream")
        # Checked before anything is taken or made, so that a refused start leaves the connection free for another.
        room = start.room or (check_room(self.url_room) if self.url_room is not None else None)
        resumed = await self._take_over(start) if start.resume else None
        session_id = resumed.session if resumed else session_id or new_session_id()
        ctx = self._ctx
        sink = OutputSink(session_id, ctx.store, self._deliver, ctx.rooms, ctx.cluster)
        if start.diarize is None and resumed is None:
            start = dataclasses.replace(start, diarize=ctx.cfg.speakers.diarize)  # the server's default
        self.session = Session(session_id, ctx.engine, self.adapter.segmenter_config(), ctx.vad_factory, sink,
                               resumed, ctx.diarizer)
        ctx.live.add_stream(session_id, self)
        log.info("session %s %s from %s", session_id, "resumed" if resumed else "opened", self.ws.remote_address)
        await self.session.start(start, room)

    # -- the connection -------------------------------------------------------------------------------------

    async def run(self) -> None:
        lim, adapter = self._lim, self.adapter
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + lim.max_session_s
        audio_budget = TokenBucket(lim.max_audio_rate, lim.audio_burst_s)
        frame_budget = TokenBucket(lim.max_frames_per_s, lim.max_frames_per_s)
        told_throttled = False
        try:
            await adapter.opened()
            while not (self.session and self.session.ended):
                try:
                    timeout = max(0.0, min(lim.idle_timeout_s, ends_at - loop.time()))
                    message = await asyncio.wait_for(self.ws.recv(), timeout)
                except asyncio.TimeoutError:
                    await self._time_out(too_long=loop.time() >= ends_at)
                    return
                if isinstance(message, str):
                    await adapter.on_text(message)
                else:
                    await adapter.on_audio(message)
                wait = frame_budget.take(1)
                bps = self.session.bytes_per_second if self.session else None
                if bps and (n_bytes := adapter.audio_bytes(message)):
                    wait = max(wait, audio_budget.take(n_bytes / bps))
                if wait > 0:
                    if not told_throttled:
                        told_throttled = True
                        await self.send(adapter.error_frame(
                            "rate_limited", f"faster than {lim.max_audio_rate:g}x real time or "
                                            f"{lim.max_frames_per_s:g} frames/s: reading is slowed down; "
                                            "nothing is dropped"))
                    await asyncio.sleep(wait)
            if not self._ctx.live.closing:  # on shutdown, the server closes with 1001 itself
                await self.ws.close(1000, "stream ended")
            await self.ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            await self._finish()

    async def _deliver(self, event: Event) -> bool:
        """The sink's way to the client: False once the connection is gone."""
        try:
            for frame in self.adapter.encode(event):
                await self.send(frame)
        except ConnectionClosed:
            return False
        return True

    async def _time_out(self, too_long: bool) -> None:
        code, close_code = ("session_too_long", CLOSE_TOO_LONG) if too_long else ("idle_timeout", CLOSE_IDLE)
        await self.send(self.adapter.error_frame(code, f"stream ended by the server: {code.replace('_', ' ')}"))
        if self.session is not None:
            await self.session.stop(reason=code)
        await self.ws.close(close_code, code)

    # -- resuming ---------------------------------------------------------------------------------------------

    async def _take_over(self, start: Start) -> ResumeState:
        """The state of the session to resume: with replicas, claimed in Redis (it may come from another
        replica, live or dead: cluster/handover.py); else, or if it is this replica's own, taken here."""
        cluster, resume = self._ctx.cluster, start.resume
        assert resume is not None
        if cluster is not None and cluster.up:
            try:
                _, state = await cluster.take(resume, start.resume_token, self._known_here)
            except ProtocolError as exc:
                # Not in Redis, but known here: made or dropped while Redis was away, its writes not out yet.
                if exc.code != RESUME_UNKNOWN or not self._known_here(resume):
                    raise
            except FAILURES:
                pass  # Redis went away meanwhile: what this replica holds is all there is
            else:
                if state is not None:
                    self._ctx.resumable.forget(resume)
                    return state
        return await self._take_local(resume, start.resume_token)

    def _known_here(self, session: str) -> bool:
        return self._ctx.live.knows(session) or self._ctx.resumable.holds(session)

    async def _take_local(self, session_id: str, token: str | None) -> ResumeState:
        """If the session's old connection here still looks alive (a half-open TCP connection the server has
        not noticed yet), that one is closed first, once the token is checked."""
        old = self._ctx.live.streams.get(session_id)
        if isinstance(old, Stream) and old.session is not None:
            if not tokens_match(old.session.token, token):
                raise ProtocolError(RESUME_REFUSED, "wrong resume_token for this session")
            log.info("session %s: resumed from another connection; closing the old one", session_id)
            old.ws.abort()
            await asyncio.wait_for(old._gone.wait(), self._lim.shutdown_deadline_s)
        return await self._ctx.resumable.take(session_id, token)

    def release(self, token: str) -> bool:
        """Another replica resumes this session (its client reconnected there): the connection here, which still
        looks alive, is dropped, so that the session is flushed and held for the other replica to take. False if
        the token is not this session's."""
        if self.session is None or not tokens_match(self.session.token, token):
            return False
        self.ws.abort()  # its flush ends in the record marked held
        return True

    # -- the end ----------------------------------------------------------------------------------------------

    async def shut_down(self) -> None:
        """The server is shutting down: the open window becomes a final (sent); then, with replicas and a
        protocol that can resume, the connection closes with CLOSE_DRAINING and the session is held for its
        client to resume on another replica; else the stream ends (`end`, reason shutdown) and closes with 1001."""
        if self.session is None:
            return
        if self._ctx.cluster is not None and self.adapter.resumable:
            self._draining = True
            await self.session.suspend()
            await self.ws.close(CLOSE_DRAINING, "replica draining: resume on another replica")
            return
        try:
            await self.session.stop(reason="shutdown")
        except ConnectionClosed:
            pass  # dropped meanwhile: its handler flushes it into the transcript and the room
        await self.ws.close(CLOSE_GOING_AWAY, "server shutting down")

    async def _finish(self) -> None:
        """After the connection: a session that ended is forgotten; one that was dropped is flushed, then held
        for resuming (limits.resume_s) if its protocol can resume."""
        session, cluster, resumable = self.session, self._ctx.cluster, self._ctx.resumable
        if session is None:
            return
        try:
            if not self.adapter.resumable and not session.ended:
                await session.detach()  # flushed into the transcript and the room; nobody can resume it
                if cluster is not None:
                    cluster.session_ended(session.id)
                log.info("session %s dropped: flushed", session.id)
            elif not session.ended or self._draining:
                if not session.ended:
                    resumable.dropping(ResumeState(session.id, session.token))
                try:
                    await session.detach()
                finally:  # even if the flush was cut short (shutdown), a resume waiting for it must not hang
                    state = session.state()
                    resumable.hold(state)
                if cluster is not None:
                    await cluster.session_held(state)
                log.info("session %s %s: flushed, resumable for %.0f s", session.id,
                         "drained" if self._draining else "dropped", self._lim.resume_s)
            else:
                if cluster is not None:
                    cluster.session_ended(session.id)
                log.info("session %s closed", session.id)
        finally:
            session.close()
            self._ctx.live.remove_stream(session.id, self)
            self._gone.set()
