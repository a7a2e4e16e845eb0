"""`/v1/listen`: our own protocol (v1, docs/protocol.md) over one websocket, adapted onto a Session.

Connection-level policy lives here: the audio-rate and frame-rate throttles, the idle and length limits, the send
timeout, and what a dropped connection means (the session is flushed, then held for resuming). What a stream's
messages mean is the session's business (session.py).
"""
from __future__ import annotations

import asyncio
import logging
import uuid

from . import protocol as P
from .connection import Connection, ConnectionClosed
from ..cluster.link import FAILURES
from .limits import TokenBucket
from .resume import tokens_match
from ..config import SegmenterConfig
from ..core.session import ResumeState, Session
from ..delivery.sink import OutputSink

log = logging.getLogger(__name__)

# Close codes besides the standard ones (docs/protocol.md lists them all). 1012 (service restart): this replica is
# draining; the session is flushed and held for the client to resume on another replica.
CLOSE_IDLE, CLOSE_TOO_LONG, CLOSE_RESUMED_ELSEWHERE, CLOSE_DRAINING = 4408, 4409, 4410, 1012


def new_session_id() -> str:
    return uuid.uuid4().hex[:12]  # protocol.SESSION_ID: what /v1/transcripts/ID takes


class Listener:
    """One `/v1/listen` connection. Its Session is made by the first `start` (a new one, or a resumed one).

    The other protocols' adapters (deepgram.py, realtime.py) are subclasses that override only the protocol:
    `opened` (a stream that starts on connect), `on_text` / `on_audio` (client frames -> session calls),
    `encode` (session messages -> their frames), `error_frame`, `segmenter_config` and `resumable`. Limits,
    timeouts, drops, rooms and transcripts stay as they are here."""

    resumable = True  # a dropped session is held for resuming (protocol v1 can resume; the others cannot)

    def __init__(self, app, ws: Connection, url_room: str | None):
        self.app, self.ws, self.url_room = app, ws, url_room
        self.lim = app.cfg.limits
        self.session: Session | None = None
        self._lock = asyncio.Lock()  # one writer at a time keeps messages in the order the session produced them
        self.gone = asyncio.Event()  # set once a dropped session is flushed and held (a resume waits for it)
        self.draining = False  # shutdown with replicas: the session is flushed and held, not ended

    # -- the protocol: what subclasses override -------------------------------------------------------------

    def encode(self, msg: dict) -> list[str]:
        """The frames that carry one session message (ready, partial, final, error, end) to the client."""
        return [P.dump(msg)]

    def error_frame(self, code: str, message: str) -> str:
        return P.error(code, message)

    def segmenter_config(self) -> SegmenterConfig:
        return self.app.cfg.segmenter

    async def opened(self) -> None:
        """Before the first client frame."""

    def audio_bytes(self, message: str | bytes) -> int:
        """Bytes of audio the frame just handled carried, for the audio-rate limit (v1: binary frames)."""
        return len(message) if isinstance(message, bytes) else 0

    # -- shared ---------------------------------------------------------------------------------------------

    async def deliver(self, msg: dict) -> None:
        """The sink's way to the client."""
        for frame in self.encode(msg):
            await self.send(frame)

    async def send(self, text: str) -> None:
        async with self._lock:
            try:
                await asyncio.wait_for(self.ws.send(text), self.lim.send_timeout_s)
            except asyncio.TimeoutError:
                log.warning("a client stopped reading for %.0f s: dropping it", self.lim.send_timeout_s)
                self.ws.abort()  # its finals are on disk already, and it may resume

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self.lim.max_session_s
        audio_budget = TokenBucket(self.lim.max_audio_rate, self.lim.audio_burst_s)
        frame_budget = TokenBucket(self.lim.max_frames_per_s, self.lim.max_frames_per_s)
        told_throttled = False
        try:
            await self.opened()
            while not (self.session and self.session.ended):
                try:
                    timeout = max(0.0, min(self.lim.idle_timeout_s, ends_at - loop.time()))
                    message = await asyncio.wait_for(self.ws.recv(), timeout)
                except asyncio.TimeoutError:
                    await self._time_out(too_long=loop.time() >= ends_at)
                    return
                if isinstance(message, str):
                    await self.on_text(message)
                else:
                    await self.on_audio(message)
                wait = frame_budget.take(1)
                bps = self.session.bytes_per_second if self.session else None
                if bps and (n_bytes := self.audio_bytes(message)):
                    wait = max(wait, audio_budget.take(n_bytes / bps))
                if wait > 0:
                    if not told_throttled:
                        told_throttled = True
                        await self.send(self.error_frame(
                            "rate_limited", f"faster than {self.lim.max_audio_rate:g}x real time or "
                                            f"{self.lim.max_frames_per_s:g} frames/s: reading is slowed down; "
                                            "nothing is dropped"))
                    await asyncio.sleep(wait)
            if not self.app.closing:  # on shutdown, the server closes with 1001 itself
                await self.ws.close(1000, "stream ended")
            await self.ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            await self._finish()

    async def on_text(self, text: str) -> None:
        """One text frame. Protocol errors are reported to the client and the connection goes on."""
        try:
            msg = P.parse_client_text(text)
            if isinstance(msg, P.Ping):
                await self.send(P.pong())
            elif isinstance(msg, P.Start):
                await self._start(msg)
            elif self.session is None:
                raise P.ProtocolError(P.NOT_STARTED, 'send {"type":"start",...} first')
            elif isinstance(msg, P.Finalize):
                self.session.finalize()
            elif isinstance(msg, P.Stop):
                await self.session.stop()
        except P.ProtocolError as exc:
            await self.send(P.error(exc.code, exc.message))

    async def on_audio(self, data: bytes) -> None:
        try:
            if self.session is None:
                raise P.ProtocolError(P.NOT_STARTED, 'audio before {"type":"start",...}; frame ignored')
            self.session.audio(data)
        except P.ProtocolError as exc:
            await self.send(P.error(exc.code, exc.message))

    async def _start(self, start: P.Start, session_id: str | None = None) -> None:
        """`session_id`: one the adapter has told its client already (a resumed session keeps its own)."""
        if self.session is not None:
            raise P.ProtocolError(P.ALREADY_STARTED, "this stream has started already; open a new connection "
                                                     "for a new stream")
        # Checked before anything is taken or made, so that a refused start leaves the connection free for another.
        room = start.room or (P.check_room(self.url_room) if self.url_room is not None else None)
        resumed = await self._take_over(start) if start.resume else None
        session_id = resumed.session if resumed else session_id or new_session_id()
        sink = OutputSink(session_id, self.app.store, self.deliver, self.app.cluster)
        session = Session(session_id, self.app.engine, self.segmenter_config(), self.app.vad_factory, sink,
                          self.app.rooms, resumed)
        self.session = session
        self.app.sessions[session_id] = self
        log.info("session %s %s from %s", session_id, "resumed" if resumed else "opened", self.ws.remote_address)
        await session.start(start, room)

    async def _take_over(self, start: P.Start) -> ResumeState:
        """The state of the session to resume: with replicas, claimed in Redis (it may come from another
        replica, live or dead: cluster/handover.py); else, or if it is this replica's own, taken here."""
        cluster = self.app.cluster
        if cluster is not None and cluster.up:
            try:
                _, state = await cluster.take(start.resume, start.resume_token, self._known_here)
            except P.ProtocolError as exc:
                # Not in Redis, but known here: made or dropped while Redis was away, its writes not out yet.
                if exc.code != P.RESUME_UNKNOWN or not self._known_here(start.resume):
                    raise
            except FAILURES:
                pass  # Redis went away meanwhile: what this replica holds is all there is
            else:
                if state is not None:
                    self.app.resumable.forget(start.resume)
                    return state
        return await self._take_local(start)

    def _known_here(self, session: str) -> bool:
        return session in self.app.sessions or self.app.resumable.holds(session)

    async def _take_local(self, start: P.Start) -> ResumeState:
        """If the session's old connection here still looks alive (a half-open TCP connection the server has
        not noticed yet), that one is closed first, once the token is checked."""
        old = self.app.sessions.get(start.resume)
        if old is not None and old.session is not None:
            if not tokens_match(old.session.token, start.resume_token):
                raise P.ProtocolError(P.RESUME_REFUSED, "wrong resume_token for this session")
            log.info("session %s: resumed from another connection; closing the old one", start.resume)
            old.ws.abort()
            await asyncio.wait_for(old.gone.wait(), self.lim.shutdown_deadline_s)
        return await self.app.resumable.take(start.resume, start.resume_token)

    async def drain(self) -> None:
        """Shutdown with replicas: the open window becomes a final (sent), then the connection closes with
        CLOSE_DRAINING and the session is held for its client to resume on another replica."""
        self.draining = True
        await self.session.suspend()
        await self.ws.close(CLOSE_DRAINING, "replica draining: resume on another replica")

    async def _time_out(self, too_long: bool) -> None:
        code, close_code = ("session_too_long", CLOSE_TOO_LONG) if too_long else ("idle_timeout", CLOSE_IDLE)
        await self.send(self.error_frame(code, f"stream ended by the server: {code.replace('_', ' ')}"))
        if self.session is not None:
            await self.session.stop(reason=code)
        await self.ws.close(close_code, code)

    async def _finish(self) -> None:
        """After the connection: a session that ended is forgotten; one that was dropped is flushed, then held
        for resuming (limits.resume_s)."""
        session = self.session
        if session is None:
            return
        cluster = self.app.cluster
        try:
            if not self.resumable and not session.ended:
                await session.detach()  # flushed into the transcript and the room; nobody can resume it
                if cluster is not None:
                    cluster.session_ended(session.id)
                log.info("session %s dropped: flushed", session.id)
            elif not session.ended or self.draining:
                if not session.ended:
                    self.app.resumable.dropping(ResumeState(session.id, session.token))
                try:
                    await session.detach()
                finally:  # even if the flush was cut short (shutdown), a resume waiting for it must not hang
                    state = session.state()
                    self.app.resumable.hold(state)
                if cluster is not None:
                    await cluster.session_held(state)
                log.info("session %s %s: flushed, resumable for %.0f s", session.id,
                         "drained" if self.draining else "dropped", self.lim.resume_s)
            else:
                if cluster is not None:
                    cluster.session_ended(session.id)
                log.info("session %s closed", session.id)
        finally:
            session.close()
            if self.app.sessions.get(session.id) is self:
                del self.app.sessions[session.id]
            self.gone.set()
