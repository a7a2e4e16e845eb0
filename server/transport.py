"""The network edge: one port for the websockets (`/v1/listen`, `/v1/watch`), `/healthz` and the web/ folder.

It only moves frames between a connection and its Session; policy lives in session.py and engine.py.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from . import http
from . import protocol as P
from .config import ROOT, Config
from .engine import Engine
from .rooms import Rooms, Viewer
from .session import Session

log = logging.getLogger(__name__)

LISTEN_PATH = "/v1/listen"
WATCH_PATH = "/v1/watch"
# Pages with their own paths (any /room/NAME is room.html; the page's script reads NAME from the URL).
PAGES = {"/": "index.html", "/overlay": "overlay.html", "/room/": "room.html"}
MAX_MESSAGE_BYTES = 1 << 20  # 1 s of 48 kHz f32 is 192 KB; larger frames close the connection with 1009


class CaptionServer:
    def __init__(self, cfg: Config, engine: Engine):
        self.cfg = cfg
        self.engine = engine
        self.sessions: dict[str, Session] = {}
        self.rooms = Rooms(cfg.rooms.backlog, cfg.rooms.max_rooms)
        web_root = Path(cfg.server.web_root)
        self.web_root = web_root if web_root.is_absolute() else ROOT / web_root
        self._server = None

    async def start(self) -> None:
        self.engine.start()
        self._server = await serve(self._handle, self.cfg.server.host, self.cfg.server.port,
                                   process_request=self._http, max_size=MAX_MESSAGE_BYTES)

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.cfg.server.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        await self.engine.close()

    def health(self) -> dict:
        backend = self.engine.backend
        stats = self.engine.stats
        return {"status": "ok", "backend": backend.name, "model": backend.model, "sessions": len(self.sessions),
                "rooms": len(self.rooms), "queue_depth": self.engine.queue_depth,
                "engine": {"batches": stats.batches, "windows": stats.windows, "audio_seconds": stats.audio_seconds,
                           "compute_seconds": stats.compute_seconds,
                           "superseded_partials": stats.superseded_partials}}

    def _http(self, connection: ServerConnection, request):
        path, _ = http.split_path(request)
        if path in (LISTEN_PATH, WATCH_PATH):
            return None  # go on with the websocket handshake
        if path == "/healthz":
            return http.json_response(self.health())
        if path.startswith("/room/") and path.count("/") == 2:
            path = "/room/"
        return http.static_file(self.web_root, PAGES.get(path, path))

    async def _handle(self, ws: ServerConnection) -> None:
        path, query = http.split_path(ws.request)
        params = {k: v[0] for k, v in parse_qs(query).items()}
        if path == WATCH_PATH:
            await self._watch(ws, params.get("room"))
        else:
            await self._listen(ws, params.get("room"))

    async def _listen(self, ws: ServerConnection, url_room: str | None) -> None:
        lock = asyncio.Lock()  # one writer at a time keeps messages in the order the session produced them

        async def send(text: str) -> None:
            async with lock:
                await ws.send(text)

        session = Session(uuid.uuid4().hex[:12], self.engine, self.cfg.segmenter, send, self.rooms, url_room)
        self.sessions[session.id] = session
        log.info("session %s opened from %s", session.id, ws.remote_address)
        try:
            async for message in ws:
                if isinstance(message, str):
                    await session.on_text(message)
                else:
                    await session.on_audio(message)
                if session.ended:
                    await ws.close(1000, "stream ended")
                    break
        except ConnectionClosed:
            pass
        finally:
            await session.close()
            del self.sessions[session.id]
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
        sender = asyncio.create_task(viewer.run())
        receiver = asyncio.create_task(self._viewer_input(ws))
        too_slow = asyncio.create_task(viewer.too_slow.wait())
        try:
            await asyncio.wait([sender, receiver, too_slow], return_when=asyncio.FIRST_COMPLETED)
            if too_slow.done():
                await ws.close(1008, "viewer too slow: fell too far behind")
        finally:
            room.viewers.discard(viewer)
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
