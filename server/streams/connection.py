"""One websocket connection, as the stream and viewer handlers see it: frames in and out, close, abort.

The handlers (policy.py and the protocol adapters, watch.py) use only this small interface, not the HTTP stack's own
websocket object, so that the session core does not depend on the web library (aiohttp today: routes.py says
why) and the policy around a connection stays in the handlers.

A connection that is gone raises ConnectionClosed from recv() and send(), whatever the way it went (a close
frame, a reset, an abort, a frame over the size limit: aiohttp closes those with 1009 itself).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs

from aiohttp import WSMsgType, web


def params(query_string: str) -> dict[str, str]:
    """A URL's query parameters, the first value of each (`room`, `token`, ...)."""
    return {k: v[0] for k, v in parse_qs(query_string).items()}


@dataclass(frozen=True)
class Refusal:
    """An HTTP answer instead of the websocket upgrade, for clients that expect a refusal at the handshake
    (Deepgram's and OpenAI's SDKs): built by their adapters, sent by httpapi/routes.py."""

    status: HTTPStatus
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class ConnectionClosed(Exception):
    """The websocket is closed (or closing): nothing more can be read or written."""

    def __init__(self, code: int | None = None):
        super().__init__(f"connection closed ({code})" if code else "connection closed")
        self.code = code


class Connection:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse):
        self.request, self._ws = request, ws
        self._sending = asyncio.Lock()  # a frame is written whole before the next (a room's sender and a pong)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.remote_address: tuple | None = tuple(peer) if peer else None

    @property
    def headers(self):
        return self.request.headers

    @property
    def path(self) -> str:
        """The path as the client sent it (not percent-decoded)."""
        return self.request.raw_path.partition("?")[0]

    @property
    def query_string(self) -> str:
        return self.request.raw_path.partition("?")[2]

    @property
    def params(self) -> dict[str, str]:
        return params(self.query_string)

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def recv(self) -> str | bytes:
        msg = await self._ws.receive()
        if msg.type == WSMsgType.TEXT or msg.type == WSMsgType.BINARY:
            return msg.data
        # CLOSE (answered by aiohttp), CLOSING, CLOSED, ERROR (e.g. a frame over max_msg_size, closed with 1009)
        raise ConnectionClosed(self._ws.close_code)

    def __aiter__(self):
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, frame: str | bytes) -> None:
        if self._ws.closed:
            raise ConnectionClosed(self._ws.close_code)
        try:
            async with self._sending:
                if isinstance(frame, str):
                    await self._ws.send_str(frame)
                else:
                    await self._ws.send_bytes(frame)
        except (ConnectionResetError, RuntimeError) as exc:  # aiohttp: "Cannot write to closing transport"
            raise ConnectionClosed(self._ws.close_code) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Sends a close frame and waits (aiohttp bounds it) for the client's; a no-op on a closed connection."""
        try:
            await self._ws.close(code=code, message=reason.encode()[:123])  # a close frame's reason: <= 123 bytes
        except (ConnectionResetError, RuntimeError):
            pass

    async def wait_closed(self) -> None:
        """Until the connection is closed: reads (and drops) anything the client still sends."""
        while not self._ws.closed:
            try:
                await self.recv()
            except ConnectionClosed:
                return

    def abort(self) -> None:
        """Drops the TCP connection at once (no close handshake): the handler sees ConnectionClosed."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()
