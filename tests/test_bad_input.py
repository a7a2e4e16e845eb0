"""Bad input: each case gets its documented error or close code (docs/protocol.md), and a good session
streaming at the same time on the same server gets every final unchanged."""
import asyncio
import json
import math
import socket
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client.stream import encode, stream_audio

from .support.audio import RATE, load_16k
from .support.servers import health, http_base, run_server
from .support.v1 import recv
from .support.waits import until

START = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1}
F32 = {**START, "encoding": "pcm_f32le"}
SILENCE = encode(np.zeros(800, np.float32), "pcm_s16le")


def start(**fields) -> str:
    return json.dumps({**START, **fields})


def f32(values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


# (case, start message sent first or None, the bad frame, the error code it must get; the connection stays usable)
ERROR_CASES = [
    ("invalid json", None, "{not json", "bad_json"),
    ("truncated json", None, '{"type": "start"', "bad_json"),
    ("deeply nested json", None, "[" * 5000 + "]" * 5000, "bad_json"),
    ("json null", None, "null", "bad_message"),
    ("json array", None, "[1, 2]", "bad_message"),
    ("json string", None, '"start"', "bad_message"),
    ("json number", None, "42", "bad_message"),
    ("no type", None, "{}", "bad_message"),
    ("type not a string", None, '{"type": 5}', "bad_message"),
    ("unknown type", None, '{"type": "begin"}', "unknown_type"),
    ("huge text frame", None, json.dumps({"type": "ping", "pad": "x" * 200_000}), "bad_message"),
    ("audio before start", None, SILENCE, "not_started"),
    ("finalize before start", None, '{"type": "finalize"}', "not_started"),
    ("stop before start", None, '{"type": "stop"}', "not_started"),
    ("rate 12345", None, start(sample_rate=12345), "unsupported_sample_rate"),
    ("rate 0", None, start(sample_rate=0), "unsupported_sample_rate"),
    ("rate negative", None, start(sample_rate=-16000), "unsupported_sample_rate"),
    ("rate as string", None, start(sample_rate="16000"), "unsupported_sample_rate"),
    ("rate fractional", None, start(sample_rate=16000.5), "unsupported_sample_rate"),
    ("rate huge", None, start(sample_rate=10**12), "unsupported_sample_rate"),
    ("rate null", None, start(sample_rate=None), "unsupported_sample_rate"),
    ("rate boolean", None, start(sample_rate=True), "unsupported_sample_rate"),
    ("encoding mp3", None, start(encoding="mp3"), "unsupported_encoding"),
    ("encoding upper case", None, start(encoding="PCM_S16LE"), "unsupported_encoding"),
    ("encoding null", None, start(encoding=None), "unsupported_encoding"),
    ("stereo", None, start(channels=2), "unsupported_channels"),
    ("zero channels", None, start(channels=0), "unsupported_channels"),
    ("channels as string", None, start(channels="1"), "unsupported_channels"),
    ("room with slash", None, start(room="../etc"), "bad_room"),
    ("room too long", None, start(room="r" * 65), "bad_room"),
    ("room not a string", None, start(room=7), "bad_room"),
    ("speaker too long", None, start(speaker="s" * 65), "bad_message"),
    ("speaker not a string", None, start(speaker=5), "bad_message"),
    ("second start", START, start(), "already_started"),
    ("sample rate change mid-stream", START, start(sample_rate=44100), "already_started"),
    ("odd byte count", START, b"\x00" * 3, "bad_audio"),
    ("zero-length frame", START, b"", "bad_audio"),
    ("frame over 1 s", START, b"\x00" * (2 * 16001), "bad_audio"),
    ("f32 NaN", F32, f32([0.1, math.nan, 0.2] * 100), "bad_audio"),
    ("f32 +Inf", F32, f32([0.1, math.inf] * 100), "bad_audio"),
    ("f32 -Inf", F32, f32([-math.inf] * 160), "bad_audio"),
    ("f32 misaligned", F32, b"\x00" * 6, "bad_audio"),
]


async def error_case(url, first, bad, code):
    async with connect(url, max_size=None) as ws:
        if first is not None:
            await ws.send(json.dumps(first))
            assert (await recv(ws))["type"] == "ready"
        await ws.send(bad)
        err = await recv(ws)
        assert err["type"] == "error" and err["code"] == code and err["message"], err
        await ws.send('{"type": "ping"}')  # still usable
        assert (await recv(ws))["type"] == "pong"


async def close_case(url, first, bad, close_code):
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps(first))
        assert (await recv(ws))["type"] == "ready"
        with pytest.raises(ConnectionClosed):
            await ws.send(bad)
            await recv(ws)
    assert ws.close_code == close_code


async def flood_of_tiny_frames(url):
    """2,000 frames of 2 bytes: read at the frame-rate budget, told once, nothing dropped, stop still works."""
    async with connect(url) as ws:
        await ws.send(json.dumps(START))
        assert (await recv(ws))["type"] == "ready"
        for _ in range(2000):
            await ws.send(b"\x00\x00")
        await ws.send('{"type": "stop"}')
        messages = [await recv(ws) for _ in range(2)]
        assert messages[0]["code"] == "rate_limited" and messages[1]["type"] == "end"
    assert ws.close_code == 1000


async def far_faster_than_real_time(url):
    """90 s of audio sent at once: past the burst it is read at 20x real time, and the client is told."""
    async with connect(url) as ws:
        await ws.send(json.dumps(START))
        assert (await recv(ws))["type"] == "ready"
        second = encode(np.zeros(RATE, np.float32), "pcm_s16le")
        sender = asyncio.gather(*[ws.send(second) for _ in range(90)])
        assert (await recv(ws))["code"] == "rate_limited"
        await sender
        await ws.send('{"type": "stop"}')
        assert (await recv(ws, timeout=30))["type"] == "end"


async def idle_after_start(url):
    """A half-open stream (started, then silent): flushed, told why, closed with 4408."""
    async with connect(url) as ws:
        await ws.send(json.dumps(START))
        assert (await recv(ws))["type"] == "ready"
        assert (await recv(ws, timeout=10))["code"] == "idle_timeout"
        assert (await recv(ws))["reason"] == "idle_timeout"
        with pytest.raises(ConnectionClosed):
            await recv(ws)
    assert ws.close_code == 4408


async def never_completes_handshake(url):
    """A TCP connection that never sends its HTTP request is closed by the server."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(host, int(port))
    t0 = loop.time()
    assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # EOF: the server hung up
    assert loop.time() - t0 < 20  # at its 2 s handshake timeout, bounded 10x (the machine may be busy)
    writer.close()


async def never_reads(url):
    """A client that sends but never reads: once the server cannot write to it for send_timeout_s it is dropped,
    and the server forgets its session."""
    before = health(url)["sessions"]
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    ws = await connect(url, sock=sock, max_queue=1)
    await ws.send(json.dumps(START))
    for _ in range(3000):  # each answered with a ~150-byte bad_audio error it will never read
        await asyncio.wait_for(ws.send(b"\x00" * 3), 10)
    await until(lambda: health(url)["sessions"] <= before, timeout=30, what="the server to drop the session")
    ws.transport.abort()


async def viewer_sends_audio(url):
    async with connect(url.replace("/v1/listen", "/v1/watch?room=corpus")) as ws:
        assert (await recv(ws))["type"] == "watching"
        await ws.send(SILENCE)
        assert (await recv(ws))["code"] == "bad_message"


async def viewer_without_room(url):
    async with connect(url.replace("/v1/listen", "/v1/watch")) as ws:
        assert (await recv(ws))["code"] == "bad_room"
        with pytest.raises(ConnectionClosed):
            await recv(ws)
    assert ws.close_code == 1008


def http_status(base: str, path: str, method: str = "GET") -> int:
    try:
        return urllib.request.urlopen(urllib.request.Request(base + path, method=method), timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


HTTP_CASES = [
    ("/../../etc/passwd", 404), ("/%2e%2e/%2e%2e/etc/passwd", 404), ("/..%2f..%2fserver%2fconfig.py", 404),
    ("/css/../../server/config.py", 404), ("/%00", 404), ("/index.html%00.png", 404), ("/nonexistent.js", 404),
    ("/" + "a" * 9000, 414), ("/v1/listen", 426), ("/v1/transcripts/../../etc/passwd", 404),
    ("/v1/transcripts/zzzzzzzzzzzz.srt", 404), ("/room/a/b", 404),
]


@pytest.fixture(scope="module")
def strict_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strict")
    overrides = ["limits.idle_timeout_s=3", "limits.send_timeout_s=2", "limits.handshake_timeout_s=2",
                 "limits.max_frames_per_s=200", f"server.data_dir={tmp / 'data'}"]
    args = [a for kv in overrides for a in ("--set", kv)]
    with run_server("--backend", "whisper", *args, log_path=tmp / "server.log") as url:
        yield url


async def test_bad_input_corpus_harms_no_one(strict_url):
    base = http_base(strict_url)
    good_audio = load_16k("jfk_16k.wav")
    baseline = await stream_audio(good_audio, RATE, strict_url, speed=0)

    good = asyncio.create_task(stream_audio(good_audio, RATE, strict_url, speed=1.0))
    for _, first, bad, code in ERROR_CASES:
        await error_case(strict_url, first, bad, code)
    await close_case(strict_url, START, "x" * ((1 << 20) + 10), 1009)
    await close_case(strict_url, START, b"\x00" * (10 << 20), 1009)
    # the slow cases (each waits out a limit) at once, beside the good stream; never_reads counts the server's
    # sessions, so it runs alone after them
    await asyncio.gather(*[special(strict_url) for special in (
        flood_of_tiny_frames, far_faster_than_real_time, idle_after_start, never_completes_handshake,
        viewer_sends_audio, viewer_without_room)])
    await never_reads(strict_url)
    for path, status in HTTP_CASES:
        assert await asyncio.to_thread(http_status, base, path) == status, path
    assert await asyncio.to_thread(http_status, base, "/", "POST") == 405

    result = await good
    fields = lambda r: [(f["segment"], f["start"], f["end"], f["text"]) for f in r.finals]  # noqa: E731
    assert fields(result) == fields(baseline) and result.messages[-1]["type"] == "end"
    assert not [m for m in result.messages if m["type"] == "error"]
    assert health(strict_url)["status"] == "ok"
    # and none of the bad connections left a session behind
    await until(lambda: health(strict_url)["sessions"] == 0, timeout=30, what="every session to end")


async def test_connections_per_address_are_capped(tmp_path):
    with run_server("--backend", "whisper", "--set", "limits.max_connections_per_ip=3",
                    "--set", f"server.data_dir={tmp_path}", log_path=tmp_path / "server.log") as url:
        held = [await connect(url) for _ in range(3)]
        async with connect(url) as extra:
            err = await recv(extra)
            assert err["code"] == "too_many_connections"
            with pytest.raises(ConnectionClosed):
                await recv(extra)
        assert extra.close_code == 1013
        await held[0].close()

        async def admitted() -> bool:
            """A stream starts; False while the server still counts the closed connection (it refuses)."""
            try:
                async with connect(url) as again:
                    await again.send(json.dumps(START))
                    reply = await recv(again)
            except ConnectionClosed:
                return False
            assert reply["type"] == "ready" or reply["code"] == "too_many_connections", reply
            return reply["type"] == "ready"

        await until(admitted, timeout=30, what="the freed slot")  # a freed slot is usable again
        for ws in held[1:]:
            await ws.close()


async def test_sessions_have_a_maximum_length(tmp_path):
    with run_server("--backend", "whisper", "--set", "limits.max_session_s=3",
                    "--set", f"server.data_dir={tmp_path}", log_path=tmp_path / "server.log") as url:
        audio = load_16k("jfk_16k.wav")
        async with connect(url) as ws:
            await ws.send(json.dumps(START))
            assert (await recv(ws))["type"] == "ready"
            messages = []

            async def read():
                try:
                    async for raw in ws:
                        messages.append(json.loads(raw))
                except ConnectionClosed:
                    pass

            reader = asyncio.create_task(read())
            with pytest.raises(ConnectionClosed):
                for i in range(0, len(audio), 1600):  # real time, 100 ms frames
                    await ws.send(encode(audio[i:i + 1600], "pcm_s16le"))
                    await asyncio.sleep(0.1)
            await reader
        assert ws.close_code == 4409
        kinds = [m["type"] for m in messages]
        assert "final" in kinds and messages[-1] == {"type": "end", "reason": "session_too_long"}
        assert [m for m in messages if m["type"] == "error"][0]["code"] == "session_too_long"
        assert messages[kinds.index("final")]["end"] >= 2.5  # the speech up to the cut was transcribed


def test_parser_accepts_or_refuses_cleanly_whatever_it_gets():
    """Fuzz: any text gives a message or a ProtocolError with a documented code, never another exception."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from server.core import errors as E
    from server.core import requests as Q
    from server.streams import protocol as P

    codes = {E.BAD_JSON, E.BAD_MESSAGE, E.UNKNOWN_TYPE, E.UNSUPPORTED_SAMPLE_RATE, E.UNSUPPORTED_ENCODING,
             E.UNSUPPORTED_CHANNELS, E.BAD_ROOM}
    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                               lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                                   st.text(max_size=12), inner, max_size=4), max_leaves=20)
    fields = st.fixed_dictionaries({"type": st.sampled_from(["start", "stop", "finalize", "ping", "x"]) | json_values},
                                   optional={"sample_rate": json_values | st.sampled_from([16000, 44100, 8000]),
                                             "encoding": json_values | st.sampled_from(["pcm_s16le", "pcm_f32le"]),
                                             "channels": json_values | st.just(1), "room": json_values,
                                             "speaker": json_values})

    def check(text: str) -> None:
        try:
            msg = P.parse_client_text(text)
        except E.ProtocolError as exc:
            assert exc.code in codes and exc.message
        else:
            assert isinstance(msg, (Q.Start, P.Stop, P.Finalize, P.Ping))

    @settings(max_examples=400, deadline=None)
    @given(st.text(max_size=200) | fields.map(json.dumps) | json_values.map(json.dumps))
    def run(text):
        check(text)

    run()
    check(json.dumps({"type": "start", "sample_rate": float("nan")}))
    check(struct.pack("<d", 1.0).decode("latin-1"))
