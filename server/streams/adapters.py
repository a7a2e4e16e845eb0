"""Which adapter speaks to a stream connection: protocol v1 (listen.py), Deepgram's live protocol (deepgram.py)
or OpenAI's Realtime transcription (realtime.py). Each is a Listener subclass: the same session core, limits,
rooms and transcripts underneath; only the frames differ (docs/protocol.md).

The rule on `/v1/listen`: Deepgram when the query string has any of Deepgram's own parameters (DEEPGRAM_PARAMS),
else protocol v1, whose only parameters are `room` and `token`. A v1 client never sends those names, so it can
never be read as Deepgram.
"""
from __future__ import annotations

from aiohttp import web

from ..config import AuthConfig
from .v1 import Listener

LISTEN_PATH, REALTIME_PATH = "/v1/listen", "/v1/realtime"


def adapter_for(path: str, query: dict) -> type[Listener]:
    from . import deepgram, realtime  # here: they import listen.py, which must not import them back

    if path == REALTIME_PATH:
        return realtime.RealtimeListener
    if deepgram.asked_for(query):
        return deepgram.DeepgramListener
    return Listener


def handshake_refusal(cfg: AuthConfig, path: str, query: dict, request: web.Request) -> web.Response | None:
    """An HTTP answer instead of the websocket handshake, for the adapters whose clients expect a bad key refused
    there; None: go on (protocol v1 refuses after the handshake, with an error message and close 4401/4403)."""
    from . import deepgram, realtime

    if path == REALTIME_PATH:
        return realtime.handshake_refusal(cfg, query, request)
    if path == LISTEN_PATH and deepgram.asked_for(query):
        return deepgram.handshake_refusal(cfg, query, request)
    return None
