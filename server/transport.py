"""The network edge: one port for the websockets (`/v1/listen`, `/v1/watch`), `/healthz`, `/metrics`, transcripts
and the web/ folder. Connection-level policy lives here (admission, auth, rate, idle and length limits, shutdown);
stream-level policy lives in session.py, scheduling in engine.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import uuid
from collections import Counter
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from . import auth, http
from . import protocol as P
from .config import ROOT, Config
from .engine import Engine
from .limits import TokenBucket
from .looplag import LoopLag
from .metrics import CONTENT_TYPE as METRICS_TYPE, Metrics
from .rooms import Rooms, Viewer
from .session import Session
from .storage import FORMATS, SESSION_ID, TranscriptStore

log = logging.getLogger(__name__)

LISTEN_PATH = "/v1/listen"
WATCH_PATH = "/v1/watch"
TRANSCRIPTS = "/v1/transcripts/"
# Pages with their own paths (any /room/NAME is room.html; the page's script reads NAME from the URL).
PAGES = {"/": "index.html", "/overlay": "overlay.html", "/room/": "room.html"}

# Close codes besides the standard ones (docs/protocol.md lists them all).
CLOSE_IDLE, CLOSE_TOO_LONG = 4408, 4409


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


class CaptionServer:
    def __init__(self, cfg: Config, engine: Engine):
        self.cfg = cfg
        self.engine = engine
        self.sessions: dict[str, Session] = {}
        self.rooms = Rooms(cfg.rooms.backlog, cfg.rooms.max_rooms)
        self.store = TranscriptStore(_resolve(cfg.server.data_dir))
        self.web_root = _resolve(cfg.server.web_root)
        self._streams: dict[str, ServerConnection] = {}  # session id -> its connection
        self._viewers: set[ServerConnection] = set()
        self._per_ip: Counter[str] = Counter()
        self._closing = False
        self._server = None
        self.loop_lag = LoopLag()
        self.metrics = Metrics(self)
        engine.on_batch = self.metrics.on_batch

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        s, a = self.cfg.server, self.cfg.auth
        tls = None
        if s.certfile:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(_resolve(s.certfile), _resolve(s.keyfile))
        self.engine.start()
        self.loop_lag.start()
        self._server = await serve(
            self._handle, s.host, s.port, ssl=tls, process_request=self._http,
            max_size=self.cfg.limits.max_message_bytes, select_subprotocol=auth.select_subprotocol,
            open_timeout=self.cfg.limits.handshake_timeout_s,
            # Non-browser clients send no Origin: an allow-list only constrains browsers.
            origins=[*a.origins, None] if a.origins else None)

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.cfg.server.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.cfg.server.certfile else 'http'}://{host}:{self.port}/"

    async def shutdown(self) -> None:
        """Stop accepting; flush every open stream into finals (persisted and sent) within the deadline; close
        streams and viewers with 1001; then stop the engine."""
        self._closing = True
        self._server.close(close_connections=False)
        deadline = self.cfg.limits.shutdown_deadline_s

        async def flush(session: Session, ws: ServerConnection) -> None:
            try:
                await asyncio.wait_for(session.stop(reason="shutdown"), deadline)
            except (asyncio.TimeoutError, ConnectionClosed):
                log.warning("session %s: not every final was delivered before the deadline", session.id)
            await ws.close(1001, "server shutting down")

        streams = [flush(self.sessions[sid], ws) for sid, ws in list(self._streams.items())]
        viewers = [ws.close(1001, "server shutting down") for ws in list(self._viewers)]
        await asyncio.gather(*streams, *viewers, return_exceptions=True)
        await self._server.wait_closed()
        self.loop_lag.stop()
        await self.engine.close()

    def health(self) -> dict:
        backend = self.engine.backend
        return {"status": "shutting_down" if self._closing else "ok", "backend": backend.name,
                "model": backend.model, "sessions": len(self.sessions), "viewers": len(self._viewers),
                "rooms": len(self.rooms), "queue_depth": self.engine.queue_depth,
                "queued_finals": self.engine.queued_finals, "rss_mb": _rss_mb(), "loop_lag": self.loop_lag.snapshot(),
                "engine": dataclasses.asdict(self.engine.stats),
                **({"decode": stats} if (stats := backend.decode_stats()) is not None else {})}

    # -- HTTP ----------------------------------------------------------------------------------------------------

    def _http(self, connection: ServerConnection, request):
        path, query = http.split_path(request)
        if getattr(request, "method", "GET") != "GET":
            return http.response(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET\n", "text/plain; charset=utf-8",
                                 Allow="GET")
        if path in (LISTEN_PATH, WATCH_PATH):
            return None  # go on with the websocket handshake
        if path == "/healthz":
            return http.json_response(self.health())
        if path == "/metrics":
            return http.response(HTTPStatus.OK, self.metrics.render(), METRICS_TYPE)
        if path.startswith(TRANSCRIPTS):
            return self._transcript(path[len(TRANSCRIPTS):], request, _params(query))
        if path.startswith("/room/") and path.count("/") == 2:
            path = "/room/"
        return http.static_file(self.web_root, PAGES.get(path, path))

    def _transcript(self, name: str, request, params: dict):
        """GET /v1/transcripts/ID.{json,txt,srt,vtt} (a session) or /v1/transcripts/rooms/NAME.{...} (a room)."""
        verdict = auth.check(self.cfg.auth, auth.WATCH, auth.token_from(request.headers, params))
        if verdict != auth.OK:
            status = HTTPStatus.UNAUTHORIZED if verdict == auth.UNAUTHORIZED else HTTPStatus.FORBIDDEN
            return http.json_response({"error": status.phrase}, status)
        kind, _, name = name.rpartition("/")
        name, _, fmt = name.rpartition(".")
        valid = SESSION_ID.fullmatch(name) if kind == "" else kind == "rooms" and P.ROOM_NAME.fullmatch(name)
        found = valid and fmt in FORMATS and self.store.render(kind or "sessions", name, fmt)
        if not found:
            return http.not_found(request.path)
        body, ctype = found
        return http.response(HTTPStatus.OK, body.encode(), ctype)

    # -- websockets ----------------------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        path, query = http.split_path(ws.request)
        params = _params(query)
        action = auth.WATCH if path == WATCH_PATH else auth.SPEAK
        ip = ws.remote_address[0] if ws.remote_address else "?"
        refusal = self._admit(ip, action, auth.token_from(ws.request.headers, params))
        if refusal:
            close_code, code, message = refusal
            await ws.send(P.error(code, message))
            await ws.close(close_code, code)
            return
        self._per_ip[ip] += 1
        try:
            if action == auth.WATCH:
                await self._watch(ws, params.get("room"))
            else:
                await self._listen(ws, params.get("room"))
        finally:
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]

    def _admit(self, ip: str, action: str, token: str | None) -> tuple[int, str, str] | None:
        """None, or (close code, error code, message) for a connection that may not go on."""
        lim = self.cfg.limits
        if self._closing:
            return 1001, "shutting_down", "the server is shutting down"
        verdict = auth.check(self.cfg.auth, action, token)
        if verdict == auth.UNAUTHORIZED:
            return auth.UNAUTHORIZED, "unauthorized", "a valid token is required (Authorization: Bearer, ?token=, " \
                                                      "or the bearer.TOKEN subprotocol)"
        if verdict == auth.FORBIDDEN:
            return auth.FORBIDDEN, "forbidden", f"this token may not {action}"
        if sum(self._per_ip.values()) >= lim.max_connections:
            return 1013, "too_many_connections", f"the server has {lim.max_connections} connections; try later"
        if self._per_ip[ip] >= lim.max_connections_per_ip:
            return 1013, "too_many_connections", f"{lim.max_connections_per_ip} connections per address at most"
        if action == auth.SPEAK and self.engine.queued_finals >= lim.max_queued_finals:
            return 1013, "overloaded", "the server is behind on finals and takes no new streams now; try later"
        return None

    async def _listen(self, ws: ServerConnection, url_room: str | None) -> None:
        lim = self.cfg.limits
        lock = asyncio.Lock()  # one writer at a time keeps messages in the order the session produced them

        async def send(text: str) -> None:
            async with lock:
                try:
                    await asyncio.wait_for(ws.send(text), lim.send_timeout_s)
                except asyncio.TimeoutError:
                    log.warning("a client stopped reading for %.0f s: dropping it", lim.send_timeout_s)
                    ws.transport.abort()  # its finals are on disk already

        session = Session(uuid.uuid4().hex[:12], self.engine, self.cfg.segmenter, send, self.rooms, url_room,
                          self.store)
        self.sessions[session.id] = session
        self._streams[session.id] = ws
        log.info("session %s opened from %s", session.id, ws.remote_address)
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + lim.max_session_s
        audio_budget = TokenBucket(lim.max_audio_rate, lim.audio_burst_s)
        frame_budget = TokenBucket(lim.max_frames_per_s, lim.max_frames_per_s)
        told_throttled = False
        try:
            while not session.ended:
                try:
                    message = await asyncio.wait_for(ws.recv(), max(0.0, min(lim.idle_timeout_s,
                                                                             ends_at - loop.time())))
                except asyncio.TimeoutError:
                    too_long = loop.time() >= ends_at
                    code, close_code = ("session_too_long", CLOSE_TOO_LONG) if too_long else \
                        ("idle_timeout", CLOSE_IDLE)
                    await send(P.error(code, f"stream ended by the server: {code.replace('_', ' ')}"))
                    await session.stop(reason=code)
                    await ws.close(close_code, code)
                    return
                if isinstance(message, str):
                    await session.on_text(message)
                else:
                    await session.on_audio(message)
                wait = frame_budget.take(1)
                if session.bytes_per_second and isinstance(message, bytes):
                    wait = max(wait, audio_budget.take(len(message) / session.bytes_per_second))
                if wait > 0:
                    if not told_throttled:
                        told_throttled = True
                        await send(P.error("rate_limited", f"faster than {lim.max_audio_rate:g}x real time or "
                                                           f"{lim.max_frames_per_s:g} frames/s: reading is slowed "
                                                           "down; nothing is dropped"))
                    await asyncio.sleep(wait)
            if not self._closing:  # on shutdown, shutdown() closes with 1001 itself
                await ws.close(1000, "stream ended")
            await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            await session.close()
            del self.sessions[session.id], self._streams[session.id]
            log.info("session %s closed", session.id)

    async def _watch(self, ws: ServerConnection, room_name: str | None) -> None:
        """A viewer: the room's backlog of finals, then its live partials and finals, until it goes away."""
        try:
            room = self.rooms.get(P.check_room(room_name))
        except P.ProtocolError as exc:
            await ws.send(P.error(exc.code, exc.message))
            await ws.close(1008, "bad room name")
            return
        viewer = Viewer(ws.send)
        await ws.send(P.dump({"type": "watching", "protocol": P.PROTOCOL_VERSION, "room": room.name,
                              "speakers": sorted(set(room.speakers.values()))}))
        for msg in list(room.backlog):
            await ws.send(P.dump({**msg, "backlog": True}))
        room.viewers.add(viewer)
        self._viewers.add(ws)
        sender = asyncio.create_task(viewer.run())
        receiver = asyncio.create_task(self._viewer_input(ws))
        too_slow = asyncio.create_task(viewer.too_slow.wait())
        try:
            await asyncio.wait([sender, receiver, too_slow], return_when=asyncio.FIRST_COMPLETED)
            if too_slow.done():
                await ws.close(1008, "viewer too slow: fell too far behind")
        finally:
            room.viewers.discard(viewer)
            self._viewers.discard(ws)
            for task in (sender, receiver, too_slow):
                task.cancel()
            await asyncio.gather(sender, receiver, too_slow, return_exceptions=True)

    @staticmethod
    async def _viewer_input(ws: ServerConnection) -> None:
        """Viewers only listen; they may ping."""
        try:
            async for message in ws:
                try:
                    msg = P.parse_client_text(message) if isinstance(message, str) else None
                except P.ProtocolError as exc:
                    await ws.send(P.error(exc.code, exc.message))
                    continue
                if isinstance(msg, P.Ping):
                    await ws.send(P.pong())
                else:
                    await ws.send(P.error(P.BAD_MESSAGE, "viewers may only send ping"))
        except ConnectionClosed:
            pass


def _params(query: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(query).items()}


def _rss_mb() -> float | None:
    """Resident memory of this process (Linux), for watching growth over long runs."""
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return round(kb / 1024, 1)
    except (OSError, StopIteration, ValueError):
        return None
