"""`/v1/watch?room=NAME`: a viewer gets the room's backlog of finals, then its live partials and finals (with
replicas: of the room's speakers on every replica)."""
from __future__ import annotations

import asyncio

from ..core.errors import BAD_MESSAGE, ProtocolError
from ..core.events import Caption
from ..core.requests import check_room
from ..delivery.rooms import Viewer
from . import protocol as P
from .connection import Connection, ConnectionClosed
from .context import StreamContext


async def watch(ctx: StreamContext, ws: Connection, room_name: str | None) -> None:
    try:
        room = ctx.rooms.get(check_room(room_name))
    except ProtocolError as exc:
        await ws.send(P.error(exc.code, exc.message))
        await ws.close(1008, "bad room name")
        return
    speakers = set(room.speakers.values())
    if ctx.cluster is not None:
        # The room's subscription and its backlog from Redis, then every replica's speakers (bounded; Redis
        # away: this replica's own only).
        await ctx.cluster.open_room(room.name)
        speakers |= set(await ctx.cluster.speakers(room.name) or ())
    await ws.send(P.dump({"type": "watching", "protocol": P.PROTOCOL_VERSION, "room": room.name,
                          "speakers": sorted(speakers)}))
    async def send(caption: Caption, backlog: bool) -> None:
        await ws.send(P.encode_viewer(caption, backlog))

    viewer = Viewer(send)
    room.join(viewer)  # the backlog and every later caption, with no await in between: none can fall in a gap
    ctx.live.add_viewer(ws)
    sender = asyncio.create_task(viewer.run())
    receiver = asyncio.create_task(_viewer_input(ws))
    too_slow = asyncio.create_task(viewer.too_slow.wait())
    try:
        await asyncio.wait([sender, receiver, too_slow], return_when=asyncio.FIRST_COMPLETED)
        if too_slow.done():
            await ws.close(1008, "viewer too slow: fell too far behind")
    finally:
        room.viewers.discard(viewer)
        ctx.live.remove_viewer(ws)
        for task in (sender, receiver, too_slow):
            task.cancel()
        await asyncio.gather(sender, receiver, too_slow, return_exceptions=True)


async def _viewer_input(ws: Connection) -> None:
    """Viewers only listen; they may ping."""
    try:
        async for message in ws:
            try:
                msg = P.parse_client_text(message) if isinstance(message, str) else None
            except ProtocolError as exc:
                await ws.send(P.error(exc.code, exc.message))
                continue
            if isinstance(msg, P.Ping):
                await ws.send(P.pong())
            else:
                await ws.send(P.error(BAD_MESSAGE, "viewers may only send ping"))
    except ConnectionClosed:
        pass
