"""A room's caption outputs over HTTP (docs/protocol.md, "Captions into Zoom, YouTube, Teams and webhooks"):

    POST   /v1/rooms/NAME/outputs      {"kind": "zoom", "url": URL, "lang": "en-US"}  -> 201, the output
    GET    /v1/rooms/NAME/outputs                                                   -> each output's state
    DELETE /v1/rooms/NAME/outputs/ID                                                -> 204

Speaker tokens only: the server will make requests to the URL given, and the URL is a credential of the meeting.
A viewer token gets 403 even where speaking is open to all. An output is described by its id, kind, host, state
and counts: never by its URL, in answers, logs or metrics.
"""
from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web

from ..core.requests import ROOM_NAME
from ..outputs.contracts import KINDS
from ..outputs.guard import RefusedURL
from ..outputs.registry import TooMany
from ..outputs.shared import SharedUnavailable
from ..streams import auth
from ..streams.connection import params
from . import responses as http
from .served import served

MAX_URL = 2048
MAX_SECRET = 256


async def add_output(request: web.Request) -> web.Response:
    refused = _refusal(request)
    if refused is not None:
        return refused
    try:
        body = json.loads(await request.text() or "null")
    except ValueError:
        return http.error(HTTPStatus.BAD_REQUEST, "the body must be JSON: {\"kind\": ..., \"url\": ...}")
    if not isinstance(body, dict):
        return http.error(HTTPStatus.BAD_REQUEST, "the body must be a JSON object: {\"kind\": ..., \"url\": ...}")
    kind, url, lang, secret = body.get("kind"), body.get("url"), body.get("lang", "en-US"), body.get("secret")
    if kind not in KINDS:
        return http.error(HTTPStatus.BAD_REQUEST, f"kind must be one of {', '.join(KINDS)}")
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL:
        return http.error(HTTPStatus.BAD_REQUEST, f"url must be a string of 1 to {MAX_URL} characters")
    if not isinstance(lang, str) or not 0 < len(lang) <= 35:
        return http.error(HTTPStatus.BAD_REQUEST, "lang must be a language tag such as en-US")
    if secret is not None and (not isinstance(secret, str) or not 0 < len(secret) <= MAX_SECRET):
        return http.error(HTTPStatus.BAD_REQUEST, f"secret must be a string of 1 to {MAX_SECRET} characters")
    try:
        output = await served(request).outputs.add(request.match_info["room"], kind, url, lang, secret)
    except (RefusedURL, ValueError) as exc:  # the reason names the URL only redacted
        return http.error(HTTPStatus.BAD_REQUEST, str(exc))
    except TooMany as exc:
        return http.error(HTTPStatus.CONFLICT, str(exc))
    except SharedUnavailable as exc:  # replicas: Redis did not answer; nothing was made
        return http.error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), **{"Retry-After": "2"})
    return http.json_response(output, HTTPStatus.CREATED)


async def list_outputs(request: web.Request) -> web.Response:
    refused = _refusal(request)
    if refused is not None:
        return refused
    room = request.match_info["room"]
    return http.json_response({"room": room, "outputs": served(request).outputs.list(room)})


async def remove_output(request: web.Request) -> web.Response:
    refused = _refusal(request)
    if refused is not None:
        return refused
    try:
        removed = await served(request).outputs.remove(request.match_info["room"], request.match_info["output"])
    except SharedUnavailable as exc:
        return http.error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), **{"Retry-After": "2"})
    if not removed:
        return http.error(HTTPStatus.NOT_FOUND, "no such output in this room")
    return web.Response(status=HTTPStatus.NO_CONTENT.value)


def _refusal(request: web.Request) -> web.Response | None:
    """401/403 unless the request carries a speaker token (or speaking is open and it is no viewer's); 400 for a
    bad room name."""
    cfg = served(request).cfg.auth
    token = auth.token_from(request.headers, params(request.query_string))
    verdict = auth.check(cfg, auth.SPEAK, token)
    if verdict == auth.OK and auth.viewer_only(cfg, token):
        verdict = auth.FORBIDDEN  # a viewer may watch a room, never send its captions somewhere
    if verdict != auth.OK:
        status = HTTPStatus.UNAUTHORIZED if verdict == auth.UNAUTHORIZED else HTTPStatus.FORBIDDEN
        return http.error(status, "outputs need a speaker token")
    if not ROOM_NAME.fullmatch(request.match_info["room"]):
        return http.error(HTTPStatus.BAD_REQUEST, "bad room name")
    return None
