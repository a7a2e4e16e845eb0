"""`/v1/listen`: our own protocol (v1, docs/protocol.md) over one websocket, adapted onto a Session.

Text frames are JSON messages (start, finalize, stop, ping, rename: protocol.py parses them), binary frames are audio;
the session's events go out as JSON (protocol.encode). A v1 session can be resumed after a drop. Everything
about the connection itself (limits, drops, resuming) is the shared policy's (policy.py).
"""
from __future__ import annotations

from ..core.errors import NOT_STARTED, ProtocolError
from ..core.events import Event
from ..core.requests import Start
from . import protocol as P
from .policy import Adapter


class V1(Adapter):
    resumable = True

    async def on_text(self, text: str) -> None:
        """One text frame. Protocol errors are reported to the client and the connection goes on."""
        session = self.stream.session
        try:
            msg = P.parse_client_text(text)
            if isinstance(msg, P.Ping):
                await self.stream.send(P.pong())
            elif isinstance(msg, Start):
                await self.stream.start(msg)
            elif session is None:
                raise ProtocolError(NOT_STARTED, 'send {"type":"start",...} first')
            elif isinstance(msg, P.Finalize):
                session.finalize()
            elif isinstance(msg, P.Stop):
                await session.stop()
            elif isinstance(msg, P.Rename):
                await session.rename(msg.speaker, msg.name)
        except ProtocolError as exc:
            await self.stream.send(P.error(exc.code, exc.message))

    async def on_audio(self, data: bytes) -> None:
        try:
            if self.stream.session is None:
                raise ProtocolError(NOT_STARTED, 'audio before {"type":"start",...}; frame ignored')
            self.stream.session.audio(data)
        except ProtocolError as exc:
            await self.stream.send(P.error(exc.code, exc.message))

    def encode(self, event: Event) -> list[str]:
        return [P.dump(P.encode(event))]

    def error_frame(self, code: str, message: str) -> str:
        return P.error(code, message)
