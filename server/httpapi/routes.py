"""HTTP and websockets on one port: the route table, and the answers that are not a stream's own.

aiohttp serves both (docs/architecture.md says why): the websocket endpoints (`/v1/listen`, `/v1/watch`,
`/v1/realtime`) are upgraded here and handed to streams/intake.py; `/healthz`, `/metrics`, transcripts, the ask
API (ask.py), a room's caption outputs (outputs.py) and the web/ folder are answered here. Transcripts are read and rendered in a thread,
off the event loop (a room's file can be large).

Limits that every request meets (a middleware): request lines past MAX_TARGET get 414, bodies past
MAX_BODY_BYTES 413 (aiohttp's client_max_size), a method a path does not take 405 with Allow.
"""
from __future__ import annotations

from http import HTTPStatus

from aiohttp import web

from ..config import Config
from ..core.requests import ROOM_NAME, SESSION_ID
from ..delivery.transcripts import FORMATS
from ..streams import auth, intake
from ..streams.connection import Connection
from . import ask as ask_api
from . import outputs as outputs_api
from . import responses as http
from .health import health
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import Metrics
from .served import SERVED, Served, served

TRANSCRIPTS = "/v1/transcripts/"
# Pages with their own paths (any /room/NAME is room.html; the page's script reads NAME from the URL).
PAGES = {"/": "index.html", "/overlay": "overlay.html", "/room/": "room.html"}
MAX_TARGET = 8192  # a longer request line gets 414, as from the websockets library before (its 8 KiB lines)
MAX_LINE = 65536  # what aiohttp reads of a request line at all: past it, its own 400
MAX_BODY_BYTES = 64 * 1024  # POST bodies (a question) are small
PING_S = 20.0  # websocket keepalive pings; a connection that misses a pong for half of this is closed
METRICS = web.AppKey("metrics", Metrics)


def make_app(server: Served, collected: Metrics) -> web.Application:
    app = web.Application(middlewares=[_limits], client_max_size=MAX_BODY_BYTES)
    app[SERVED], app[METRICS] = server, collected
    r = app.router
    for path in intake.STREAM_PATHS:
        r.add_get(path, stream, allow_head=False)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)
    for path, handler in (("/v1/rooms/{room}/ask", ask_api.ask_room), (TRANSCRIPTS + "{session}/ask",
                                                                        ask_api.ask_transcript)):
        r.add_post(path, handler)
        r.add_get(path, _post_only)  # else the pages' catch-all below would answer a GET with 404
    r.add_get("/v1/rooms/{room}/summary", ask_api.room_summary)
    r.add_post("/v1/rooms/{room}/outputs", outputs_api.add_output)
    r.add_get("/v1/rooms/{room}/outputs", outputs_api.list_outputs)
    r.add_delete("/v1/rooms/{room}/outputs/{output}", outputs_api.remove_output)
    r.add_get(TRANSCRIPTS + "{name:.*}", transcript)
    r.add_get("/{tail:.*}", page)
    return app


def runner_options(cfg: Config) -> dict:
    """web.AppRunner's settings: a connection that sends no request within handshake_timeout_s is closed (the
    keep-alive timer runs from the connection's start), and request lines are read up to MAX_LINE."""
    return dict(handle_signals=False, access_log=None, keepalive_timeout=cfg.limits.handshake_timeout_s,
                max_line_size=MAX_LINE, shutdown_timeout=cfg.limits.shutdown_deadline_s)


@web.middleware
async def _limits(request: web.Request, handler):
    if len(request.raw_path) > MAX_TARGET:
        return http.response(HTTPStatus.REQUEST_URI_TOO_LONG, b"414 request line too long\n",
                             "text/plain; charset=utf-8")
    return await handler(request)


async def _post_only(request: web.Request) -> web.Response:
    return http.error(HTTPStatus.METHOD_NOT_ALLOWED, "POST a JSON body: {\"question\": \"...\"}", Allow="POST")


async def stream(request: web.Request) -> web.StreamResponse:
    """A websocket endpoint: refusals that belong to the handshake are HTTP answers; the rest is the stream's."""
    server = served(request)
    cfg = server.cfg
    ws = web.WebSocketResponse(protocols=auth.SUBPROTOCOLS, max_msg_size=cfg.limits.max_message_bytes,
                               heartbeat=PING_S)
    if not ws.can_prepare(request).ok:
        return http.response(HTTPStatus.UPGRADE_REQUIRED, b"426 a websocket endpoint: connect with a websocket\n",
                             "text/plain; charset=utf-8", Upgrade="websocket", Connection="Upgrade")
    origin = request.headers.get("Origin")
    # Non-browser clients send no Origin: an allow-list only constrains browsers.
    if cfg.auth.origins and origin is not None and origin not in cfg.auth.origins:
        return http.response(HTTPStatus.FORBIDDEN, b"403 this Origin may not connect\n", "text/plain; charset=utf-8")
    path, query = http.split_path(request)
    # Deepgram's and OpenAI's clients expect a bad key refused at the handshake (HTTP 401), not after it.
    refusal = intake.handshake_refusal(cfg.auth, path, request.headers, query)
    if refusal is not None:
        return http.response(refusal.status, refusal.body, refusal.content_type, **refusal.headers)
    await ws.prepare(request)
    await intake.accept(server.streams, Connection(request, ws))
    return ws


async def healthz(request: web.Request) -> web.Response:
    report, status = health(served(request))
    return http.json_response(report, HTTPStatus(status))


async def metrics(request: web.Request) -> web.Response:
    return http.response(HTTPStatus.OK, request.app[METRICS].render(), METRICS_TYPE)


async def page(request: web.Request) -> web.Response:
    path, _ = http.split_path(request)
    if path.startswith("/room/") and path.count("/") == 2:
        path = "/room/"
    return http.static_file(served(request).web_root, PAGES.get(path, path))


async def transcript(request: web.Request) -> web.Response:
    """GET /v1/transcripts/ID.{json,txt,srt,vtt} (a session) or /v1/transcripts/rooms/NAME.{...} (a room)."""
    app = served(request)
    if (refusal := http.viewer_refusal(app.cfg, request)) is not None:
        return refusal
    path, _ = http.split_path(request)
    kind, _, name = path[len(TRANSCRIPTS):].rpartition("/")
    name, _, fmt = name.rpartition(".")
    valid = bool(SESSION_ID.fullmatch(name) if kind == "" else kind == "rooms" and ROOM_NAME.fullmatch(name))
    kind = kind or "sessions"
    # With replicas, Redis has every replica's finals; the local JSONL is what this replica has if Redis is away.
    finals = await app.finals(kind, name) if valid and fmt in FORMATS else None
    found = finals is not None and await app.streams.store.render_async(kind, name, fmt, finals)
    if not found:
        return http.not_found(path)
    body, ctype = found
    return http.response(HTTPStatus.OK, body.encode(), ctype)
