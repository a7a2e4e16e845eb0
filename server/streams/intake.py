"""Where a websocket connection comes in: which endpoint and protocol it speaks, whether it may go on, and the
handler it is given.

- `/v1/listen`: protocol v1 (v1.py), or Deepgram's live protocol (deepgram.py) when the query string has any of
  Deepgram's own parameters (DEEPGRAM_PARAMS); v1's only parameters are `room` and `token`, so a v1 client is
  never read as Deepgram.
- `/v1/realtime`: OpenAI's Realtime transcription (realtime.py).
- `/v1/watch`: a room's viewer (watch.py).

Deepgram's and OpenAI's clients expect a bad key refused at the handshake, with their own HTTP answer
(`handshake_refusal`); everything else is refused after it, in the client's own protocol (`accept`).
"""
from __future__ import annotations

from collections.abc import Callable

from ..config import AuthConfig
from . import auth, deepgram, realtime
from . import protocol as P
from .admission import admit, client_ip
from .connection import Connection, Refusal, params
from .context import StreamContext
from .policy import Adapter, Stream
from .v1 import V1
from .watch import watch

LISTEN_PATH, WATCH_PATH, REALTIME_PATH = "/v1/listen", "/v1/watch", "/v1/realtime"
STREAM_PATHS = (LISTEN_PATH, WATCH_PATH, REALTIME_PATH)


def adapter_for(path: str, query: dict[str, str]) -> Callable[[Stream], Adapter]:
    if path == REALTIME_PATH:
        return realtime.Realtime
    if deepgram.asked_for(query):
        return deepgram.Deepgram
    return V1


def handshake_refusal(cfg: AuthConfig, path: str, headers, query_string: str) -> Refusal | None:
    """An HTTP answer instead of the websocket handshake, for the protocols whose clients expect a bad key or
    query refused there; None: go on (protocol v1 refuses after the handshake, with an error and 4401/4403)."""
    if path == REALTIME_PATH:
        return realtime.handshake_refusal(cfg, headers, query_string)
    if path == LISTEN_PATH and deepgram.asked_for(params(query_string)):
        return deepgram.handshake_refusal(cfg, headers, query_string)
    return None


async def accept(ctx: StreamContext, ws: Connection) -> None:
    """One websocket connection, once upgraded: admitted or refused, then streamed or watched."""
    query = ws.params
    action = auth.WATCH if ws.path == WATCH_PATH else auth.SPEAK
    peer = ws.remote_address[0] if ws.remote_address else "?"
    ip = client_ip(peer, ws.headers, ctx.cfg.server.trusted_proxies)
    refusal = admit(ctx.cfg, ctx.engine, ctx.live, ip, action, auth.token_from(ws.headers, query))
    stream = None if action == auth.WATCH else Stream(ctx, ws, adapter_for(ws.path, query), query.get("room"))
    if refusal:
        close_code, code, message = refusal
        # in the client's own protocol: a Deepgram or OpenAI client reads v1 errors as unknown messages
        await ws.send(stream.adapter.error_frame(code, message) if stream else P.error(code, message))
        await ws.close(close_code, code)
        return
    ctx.live.connected(ip)
    try:
        if stream is None:
            await watch(ctx, ws, query.get("room"))
        else:
            await stream.run()
    finally:
        ctx.live.disconnected(ip)
