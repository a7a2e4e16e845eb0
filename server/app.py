"""The caption server's lifecycle: what it owns (engine, rooms, transcripts, live and resumable sessions), starting
to serve, and shutting down within a deadline. Each connection goes to its handler: listen.py (`/v1/listen`),
watch.py (`/v1/watch`); HTTP (and the websocket upgrade) is routes.py's; who may connect is admission.py's call.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from pathlib import Path

from aiohttp import web

from .streams import auth
from .httpapi import responses as http
from .streams import protocol as P
from .streams.admission import admit
from .cluster import Cluster
from .config import ROOT, Config
from .core.engine import Engine
from .intelligence.service import Intelligence
from .streams.adapters import adapter_for
from .streams.v1 import Listener
from .httpapi.looplag import LoopLag
from .httpapi.metrics import Metrics
from .streams.connection import Connection, ConnectionClosed
from .streams.resume import Resumable, tokens_match
from .delivery.rooms import Rooms
from .httpapi.routes import WATCH_PATH, make_app, params, runner_options
from .delivery.transcripts import TranscriptStore
from .core.vad import VadFactory
from .streams.watch import watch

log = logging.getLogger(__name__)


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


class CaptionServer:
    def __init__(self, cfg: Config, engine: Engine):
        self.cfg = cfg
        self.engine = engine
        self.sessions: dict[str, Listener] = {}  # live streams by session id
        self.resumable = Resumable(cfg.limits.resume_s)
        self.viewers: set[Connection] = set()
        self.rooms = Rooms(cfg.rooms.backlog, cfg.rooms.max_rooms)
        # With redis.url: rooms, transcripts, resume state and presence shared with the other replicas.
        self.cluster = Cluster(cfg, self.rooms, self.release, self.resumable.forget) if cfg.redis.url else None
        if self.cluster is not None:
            self.rooms.on_forget = self.cluster.forget_room
        self.store = TranscriptStore(_resolve(cfg.server.data_dir))
        self.web_root = _resolve(cfg.server.web_root)
        self.vad_factory = VadFactory(cfg.segmenter)
        self.closing = False
        self.phase = "serving"  # what shutdown is doing now: said if it passes its deadline
        self._per_ip: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.loop_lag = LoopLag()
        self.metrics = Metrics(self)
        self.intelligence = Intelligence(cfg.intelligence, engine)
        engine.on_batch = self.metrics.on_batch

    async def start(self) -> None:
        s = self.cfg.server
        tls = None
        if s.certfile:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(_resolve(s.certfile), _resolve(s.keyfile))
        self.engine.start()
        self.loop_lag.start()
        await self.intelligence.start()
        if self.cluster is not None:
            await self.cluster.start()
        self._runner = web.AppRunner(make_app(self), **runner_options(self.cfg))
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, s.host, s.port, ssl_context=tls)
        await self._site.start()

    @property
    def port(self) -> int:
        return self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        host = self.cfg.server.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.cfg.server.certfile else 'http'}://{host}:{self.port}/"

    async def finals(self, kind: str, name: str) -> list[dict] | None:
        """A transcript's finals ("sessions" or "rooms"): with replicas from Redis (every replica's), else (or
        with Redis away) this replica's own JSONL; None if there is none."""
        shared = await self.cluster.finals(kind, name) if self.cluster is not None else None
        return shared if shared is not None else await self.store.finals_async(kind, name)

    def release(self, session_id: str, token: str) -> None:
        """Another replica resumes this session (its client reconnected there): drop the connection here, which
        still looks alive, so that the session is flushed and held for the other replica to take."""
        listener = self.sessions.get(session_id)
        if listener is not None and listener.session is not None and tokens_match(listener.session.token, token):
            log.info("session %s: resumed on another replica; dropping its old connection here", session_id)
            listener.ws.abort()  # its flush ends in the record marked held
        elif listener is None and not self.resumable.holds(session_id):
            self.cluster.disown(session_id)  # not here (a restart under the same name): nothing to wait for

    async def shutdown(self) -> None:
        """Stop accepting; flush every open stream into finals (persisted and sent); close streams and viewers
        with 1001 (with replicas: streams with 1012, their sessions held for resuming on another replica); stop
        the engine and the backend. The caller bounds it all with limits.shutdown_deadline_s."""
        self.closing = True
        await self._site.stop()  # no new connections; the open ones stay until they are flushed and closed

        async def flush(listener: Listener) -> None:
            if self.cluster is not None and listener.resumable:
                await listener.drain()  # it closes with 1012 itself
                return
            try:
                await listener.session.stop(reason="shutdown")
            except ConnectionClosed:
                pass  # dropped meanwhile: its handler flushes it into the transcript and the room
            await listener.ws.close(1001, "server shutting down")

        self.phase = f"flushing {len(self.sessions)} stream(s)"
        streams = [flush(li) for li in list(self.sessions.values()) if li.session is not None]
        viewers = [ws.close(1001, "server shutting down") for ws in list(self.viewers)]
        await asyncio.gather(*streams, *viewers, return_exceptions=True)
        self.phase = "waiting for connections to close"
        await self._runner.cleanup()  # waits for the handlers (their flushes) within limits.shutdown_deadline_s
        self.loop_lag.stop()
        self.phase = "closing the engine and the backend"
        await self.intelligence.close()
        await self.engine.close()
        self.phase = "writing the last transcript lines"
        await asyncio.to_thread(self.store.close)
        if self.cluster is not None:
            self.phase = "writing the last shared state to Redis"
            await self.cluster.close(self.cfg.redis.timeout_s * 4)
        self.phase = "stopped"

    async def handle(self, ws: Connection) -> None:
        """One websocket connection, once upgraded (routes.py): admitted or refused, then streamed or watched."""
        path, query = http.split_path(ws.request)
        query = params(query)
        action = auth.WATCH if path == WATCH_PATH else auth.SPEAK
        peer = ws.remote_address[0] if ws.remote_address else "?"
        ip = http.client_ip(peer, ws.request.headers, self.cfg.server.trusted_proxies)
        refusal = admit(self.cfg, self.engine, self._per_ip, self.closing, ip, action,
                        auth.token_from(ws.request.headers, query))
        listener = None if action == auth.WATCH else adapter_for(path, query)(self, ws, query.get("room"))
        if refusal:
            close_code, code, message = refusal
            # in the client's own protocol: a Deepgram or OpenAI client reads v1 errors as unknown messages
            await ws.send(listener.error_frame(code, message) if listener else P.error(code, message))
            await ws.close(close_code, code)
            return
        self._per_ip[ip] += 1
        try:
            if listener is None:
                await watch(self, ws, query.get("room"))
            else:
                await listener.run()
        finally:
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]
