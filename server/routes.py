"""HTTP on the websocket port: which path gets which answer. `/v1/listen` and `/v1/watch` go on to the websocket
handshake; `/healthz`, `/metrics`, transcripts and the web/ folder are answered here. Transcripts are read and
rendered in a thread, off the event loop (a room's file can be large)."""
from __future__ import annotations

from http import HTTPStatus
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection

from . import adapters, auth, http
from . import protocol as P
from .health import health
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .storage import FORMATS

LISTEN_PATH = "/v1/listen"  # protocol v1, or Deepgram's live protocol (adapters.py tells them apart)
WATCH_PATH = "/v1/watch"
REALTIME_PATH = "/v1/realtime"  # OpenAI's Realtime transcription sessions
STREAM_PATHS = (LISTEN_PATH, WATCH_PATH, REALTIME_PATH)
TRANSCRIPTS = "/v1/transcripts/"
# Pages with their own paths (any /room/NAME is room.html; the page's script reads NAME from the URL).
PAGES = {"/": "index.html", "/overlay": "overlay.html", "/room/": "room.html"}


def params(query: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(query).items()}


async def route(app, connection: ServerConnection, request):
    """websockets' process_request: a Response, or None to go on with the websocket handshake."""
    path, query = http.split_path(request)
    if getattr(request, "method", "GET") != "GET":
        return http.response(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET\n", "text/plain; charset=utf-8", Allow="GET")
    if path in STREAM_PATHS:
        # Deepgram's and OpenAI's clients expect a bad key refused at the handshake (HTTP 401), not after it.
        return adapters.handshake_refusal(app.cfg.auth, path, params(query), request)
    if path == "/healthz":
        report, status = health(app)
        return http.json_response(report, HTTPStatus(status))
    if path == "/metrics":
        return http.response(HTTPStatus.OK, app.metrics.render(), METRICS_TYPE)
    if path.startswith(TRANSCRIPTS):
        return await transcript(app, path[len(TRANSCRIPTS):], request, params(query))
    if path.startswith("/room/") and path.count("/") == 2:
        path = "/room/"
    return http.static_file(app.web_root, PAGES.get(path, path))


async def transcript(app, name: str, request, query: dict):
    """GET /v1/transcripts/ID.{json,txt,srt,vtt} (a session) or /v1/transcripts/rooms/NAME.{...} (a room)."""
    verdict = auth.check(app.cfg.auth, auth.WATCH, auth.token_from(request.headers, query))
    if verdict != auth.OK:
        status = HTTPStatus.UNAUTHORIZED if verdict == auth.UNAUTHORIZED else HTTPStatus.FORBIDDEN
        return http.json_response({"error": status.phrase}, status)
    kind, _, name = name.rpartition("/")
    name, _, fmt = name.rpartition(".")
    valid = bool(P.SESSION_ID.fullmatch(name) if kind == "" else kind == "rooms" and P.ROOM_NAME.fullmatch(name))
    kind = kind or "sessions"
    # With replicas, Redis has every replica's finals; the local JSONL is what this replica has if Redis is away.
    shared = await app.cluster.finals(kind, name) if valid and app.cluster is not None else None
    found = valid and fmt in FORMATS and await app.store.render_async(kind, name, fmt, shared)
    if not found:
        return http.not_found(request.path)
    body, ctype = found
    return http.response(HTTPStatus.OK, body.encode(), ctype)
