"""HTTP and websockets on one port: the route table, and the answers that are not a stream's own.

aiohttp serves both (docs/architecture.md says why): the websocket endpoints (`/v1/listen`, `/v1/watch`,
`/v1/realtime`) are upgraded here and handed to CaptionServer.handle; `/healthz`, `/metrics`, transcripts, the ask
API (intelligence/api.py) and the web/ folder are answered here. Transcripts are read and rendered in a thread,
off the event loop (a room's file can be large).

Limits that every request meets (a middleware): request lines past MAX_TARGET get 414, bodies past
MAX_BODY_BYTES 413 (aiohttp's client_max_size), a method a path does not take 405 with Allow.
"""
from __future__ import annotations

from http import HTTPStatus
from urllib.parse import parse_qs

from aiohttp import web

from ..streams import adapters, auth
from . import responses as http
from ..streams import protocol as P
from ..streams.connection import Connection
from .health import health
from . import ask as ask_api
from .metrics import CONTENT_TYPE as METRICS_TYPE
from ..delivery.transcripts import FORMATS

LISTEN_PATH = "/v1/listen"  # protocol v1, or Deepgram's live protocol (adapters.py tells them apart)
WATCH_PATH = "/v1/watch"
REALTIME_PATH = "/v1/realtime"  # OpenAI's Realtime transcription sessions
STREAM_PATHS = (LISTEN_PATH, WATCH_PATH, REALTIME_PATH)
TRANSCRIPTS = "/v1/transcripts/"
# Pages with their own paths (any /room/NAME is room.html; the page's script reads NAME from the URL).
PAGES = {"/": "index.html", "/overlay": "overlay.html", "/room/": "room.html"}
MAX_TARGET = 8192  # a longer request line gets 414, as from the websockets library before (its 8 KiB lines)
MAX_LINE = 65536  # what aiohttp reads of a request line at all: past it, its own 400
MAX_BODY_BYTES = 64 * 1024  # POST bodies (a question) are small
PING_S = 20.0  # websocket keepalive pings; a connection that misses a pong for half of this is closed

SERVER = web.AppKey("server", object)  # the CaptionServer, for the handlers


def params(query: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(query).items()}


def make_app(server) -> web.Application:
    app = web.Application(middlewares=[_limits], client_max_size=MAX_BODY_BYTES)
    app[SERVER] = server
    r = app.router
    for path in STREAM_PATHS:
        r.add_get(path, stream, allow_head=False)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)
    for path, handler in (("/v1/rooms/{room}/ask", ask_api.ask_room), (TRANSCRIPTS + "{session}/ask",
                                                                        ask_api.ask_transcript)):
        r.add_post(path, handler)
        r.add_get(path, _post_only)  # else the pages' catch-all below would answer a GET with 404
    r.add_get("/v1/rooms/{room}/summary", ask_api.room_summary)
    r.add_get(TRANSCRIPTS + "{name:.*}", transcript)
    r.add_get("/{tail:.*}", page)
    return app


def runner_options(cfg) -> dict:
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
    server = request.app[SERVER]
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
    refusal = adapters.handshake_refusal(cfg.auth, path, params(query), request)
    if refusal is not None:
        return refusal
    await ws.prepare(request)
    await server.handle(Connection(request, ws))
    return ws


async def healthz(request: web.Request) -> web.Response:
    report, status = health(request.app[SERVER])
    return http.json_response(report, HTTPStatus(status))


async def metrics(request: web.Request) -> web.Response:
    return http.response(HTTPStatus.OK, request.app[SERVER].metrics.render(), METRICS_TYPE)


async def page(request: web.Request) -> web.Response:
    path, _ = http.split_path(request)
    if path.startswith("/room/") and path.count("/") == 2:
        path = "/room/"
    return http.static_file(request.app[SERVER].web_root, PAGES.get(path, path))


def viewer_refusal(cfg, request: web.Request) -> web.Response | None:
    """Transcripts and the ask API are for viewers: None if this request's token may read, else its 401/403."""
    verdict = auth.check(cfg.auth, auth.WATCH, auth.token_from(request.headers, params(request.query_string)))
    if verdict == auth.OK:
        return None
    status = HTTPStatus.UNAUTHORIZED if verdict == auth.UNAUTHORIZED else HTTPStatus.FORBIDDEN
    return http.json_response({"error": status.phrase}, status)


async def transcript(request: web.Request) -> web.Response:
    """GET /v1/transcripts/ID.{json,txt,srt,vtt} (a session) or /v1/transcripts/rooms/NAME.{...} (a room)."""
    app = request.app[SERVER]
    if (refusal := viewer_refusal(app.cfg, request)) is not None:
        return refusal
    path, _ = http.split_path(request)
    kind, _, name = path[len(TRANSCRIPTS):].rpartition("/")
    name, _, fmt = name.rpartition(".")
    valid = bool(P.SESSION_ID.fullmatch(name) if kind == "" else kind == "rooms" and P.ROOM_NAME.fullmatch(name))
    kind = kind or "sessions"
    # With replicas, Redis has every replica's finals; the local JSONL is what this replica has if Redis is away.
    finals = await app.finals(kind, name) if valid and fmt in FORMATS else None
    found = finals is not None and await app.store.render_async(kind, name, fmt, finals)
    if not found:
        return http.not_found(path)
    body, ctype = found
    return http.response(HTTPStatus.OK, body.encode(), ctype)
