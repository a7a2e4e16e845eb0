"""The caption server: what it owns and how the parts are wired, starting to serve, and shutting down within a
deadline.

The flow it wires: connections come in through httpapi/ (aiohttp: the routes, HTTP answers) to streams/ (intake,
the connection policy, one adapter per protocol), which drive the session core in core/ (audio, VAD windows, the
shared engine); the core's events go out through delivery/ (transcripts, rooms, the client). cluster/ shares
rooms, transcripts and resumable sessions with other replicas; intelligence/ answers questions about a meeting.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

from aiohttp import web

from .cluster import Cluster
from .cluster.outputs import SharedRoomOutputs
from .config import ROOT, Config
from .core.engine import Engine
from .core.vad import VadFactory
from .delivery.rooms import Rooms
from .delivery.transcripts import TranscriptStore
from .httpapi.looplag import LoopLag
from .httpapi.metrics import Metrics
from .httpapi.routes import make_app, runner_options
from .intelligence.service import Intelligence
from .outputs.registry import RoomOutputs
from .speakers import Diarizer
from .streams.context import Live, StreamContext
from .streams.resume import Resumable

log = logging.getLogger(__name__)


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


class CaptionServer:
    def __init__(self, cfg: Config, engine: Engine):
        self.cfg = cfg
        self.outputs = RoomOutputs(cfg.outputs)  # rooms' finals pushed to Zoom, YouTube, Teams, webhooks
        rooms = Rooms(cfg.rooms.backlog, cfg.rooms.max_rooms, on_final=self.outputs.final)
        resumable = Resumable(cfg.limits.resume_s)
        # With redis.url: rooms, transcripts, resume state and presence shared with the other replicas.
        cluster = Cluster(cfg, rooms, self._release, resumable.forget) if cfg.redis.url else None
        if cluster is not None:
            rooms.on_forget = cluster.forget_room
            # outputs shared: each delivered by one replica (a lease), from the room's shared transcript
            self.outputs.shared = SharedRoomOutputs(cluster.link, cluster.keys, cluster.replica, cfg.redis.heartbeat_s)
        self.streams = StreamContext(cfg, engine, TranscriptStore(_resolve(cfg.server.data_dir)), rooms,
                                     VadFactory(cfg.segmenter), resumable, cluster, Live(), Diarizer(cfg.speakers))
        self.web_root = _resolve(cfg.server.web_root)
        self.phase = "serving"  # what shutdown is doing now: said if it passes its deadline
        self.loop_lag = LoopLag()
        self.metrics = Metrics(self)
        self.intelligence = Intelligence(cfg.intelligence, engine)
        engine.on_batch = self.metrics.on_batch
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        s, ctx = self.cfg.server, self.streams
        tls = None
        if s.certfile:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(_resolve(s.certfile), _resolve(s.keyfile))
        ctx.engine.start()
        if self.cfg.speakers.diarize:
            # Every stream labels voices: load the voice encoder now. Loaded by the first stream that asks instead,
            # its import (torch) holds the interpreter for a few hundred ms, and every stream's captions wait.
            try:
                await ctx.diarizer.load()
            except RuntimeError as exc:
                log.error("speaker labels are not available: %s", exc)
        self.loop_lag.start()
        await self.intelligence.start()
        if ctx.cluster is not None:
            await ctx.cluster.start()
        await self.outputs.start()  # after the cluster: with replicas, outputs are shared through it
        self._runner = web.AppRunner(make_app(self, self.metrics), **runner_options(self.cfg))
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, s.host, s.port, ssl_context=tls)
        await self._site.start()

    @property
    def port(self) -> int:
        assert self._runner is not None, "start() first"
        return self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        host = self.cfg.server.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.cfg.server.certfile else 'http'}://{host}:{self.port}/"

    async def finals(self, kind: str, name: str) -> list[dict] | None:
        """A transcript's finals ("sessions" or "rooms"): with replicas from Redis (every replica's), else (or
        with Redis away) this replica's own JSONL; None if there is none."""
        cluster = self.streams.cluster
        shared = await cluster.finals(kind, name) if cluster is not None else None
        return shared if shared is not None else await self.streams.store.finals_async(kind, name)

    def _release(self, session_id: str, token: str) -> None:
        """Another replica resumes this session (its client reconnected there): drop the connection here, which
        still looks alive, so that the session is flushed and held for the other replica to take."""
        ctx = self.streams
        stream = ctx.live.streams.get(session_id)
        if stream is not None:
            if stream.release(token):
                log.info("session %s: resumed on another replica; dropped its old connection here", session_id)
        elif not ctx.resumable.holds(session_id) and ctx.cluster is not None:
            ctx.cluster.disown(session_id)  # not here (a restart under the same name): nothing to wait for

    async def shutdown(self) -> None:
        """Stop accepting; flush every open stream into finals (persisted and sent); close streams and viewers
        with 1001 (with replicas: streams with 1012, their sessions held for resuming on another replica); stop
        the engine and the backend. The caller bounds it all with limits.shutdown_deadline_s."""
        assert self._site is not None and self._runner is not None, "start() first"
        ctx = self.streams
        ctx.live.shutting_down()
        await self._site.stop()  # no new connections; the open ones stay until they are flushed and closed
        self.phase = f"flushing {len(ctx.live.streams)} stream(s)"
        streams = [stream.shut_down() for stream in list(ctx.live.streams.values())]
        viewers = [ws.close(1001, "server shutting down") for ws in list(ctx.live.viewers)]
        await asyncio.gather(*streams, *viewers, return_exceptions=True)
        self.phase = "waiting for connections to close"
        await self._runner.cleanup()  # waits for the handlers (their flushes) within limits.shutdown_deadline_s
        self.loop_lag.stop()
        self.phase = "closing the engine and the backend"
        await self.intelligence.close()
        await self.outputs.close()  # after the flush above: the last finals were offered (not waited for)
        await ctx.diarizer.close()
        await ctx.engine.close()
        self.phase = "writing the last transcript lines"
        await asyncio.to_thread(ctx.store.close)
        if ctx.cluster is not None:
            self.phase = "writing the last shared state to Redis"
            await ctx.cluster.close(self.cfg.redis.timeout_s * 4)
        self.phase = "stopped"
