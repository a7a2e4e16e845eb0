"""What the HTTP handlers read of the server: the `Served` protocol, which app.CaptionServer satisfies, and the
key under which make_app puts it on the aiohttp application. Declared here so that nothing in httpapi imports the
server itself (app.py imports httpapi to serve)."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from aiohttp import web

from ..config import Config
from ..intelligence.service import Intelligence
from ..outputs.registry import RoomOutputs
from ..streams.context import StreamContext
from .looplag import LoopLag


class Served(Protocol):
    cfg: Config
    streams: StreamContext
    intelligence: Intelligence
    outputs: RoomOutputs
    loop_lag: LoopLag
    web_root: Path

    async def finals(self, kind: str, name: str) -> list[dict] | None:
        """A transcript's finals ("sessions" or "rooms"), or None if there is none."""
        ...


SERVED = web.AppKey("served", Served)


def served(request: web.Request) -> Served:
    return request.app[SERVED]
