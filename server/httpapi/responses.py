"""Plain HTTP answers (aiohttp responses) with the headers every answer carries, the web/ folder, and the viewer
token check that transcripts and the ask API share. Which path gets which answer is routes.py's business."""
from __future__ import annotations

import json
import mimetypes
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from ..config import Config
from ..streams import auth
from ..streams.connection import params

CSP = "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; img-src 'self' data:"


def response(status: HTTPStatus, body: bytes, content_type: str, **headers: str) -> web.Response:
    h = {"Content-Type": content_type, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", **headers}
    return web.Response(status=status.value, body=body, headers=h)


def json_response(data: dict, status: HTTPStatus = HTTPStatus.OK, **headers: str) -> web.Response:
    return response(status, json.dumps(data).encode(), "application/json", **headers)


def error(status: HTTPStatus, message: str, **headers: str) -> web.Response:
    """A JSON error: {"error": code, "message": why} (docs/protocol.md, HTTP API)."""
    return json_response({"error": status.phrase.lower().replace(" ", "_"), "message": message}, status, **headers)


def not_found(path: str) -> web.Response:
    return response(HTTPStatus.NOT_FOUND, f"404 not found: {path[:200]}\n".encode(), "text/plain; charset=utf-8")


def static_file(web_root: Path, path: str) -> web.Response:
    """Serves a file under web_root; `/` is index.html. Paths that resolve outside web_root are 404s."""
    rel = unquote(path).lstrip("/") or "index.html"
    root = web_root.resolve()
    try:
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return not_found(path)
    except (OSError, ValueError):  # NUL bytes, names too long, ...
        return not_found(path)
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
        ctype += "; charset=utf-8"
    return response(HTTPStatus.OK, target.read_bytes(), ctype, **{"Content-Security-Policy": CSP})


def split_path(request: web.BaseRequest) -> tuple[str, str]:
    """The path as the client sent it (not percent-decoded nor normalized: static_file checks it itself) and the
    query string."""
    path, _, query = request.raw_path.partition("?")
    return path, query



def viewer_refusal(cfg: Config, request: web.Request) -> web.Response | None:
    """Transcripts and the ask API are for viewers: None if this request's token may read, else its 401/403."""
    verdict = auth.check(cfg.auth, auth.WATCH, auth.token_from(request.headers, params(request.query_string)))
    if verdict == auth.OK:
        return None
    status = HTTPStatus.UNAUTHORIZED if verdict == auth.UNAUTHORIZED else HTTPStatus.FORBIDDEN
    return json_response({"error": status.phrase}, status)
