"""Rooms over real websockets: speakers publish, viewers on /v1/watch get finals in order and a backlog."""
import asyncio
import json
from urllib.parse import quote

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client.stream import stream_audio

from .support.audio import RATE, join_with_silence, load_16k, transcript, wer
from .support.servers import watch_url


async def viewer_in(url: str, into: list, until_finals: int, timeout: float = 120) -> asyncio.Task:
    """A viewer that keeps what it is sent until `until_finals` live finals have come; returns its task once the
    server has let it into the room (its `watching` came)."""
    joined = asyncio.Event()

    async def collect() -> None:
        async with connect(url) as ws:
            async for raw in ws:
                into.append(json.loads(raw))
                joined.set()  # the first message: `watching`
                if sum(m["type"] == "final" and not m.get("backlog") for m in into) >= until_finals:
                    return

    task, waiter = asyncio.create_task(asyncio.wait_for(collect(), timeout)), asyncio.create_task(joined.wait())
    await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    assert joined.is_set(), task.exception() if task.done() else "no `watching` in 30 s"
    return task


async def test_viewer_gets_the_speakers_finals_in_order_and_a_late_viewer_gets_the_backlog(cpu_url):
    audio, _ = join_with_silence(["ldc93s1.wav", "uberi_one_two_three.wav", "lj050_0131.wav"], [1.0, 1.0, 1.0])
    seen: list[dict] = []
    viewer = await viewer_in(watch_url(cpu_url, "standup"), seen, until_finals=3)  # in before the speaker starts
    spoken = await stream_audio(audio, RATE, cpu_url, speed=2.0,
                                start_extra={"room": "standup", "speaker": "Ada"})
    await viewer
    assert spoken.ready["room"] == "standup" and spoken.ready["speaker"] == "Ada"
    assert seen[0]["type"] == "watching" and seen[0]["room"] == "standup"
    finals = [m for m in seen if m["type"] == "final"]
    assert [f["segment"] for f in finals] == [0, 1, 2]
    assert [f["text"] for f in finals] == [f["text"] for f in spoken.finals]
    assert all(m["speaker"] == "Ada" for m in seen if m["type"] in ("partial", "final"))
    assert any(m["type"] == "partial" for m in seen)

    # A viewer joining after the speaker left gets the room's recent finals, flagged as backlog.
    async with connect(watch_url(cpu_url, "standup")) as late:
        hello = json.loads(await late.recv())
        backlog = [json.loads(await late.recv()) for _ in range(3)]
    assert hello["type"] == "watching"
    assert [m["text"] for m in backlog] == [f["text"] for f in spoken.finals]
    assert all(m["backlog"] and m["type"] == "final" for m in backlog)


async def test_two_speakers_in_one_room_are_told_apart_and_the_room_outlives_a_reconnect(cpu_url):
    room = "panel"
    seen: list[dict] = []
    viewer = await viewer_in(watch_url(cpu_url, room), seen, until_finals=3)
    jfk, ldc = load_16k("jfk_16k.wav")[:int(8.2 * RATE)], load_16k("ldc93s1.wav")
    # Bob speaks through `?room=` on the URL; Ada through `start`, then reconnects and speaks again.
    bob, ada = await asyncio.gather(
        stream_audio(ldc, RATE, cpu_url.replace("/v1/listen", f"/v1/listen?room={room}"), speed=2.0,
                     start_extra={"speaker": "Bob"}),
        stream_audio(jfk, RATE, cpu_url, speed=2.0, start_extra={"room": room, "speaker": "Ada"}))
    ada2 = await stream_audio(ldc, RATE, cpu_url, speed=4.0, start_extra={"room": room, "speaker": "Ada"})
    await viewer
    finals = [m for m in seen if m["type"] == "final"]
    by = {s: " ".join(f["text"] for f in finals if f["speaker"] == s) for s in ("Ada", "Bob")}
    assert len({f["session"] for f in finals if f["speaker"] == "Ada"}) == 2  # two connections, one speaker
    assert wer(transcript("ldc93s1.wav"), by["Bob"]) < 0.9
    assert "fellow" in by["Ada"] and ada2.finals[0]["text"] in by["Ada"]
    for session in {f["session"] for f in finals}:
        assert [f["segment"] for f in finals if f["session"] == session] == list(
            range(sum(f["session"] == session for f in finals)))
    assert bob.ready["room"] == ada.ready["room"] == room


@pytest.mark.parametrize("room", ["", "has space", "x" * 65, "../etc", "-lead"])
async def test_bad_room_names_are_refused(cpu_url, room):
    async with connect(cpu_url.replace("/v1/listen", "/v1/watch") + ("?room=" + quote(room) if room else "")) as ws:
        err = json.loads(await ws.recv())
        assert err["type"] == "error" and err["code"] == "bad_room"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008
    async with connect(cpu_url) as ws:
        await ws.send(json.dumps({"type": "start", "room": room}))
        assert json.loads(await ws.recv())["code"] == "bad_room"


async def test_viewer_may_ping(cpu_url):
    async with connect(watch_url(cpu_url, "pings")) as ws:
        assert json.loads(await ws.recv())["type"] == "watching"
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"
        await ws.send(json.dumps({"type": "start"}))
        assert json.loads(await ws.recv())["code"] == "bad_message"
