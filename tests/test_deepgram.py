"""Deepgram's live protocol on `/v1/listen` (server/deepgram.py), driven by Deepgram's own Python SDK
(deepgram-sdk 7.17, its async client) against one real server (Whisper tiny.en) that also serves protocol v1 on
the same path: the same audio gives the same finals either way; Finalize, CloseStream and KeepAlive do what
Deepgram documents; a bad key and a query the server cannot serve are refused at the handshake, where the SDK
raises its own ApiError; bad frames get Deepgram-shaped errors and harm no one."""
from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.request
import warnings
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from client.stream import encode, stream_audio
from server.config import load_config
from server.core.requests import MAX_CONTEXT
from server.streams import deepgram as dg

from .support.audio import RATE, TURNS, continuous_speech, heard, join_with_silence, load_16k, two_voices, voice_at
from .support.servers import http_base, room_finals, server_process
from .support.waits import all_read

with warnings.catch_warnings():  # the SDK's async client imports websockets.legacy, deprecated since 14.0
    warnings.simplefilter("ignore", DeprecationWarning)
    from deepgram import AsyncDeepgramClient
    from deepgram.core.api_error import ApiError
    from deepgram.environment import DeepgramClientEnvironment

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "good-key"
CLIPS, GAPS = ["ldc93s1.wav", "jfk_16k.wav", "uberi_one_two_three.wav"], [1.5, 1.5, 1.0]  # 20.7 s, 4 windows
LINEAR16 = {"model": "nova-3", "encoding": "linear16", "sample_rate": RATE}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: speaker key KEY (v1 clients give it as ?token=), idle timeout 3 s."""
    data = tmp_path_factory.mktemp("data")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with server_process("--backend", "whisper", "--data-dir", str(data), "--set", f"auth.speaker_tokens={KEY}",
                        "--set", "limits.idle_timeout_s=3", log_path=log) as (url, _):
        yield url


@pytest.fixture(scope="module")
def audio():
    return join_with_silence(CLIPS, GAPS)[0]


@pytest.fixture(scope="module")
def v1_reference(server, audio):
    """Protocol v1 on the same path, same audio, same server: the finals Deepgram's Results must match."""
    return asyncio.run(stream_audio(audio, RATE, f"{server}?token={KEY}", speed=0))


def sdk(url: str, key: str = KEY) -> AsyncDeepgramClient:
    """Deepgram's client pointed at our server: its environment's `production` is the websocket base URL."""
    base = url.removesuffix("/v1/listen")
    env = DeepgramClientEnvironment(base=http_base(url), production=base, agent=base, agent_rest=base)
    return AsyncDeepgramClient(api_key=key, environment=env)


class Received:
    """Everything the SDK yields on one connection (its parsed models), until the server closes it."""

    def __init__(self, conn):
        self.conn = conn
        self.messages: list = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for msg in self.conn:
                self.messages.append(msg)
        except ConnectionClosed:
            pass  # a close other than 1000: see close_code

    def of(self, kind: str) -> list:
        return [m for m in self.messages if m.type == kind]

    @property
    def finals(self) -> list:
        return [m for m in self.of("Results") if m.is_final]

    @property
    def close_code(self) -> int | None:
        return self.conn._websocket.close_code  # the SDK keeps its websocket to itself

    async def closed(self, timeout: float = 60) -> None:
        await asyncio.wait_for(self.task, timeout)

    async def until(self, condition, timeout: float = 30, keepalive: bool = False) -> None:
        """Waits for condition(); with `keepalive`, a KeepAlive each second meanwhile (the idle timeout is 3 s)."""
        loop = asyncio.get_running_loop()
        deadline, ping = loop.time() + timeout, loop.time() + 1
        while not condition():
            assert loop.time() < deadline, f"timed out; received {[m.type for m in self.messages]}"
            if keepalive and loop.time() >= ping:
                await self.conn.send_keep_alive()
                ping += 1
            await asyncio.sleep(0.05)


async def send_audio(conn, audio: np.ndarray, speed: float = 4.0, chunk_s: float = 0.1) -> None:
    """linear16 in chunk_s frames, `speed` times real time."""
    pcm, step = encode(audio, "pcm_s16le"), int(RATE * chunk_s) * 2
    for i in range(0, len(pcm), step):
        await conn.send_media(pcm[i:i + step])
        await asyncio.sleep(chunk_s / speed)


def text(finals) -> str:
    return " ".join(t for t in (f.channel.alternatives[0].transcript for f in finals) if t)


# -- without a server ---------------------------------------------------------------------------------------

def test_detection_never_reads_a_v1_client_as_deepgram():
    for v1 in ({}, {"room": "r"}, {"token": "t"}, {"room": "r", "token": "t"}):
        assert not dg.asked_for(v1)
    assert dg.asked_for({"model": "nova-3"}) and dg.asked_for({"encoding": "linear16", "room": "r"})
    assert not dg.asked_for({"speaker": "x"})  # ours, not Deepgram's: it does not decide


def test_keyterms_and_keywords_become_the_context():
    query = {"keyterm": ["Kowalczyk", " Quetzalcoatl "], "keywords": ["Okonkwo:2", "time:out", "Nadia:-1.5"]}
    assert dg.context_of(query) == "Kowalczyk, Quetzalcoatl, Okonkwo, time:out, Nadia"
    long = dg.context_of({"keyterm": [f"term{i:03d}" for i in range(100)]})
    assert len(long) <= MAX_CONTEXT and long.endswith("term054")  # whole terms only


def segmenter_for(query: str):
    """The segmenter settings a Deepgram stream with this query string gets."""
    stream = SimpleNamespace(cfg=load_config(), ws=SimpleNamespace(query_string=query))  # no connection behind it
    return dg.Deepgram(stream).segmenter_config()


def test_endpointing_is_the_hangover_and_unread_partials_are_not_made():
    default = load_config().segmenter
    base = "encoding=linear16&sample_rate=16000&interim_results=true"
    assert segmenter_for(f"{base}&endpointing=300").hangover_ms == 300
    assert segmenter_for(f"{base}&endpointing=false") == default
    assert segmenter_for(f"{base}&endpointing=0").hangover_ms == default.frame_ms  # at least one VAD frame
    # Without interim results, vad events or a room, nobody reads partials: none are computed.
    assert segmenter_for("encoding=linear16&sample_rate=16000").partial_interval_s > default.max_window_s
    assert segmenter_for("encoding=linear16&sample_rate=16000&room=r").partial_interval_s == default.partial_interval_s


# -- against the server -------------------------------------------------------------------------------------

async def test_v1_client_on_the_same_path_is_unaffected(v1_reference):
    ready, msgs = v1_reference.ready, v1_reference.messages
    assert ready["type"] == "ready" and ready["protocol"] == 1
    assert [f["segment"] for f in v1_reference.finals] == list(range(4))
    assert msgs[-1]["type"] == "end" and v1_reference.close_code == 1000
    assert not [m for m in msgs if m["type"] == "error"]


async def test_results_match_protocol_v1(server, audio, v1_reference):
    options = dict(LINEAR16, interim_results=True, vad_events=True, utterance_end_ms=1000, punctuate=True,
                   smart_format=True, language="en")
    async with sdk(server).listen.v1.connect(**options) as conn:
        got = Received(conn)
        await send_audio(conn, audio)
        await conn.send_close_stream()
        await got.closed()
    assert got.close_code == 1000
    assert {type(m).__name__ for m in got.messages} == {"ListenV1Results", "ListenV1SpeechStarted",
                                                        "ListenV1UtteranceEnd", "ListenV1Metadata"}
    finals, interims = got.finals, [m for m in got.of("Results") if not m.is_final]
    assert interims and all(not m.speech_final for m in interims)
    assert text(finals) == v1_reference.text  # the same windows, the same text
    assert [(f.start, round(f.start + f.duration, 6)) for f in finals] == \
           [(f["start"], f["end"]) for f in v1_reference.finals]
    assert all(f.speech_final and not f.from_finalize for f in finals)
    for f in finals:  # real words: aligned by Whisper, in order, inside their window, punctuated as the transcript
        alt = f.channel.alternatives[0]
        assert " ".join(w.punctuated_word for w in alt.words) == alt.transcript
        assert all(f.start <= w.start <= w.end <= f.start + f.duration + 1e-6 for w in alt.words)
        assert all(0 < w.confidence <= 1 and w.word == w.word.lower() for w in alt.words)
        assert all(getattr(w, "speaker", None) is None for w in alt.words)  # no diarize: no speakers
        if alt.words:
            assert alt.confidence == pytest.approx(sum(w.confidence for w in alt.words) / len(alt.words), abs=1e-3)
    # One SpeechStarted per window, at its start; an UtteranceEnd after each final with text.
    assert [s.timestamp for s in got.of("SpeechStarted")] == [f.start for f in finals]
    assert [u.last_word_end for u in got.of("UtteranceEnd")] == [round(f.start + f.duration, 6) for f in finals]
    meta = got.messages[-1]
    assert meta.type == "Metadata" and meta.channels == 1 and meta.duration == pytest.approx(len(audio) / RATE)
    assert meta.sha256 == hashlib.sha256(encode(audio, "pcm_s16le")).hexdigest()
    assert {f.metadata.request_id for f in finals} == {meta.request_id}
    # request_id is our session id: the stream's transcript is there under it.
    with urllib.request.urlopen(f"{http_base(server)}/v1/transcripts/{meta.request_id}.txt", timeout=10) as r:
        assert "country" in r.read().decode()


async def test_finalize_and_close_stream_flush(server):
    speech = continuous_speech(4.0)  # no pause: the window is open whenever Finalize or CloseStream comes
    async with sdk(server).listen.v1.connect(**LINEAR16) as conn:
        got = Received(conn)
        await send_audio(conn, speech[:2 * RATE])
        await conn.send_finalize()
        await got.until(lambda: got.finals, keepalive=True)
        first = got.finals[0]
        assert first.from_finalize and not first.speech_final
        assert first.start < 0.5 and round(first.start + first.duration, 6) == 2.0  # all the audio sent, no more
        assert first.channel.alternatives[0].transcript

        await send_audio(conn, speech[2 * RATE:])
        await conn.send_close_stream()
        await got.closed()
    assert got.close_code == 1000
    last = got.finals[-1]
    assert len(got.finals) == 2 and not last.from_finalize and not last.speech_final
    assert last.start >= 2.0 and round(last.start + last.duration, 6) == 4.0
    assert last.channel.alternatives[0].transcript
    assert got.messages[-1].type == "Metadata" and got.messages.index(last) < len(got.messages) - 1


async def test_keepalive_holds_an_idle_stream_open(server):
    async def idle(keepalive: bool) -> Received:
        async with sdk(server).listen.v1.connect(**LINEAR16) as conn:
            got = Received(conn)
            for _ in range(6):  # 6 s idle; the server's idle timeout is 3 s
                await asyncio.sleep(1)
                if keepalive:
                    await conn.send_keep_alive()
            if got.task.done():
                return got
            await conn.send_close_stream()
            await got.closed()
            return got

    kept, dropped = await asyncio.gather(idle(True), idle(False))
    assert kept.close_code == 1000 and [m.type for m in kept.messages] == ["Metadata"]
    assert dropped.close_code == 4408
    assert [(m.type, getattr(m, "variant", None)) for m in dropped.messages] == [("Error", "idle_timeout"),
                                                                                  ("Metadata", None)]


async def test_bad_key_is_refused_as_deepgram_refuses_it(server):
    with pytest.raises(ApiError) as refused:
        async with sdk(server, key="wrong-key").listen.v1.connect(**LINEAR16):
            pass
    assert refused.value.status_code == 401
    # What Deepgram's API answers, for clients that read the body or its dg-error header.
    with pytest.raises(InvalidStatus) as raw:
        async with connect(f"{server}?model=nova-3", additional_headers={"Authorization": "Token wrong-key"}):
            pass
    response = raw.value.response
    assert json.loads(response.body)["err_code"] == "INVALID_AUTH"
    assert response.headers["dg-error"] == "Invalid credentials." and response.headers["dg-request-id"]


async def test_deepgram_stream_appears_in_a_room(server):
    room, seen = "deepgram-room", []
    async with connect(server.replace("/v1/listen", f"/v1/watch?room={room}")) as viewer:
        assert json.loads(await viewer.recv())["type"] == "watching"
        extra = {"additional_query_parameters": {"room": room, "speaker": "Deepgram caller"}}
        async with sdk(server).listen.v1.connect(**LINEAR16, request_options=extra) as conn:
            got = Received(conn)
            await send_audio(conn, load_16k("ldc93s1.wav"), speed=8)
            await conn.send_close_stream()
            await got.closed()
        while not [m for m in seen if m["type"] == "final"]:
            seen.append(json.loads(await asyncio.wait_for(viewer.recv(), 30)))
    final = [m for m in seen if m["type"] == "final"][0]
    assert final["speaker"] == "Deepgram caller" and final["session"] == got.messages[-1].request_id
    assert final["text"] == text(got.finals) and heard("ldc93s1.wav", final["text"], 0.5)


async def test_diarize_gives_each_word_its_speaker_as_deepgram_does(server):
    """`diarize=True` through the SDK: real words (aligned, with confidences), each with Deepgram's speaker integer
    (0 for the first voice heard) and a speaker_confidence; two people taking turns get two speakers."""
    audio, turns = two_voices(TURNS[:2])  # the LJ reader, then JFK
    async with sdk(server).listen.v1.connect(**LINEAR16, diarize=True) as conn:
        got = Received(conn)
        await send_audio(conn, audio, speed=8)
        await conn.send_close_stream()
        await got.closed()
    words = [w for f in got.finals for w in f.channel.alternatives[0].words]
    assert words and all(w.start < w.end and 0 < w.confidence <= 1 and w.punctuated_word for w in words)
    by_voice: dict[str, Counter] = {}
    for w in words:
        assert isinstance(w.speaker, int) and 0 <= w.speaker_confidence <= 1
        voice = voice_at(turns, (w.start + w.end) / 2)
        if voice is not None:
            by_voice.setdefault(voice, Counter())[w.speaker] += 1
    assert by_voice["lj"].most_common(1)[0][0] == 0 and by_voice["jfk"].most_common(1)[0][0] == 1, by_voice
    for counts in by_voice.values():
        assert counts.most_common(1)[0][1] >= 0.9 * sum(counts.values()), by_voice


async def refused_at_handshake(url: str, **options) -> dict:
    """The SDK's ApiError (400), and the JSON body Deepgram's API sends with it."""
    with pytest.raises(ApiError) as refused:
        async with sdk(url).listen.v1.connect(**options):
            pass
    assert refused.value.status_code == 400
    query = "&".join(f"{k}={v}" for k, v in options.items())
    with pytest.raises(InvalidStatus) as raw:
        async with connect(f"{url}?{query}", additional_headers={"Authorization": f"Token {KEY}"}):
            pass
    body = json.loads(raw.value.response.body)
    assert body["err_code"] == "Bad Request" and raw.value.response.headers["dg-error"] == body["err_msg"]
    return body


async def test_bad_input_gets_deepgram_errors_and_harms_no_one(server, audio, v1_reference):
    good = asyncio.create_task(stream_audio(audio, RATE, f"{server}?token={KEY}", speed=3))

    for bad, says in (({"sample_rate": 12345}, "sample_rate 12345"), ({"encoding": "mulaw"}, "mulaw"),
                      ({"channels": 2}, "mono")):
        assert says in (await refused_at_handshake(server, **{**LINEAR16, **bad}))["err_msg"]

    async with sdk(server).listen.v1.connect(**LINEAR16) as conn:
        got = Received(conn)
        for frame in ("{not json", json.dumps({"type": "Bogus"})):
            await conn._send(frame)  # the SDK sends only well-formed messages: its raw send
        await conn.send_media(b"\x00" * 3201)  # not a whole number of 16-bit samples
        await got.until(lambda: len(got.of("Error")) == 3)
        await send_audio(conn, load_16k("ldc93s1.wav"), speed=8)  # the stream goes on
        await conn.send_close_stream()
        await got.closed()
    errors = got.of("Error")
    assert [type(e).__name__ for e in errors] == ["ListenV1Error"] * 3
    assert [(e.variant, e.message) for e in errors] == [("SchemaError", "{not json"),
                                                        ("SchemaError", '{"type": "Bogus"}'), ("bad_audio", None)]
    assert all(e.description for e in errors) and "3201 bytes" in errors[2].description
    assert got.close_code == 1000 and heard("ldc93s1.wav", text(got.finals), 0.5)

    result = await good
    fields = lambda r: [(f["segment"], f["start"], f["end"], f["text"]) for f in r.finals]  # noqa: E731
    assert fields(result) == fields(v1_reference) and result.messages[-1]["type"] == "end"
    assert not [m for m in result.messages if m["type"] == "error"]


async def test_a_dropped_deepgram_stream_still_gets_its_open_window_into_the_room_transcript(server):
    """No CloseStream, the TCP connection simply gone mid-speech: the server flushes the open window into a
    final (transcript and room) and holds nothing for resuming (Deepgram streams cannot resume)."""
    room = "deepgram-drop"
    ws = await connect(server + f"?encoding=linear16&sample_rate=16000&room={room}&token={KEY}")
    pcm = encode(load_16k("jfk_16k.wav")[:3 * RATE], "pcm_s16le")  # "And so my fellow Americans", mid-window
    for i in range(0, len(pcm), RATE // 5):
        await ws.send(pcm[i:i + RATE // 5])
    await all_read(ws, {"type": "NotAType"}, "Error")  # an unknown type gets a SchemaError, in order
    ws.transport.abort()
    finals = await room_finals(server, room)
    assert "fellow" in " ".join(f["text"] for f in finals).lower(), finals
    with urllib.request.urlopen(http_base(server) + "/healthz", timeout=5) as r:
        assert json.load(r)["resumable"] == 0
