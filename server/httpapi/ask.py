"""The ask API over HTTP (docs/protocol.md, "Ask the meeting"):

    POST /v1/rooms/NAME/ask          {"question": "..."}   -> the answer, with the lines it cites
    POST /v1/transcripts/ID/ask      {"question": "..."}   -> the same over one session's transcript
    GET  /v1/rooms/NAME/summary                            -> the rolling summary

Viewer tokens apply (as for transcripts). An answer streams as Server-Sent Events when the request says
`Accept: text/event-stream` (or `"stream": true`): `token` events while a generative answer is decoded, then one
`answer` event with the whole JSON, or one `error` event.
"""
from __future__ import annotations

import json
import re
from http import HTTPStatus

from aiohttp import web

from ..core.requests import ROOM_NAME, SESSION_ID
from ..intelligence.service import Busy, Unavailable
from . import responses as http
from .served import Served, served


async def ask_room(request: web.Request) -> web.StreamResponse:
    return await _ask(request, "rooms", request.match_info["room"], ROOM_NAME)


async def ask_transcript(request: web.Request) -> web.StreamResponse:
    return await _ask(request, "sessions", request.match_info["session"], SESSION_ID)


async def room_summary(request: web.Request) -> web.Response:
    server = served(request)
    lines, refused = await _transcript(server, request, "rooms", request.match_info["room"], ROOM_NAME)
    if refused is not None:
        return refused
    try:
        summary = await server.intelligence.summary("rooms/" + request.match_info["room"], lines)
    except Busy as exc:
        return _busy(exc)
    except Unavailable as exc:
        return http.error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
    return http.json_response({"room": request.match_info["room"], "mode": summary.mode, "summary": summary.text,
                               "citations": summary.citations, "finals": summary.finals,
                               "updated_at": summary.updated_at, "model": server.intelligence.name})


async def _transcript(server: Served, request: web.Request, kind: str, name: str, pattern: re.Pattern):
    """(the transcript's finals, None) or (None, the refusal: 401/403, 400 bad name, 404 nothing said yet)."""
    if (refusal := http.viewer_refusal(server.cfg, request)) is not None:
        return None, refusal
    if not pattern.fullmatch(name):
        return None, http.error(HTTPStatus.BAD_REQUEST, f"not a valid {kind[:-1]} name: {name[:80]!r}")
    lines = await server.finals(kind, name)
    if not lines:
        return None, http.error(HTTPStatus.NOT_FOUND, f"no transcript for {kind[:-1]} {name!r} (nothing said yet)")
    return lines, None


def _busy(exc: Busy) -> web.Response:
    return http.error(HTTPStatus.TOO_MANY_REQUESTS, str(exc), **{"Retry-After": str(exc.retry_after)})


async def _question(request: web.Request, limit: int) -> tuple[str, bool]:
    """The question and whether to stream; raises ValueError with what is wrong with the body."""
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        raise ValueError('the body must be JSON: {"question": "..."}') from None
    if not isinstance(body, dict) or not isinstance(body.get("question"), str) or not body["question"].strip():
        raise ValueError('the body must be {"question": "..."} with a question')
    question = " ".join(body["question"].split())
    if len(question) > limit:
        raise ValueError(f"the question is longer than {limit} characters")
    stream = body.get("stream", False) is True or "text/event-stream" in request.headers.get("Accept", "")
    return question, stream


async def _ask(request: web.Request, kind: str, name: str, pattern: re.Pattern) -> web.StreamResponse:
    server = served(request)
    lines, refused = await _transcript(server, request, kind, name, pattern)
    if refused is not None:
        return refused
    try:
        question, stream = await _question(request, server.cfg.intelligence.max_question_chars)
    except ValueError as exc:
        return http.error(HTTPStatus.BAD_REQUEST, str(exc))
    except web.HTTPRequestEntityTooLarge:
        return http.error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the body is too large for a question")
    ask = server.intelligence.ask
    key = f"{kind}/{name}"
    try:
        if not stream:
            return http.json_response(await ask(key, question, lines))
        # Checked before the 200 goes out, so that a refused stream is still a plain 429 or 503.
        server.intelligence.check()
    except Busy as exc:
        return _busy(exc)
    except Unavailable as exc:
        return http.error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})  # nginx: pass events on as they come
    await response.prepare(request)

    async def event(name: str, data: dict) -> None:
        await response.write(f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode())

    try:
        answer = await ask(key, question, lines, on_token=lambda text: event("token", {"text": text}))
        await event("answer", answer)
    except Busy as exc:
        await event("error", {"error": "too_many_requests", "message": str(exc), "retry_after": exc.retry_after})
    except Unavailable as exc:
        await event("error", {"error": "service_unavailable", "message": str(exc)})
    except ConnectionResetError:
        pass  # the client went away; nothing to tell it
    await response.write_eof()
    return response
