"""The network edge: one port for the websocket (`/v1/listen`), `/healthz` and the web/ folder.

It only moves frames between a connection and its Session; policy lives in session.py and engine.py.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from . import http
from .config import ROOT, Config
from .engine import Engine
from .session import Session

log = logging.getLogger(__name__)

LISTEN_PATH = "/v1/listen"
MAX_MESSAGE_BYTES = 1 << 20  # 1 s of 48 kHz f32 is 192 KB; larger frames close the connection with 1009


class CaptionServer:
    def __init__(self, cfg: Config, engine: Engine):
        self.cfg = cfg
        self.engine = engine
        self.sessions: dict[str, Session] = {}
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
                "queue_depth": self.engine.queue_depth,
                "engine": {"batches": stats.batches, "windows": stats.windows, "audio_seconds": stats.audio_seconds,
                           "compute_seconds": stats.compute_seconds,
                           "superseded_partials": stats.superseded_partials}}

    def _http(self, connection: ServerConnection, request):
        path, _ = http.split_path(request)
        if path == LISTEN_PATH:
            return None  # go on with the websocket handshake
        if path == "/healthz":
            return http.json_response(self.health())
        return http.static_file(self.web_root, path)

    async def _handle(self, ws: ServerConnection) -> None:
        lock = asyncio.Lock()  # one writer at a time keeps messages in the order the session produced them

        async def send(text: str) -> None:
            async with lock:
                await ws.send(text)

        session = Session(uuid.uuid4().hex[:12], self.engine, self.cfg.segmenter, send)
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
