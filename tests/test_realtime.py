"""OpenAI's Realtime transcription at /v1/realtime, driven by the official `openai` SDK against one real server
(Whisper tiny.en, a speaker key): the same finals as protocol v1 for the same audio, commits, clears, rooms, a
refused key, and bad input that gets OpenAI-shaped errors while a v1 stream beside it goes on. Every GA event
received is validated against the SDK's own schemas (pydantic); the pure parts (settings, segmenter and session
clear) are tested alone first."""
from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
import soxr
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from client.stream import encode, stream_audio
from server.config import Config, EngineConfig, SegmenterConfig
from server.core import errors as E
from server.core import requests as Q
from server.core.engine import Engine
from server.core.events import Error, Event, Final, Partial, Ready
from server.core.segmenter import Segmenter
from server.core.session import Session
from server.core.vad import VadFactory, make_vad
from server.delivery.sink import OutputSink
from server.streams import realtime as R
from server.streams import realtime_settings as RS

from .support.audio import RATE, heard, join_with_silence, load_16k, trim_silence
from .support.servers import http_base, room_finals, server_process
from .support.waits import all_read

KEY = "good-key"
RT_RATE = 24000
CHUNK = RT_RATE // 20  # 50 ms appends: the same pieces as client.stream's 50 ms frames
GA_EVENT = TypeAdapter(RealtimeServerEvent)
TRANSCRIPTION_EVENTS = {"input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                        "input_audio_buffer.committed", "conversation.item.input_audio_transcription.delta",
                        "conversation.item.input_audio_transcription.completed"}


def to_24k(audio: np.ndarray) -> np.ndarray:
    return soxr.resample(audio, RATE, RT_RATE).astype(np.float32)


# -- alone: settings, segmenter, session ------------------------------------------------------------------------

def test_updates_in_the_ga_and_the_beta_shape():
    s = RS.Settings.defaults(SegmenterConfig())
    assert (s.rate, s.vad, s.prefix_padding_ms, s.silence_duration_ms) == (24000, True, 300, 600)
    ga = RS.parse_update({"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000}, "noise_reduction": {"type": "near_field"},
        "transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": "  Okonkwo " + "x" * 600},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 900, "prefix_padding_ms": 200,
                           "threshold": 0.7}}}, "include": ["item.input_audio_transcription.logprobs"]}, s)
    assert (ga.rate, ga.silence_duration_ms, ga.prefix_padding_ms, ga.threshold) == (16000, 900, 200, 0.7)
    assert ga.prompt.startswith("Okonkwo x") and len(ga.prompt) <= Q.MAX_CONTEXT
    assert (ga.model, ga.language) == ("gpt-4o-transcribe", "en")
    beta = RS.parse_update({"input_audio_format": "pcm16", "turn_detection": None,
                           "input_audio_transcription": {"prompt": "   "}}, ga)
    assert (beta.rate, beta.vad, beta.prompt, beta.silence_duration_ms) == (24000, False, None, 900)
    assert RS.parse_update({}, beta) == beta  # what an update leaves out stays


@pytest.mark.parametrize("session, param", [
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 12345}}}}, "session.audio.input.format.rate"),
    ({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}, "session.audio.input.format.type"),
    ({"input_audio_format": "g711_ulaw"}, "session.input_audio_format"),
    ({"type": "realtime"}, "session.type"),
    ({"turn_detection": {"type": "semantic_vad"}}, "session.turn_detection.type"),
    ({"turn_detection": {"type": "server_vad", "silence_duration_ms": -1}},
     "session.turn_detection.silence_duration_ms"),
    ({"audio": {"input": {"transcription": {"prompt": 5}}}}, "session.audio.input.transcription.prompt"),
    ("not an object", "session"),
])
def test_bad_updates_name_the_parameter(session, param):
    with pytest.raises(RS.RealtimeError) as exc:
        RS.parse_update(session, RS.Settings())
    assert exc.value.param == param and exc.value.message


def encoder() -> R.Realtime:
    """The Realtime adapter with no connection behind it: enough to see how session events become its events."""
    stream = SimpleNamespace(cfg=Config(), backend_name="whisper", session=None,
                             ws=SimpleNamespace(query_string="intent=transcription", headers={}))
    return R.Realtime(stream)


def test_partials_become_append_only_deltas_and_a_failed_window_a_failed_event():
    li = encoder()

    def events(event: Event) -> list[dict]:
        out = [json.loads(frame) for frame in li.encode(event)]
        for e in out:
            GA_EVENT.validate_python(e)
        return out

    first = events(Partial(0, 0.3, 1.0, "And so my"))
    assert [e["type"] for e in first] == ["input_audio_buffer.speech_started",
                                          "conversation.item.input_audio_transcription.delta"]
    assert (first[0]["audio_start_ms"], first[1]["delta"]) == (300, "And so my")
    assert [e["delta"] for e in events(Partial(0, 0.3, 1.5, "And so my fellow"))] == [" fellow"]
    assert events(Partial(0, 0.3, 2.0, "And so I fell")) == []  # a revision: deltas only append
    final = events(Final(0, 0.3, 3.1, "And so my fellow Americans"))
    assert [e["type"] for e in final] == [
        "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.delta", "conversation.item.input_audio_transcription.completed"]
    assert (final[0]["audio_end_ms"], final[2]["delta"], final[3]["transcript"]) == (
        3100, " Americans", "And so my fellow Americans")
    assert {e["item_id"] for e in first + final} == {first[0]["item_id"]}
    assert events(Error(E.BACKEND_ERROR, "the model failed", segment=1)) == []
    failed = events(Final(1, 3.1, 4.0, ""))
    assert [e["type"] for e in failed] == [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.failed"]
    assert failed[2]["previous_item_id"] == first[0]["item_id"]
    assert failed[3]["error"]["message"] == "the model failed"
    assert events(Ready("abcdef012345", "whisper", "tiny.en", "test", "token")) == []
    # What streams/intake.py sends when it refuses the connection right after the handshake: an error in this protocol.
    refusal = json.loads(encoder().error_frame("overloaded", "no new streams now"))
    GA_EVENT.validate_python(refusal)
    assert refusal["error"]["type"] == "server_error" and refusal["error"]["code"] == "overloaded"


def test_segmenter_clear_drops_the_open_window_and_the_next_one_takes_its_number():
    cfg = SegmenterConfig()
    seg = Segmenter(cfg, make_vad(cfg))
    first, second = trim_silence(load_16k("ldc93s1.wav")), load_16k("uberi_one_two_three.wav")
    windows = seg.push(first)
    assert seg.in_window and not any(w.final for w in windows)
    seg.clear()
    cleared_at = seg.position
    assert not seg.in_window and seg.finalize() == []  # nothing left to commit
    windows = seg.push(second) + seg.finalize()
    finals = [w for w in windows if w.final]
    assert [w.segment for w in finals] == [0]  # numbering stays gapless
    assert all(w.start >= cleared_at for w in windows)  # nothing from before the clear, not even pre-roll


class EchoBackend:
    """Not a model: each window's text is its length in samples."""

    name, model, reason = "echo", "echo", "test"
    uses_drafts = costly_batches = False

    def transcribe(self, audios, drafts=None, contexts=None):
        return [str(len(a)) for a in audios]

    def decode_stats(self):
        return None

    def close(self):
        pass


async def test_session_clear_sends_no_final_and_no_stale_partial_of_the_cleared_window():
    cfg = SegmenterConfig()
    engine = Engine(EchoBackend(), EngineConfig(max_wait_ms=0))
    engine.start()
    sent = []

    async def to_client(event: Event) -> bool:
        sent.append(event)
        return True  # the client is still there

    session = Session("abcdef012345", engine, cfg, VadFactory(cfg), OutputSink("abcdef012345", None, to_client))
    await session.start(Q.Start())
    speech = encode(load_16k("lj001_0005.wav")[:3 * RATE], "pcm_s16le")  # 3 s, mid-sentence: a window stays open
    for i in range(0, len(speech), 3200):
        session.audio(speech[i:i + 3200])
    assert session.clear() == 0  # the next window is segment 0 again
    cleared_at, n_at_clear = 3 * RATE, len(sent)
    assert not session.finalize()  # nothing left to commit
    # the cleared window's partials, already submitted, come back from the engine: a lowest-priority call runs
    # only once no window is queued before it
    await engine.run_low(lambda: None)
    tail = encode(load_16k("uberi_one_two_three.wav"), "pcm_s16le")
    for i in range(0, len(tail), 3200):
        session.audio(tail[i:i + 3200])
    await session.stop()
    await engine.close()
    finals = [e for e in sent if isinstance(e, Final)]
    assert [f.segment for f in finals] == [0] and finals[0].start * RATE >= cleared_at
    late = [e for e in sent[n_at_clear:] if isinstance(e, Partial) and e.end * RATE <= cleared_at]
    assert late == []  # no partial of the cleared window after the clear


# -- one real server --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Whisper tiny.en with a speaker key: (v1 URL with the key, /v1 base for the SDK)."""
    data = tmp_path_factory.mktemp("data")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with server_process("--backend", "whisper", "--data-dir", str(data), "--set", f"auth.speaker_tokens={KEY}",
                        log_path=log) as (url, _):
        yield f"{url}?token={KEY}", url.removesuffix("/listen")


def sdk(base: str, key: str = KEY) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, websocket_base_url=base)


async def append(conn, audio_24k: np.ndarray, pace: float = 0.0) -> None:
    """Sends 24 kHz audio as pcm16 appends of 50 ms, `pace` times real time (0: as fast as it is read)."""
    pcm = encode(audio_24k, "pcm_s16le")
    for i in range(0, len(pcm), CHUNK * 2):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + CHUNK * 2]).decode())
        if pace:
            await asyncio.sleep(CHUNK / RT_RATE / pace)


async def receive(conn, until, timeout: float = 60.0, validate: bool = True) -> list[dict]:
    """Server events (raw dicts) up to and including the first for which `until(event)` holds. GA events are
    validated against the SDK's schemas first: a missing or mistyped field fails here."""
    events = []
    while True:
        event = json.loads(await asyncio.wait_for(conn.recv_bytes(), timeout))
        if validate:
            GA_EVENT.validate_python(event)
        assert event["event_id"].startswith("event_")
        events.append(event)
        if until(event):
            return events


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def completed(n: int):
    count = [0]

    def done(event) -> bool:
        count[0] += event["type"] == "conversation.item.input_audio_transcription.completed"
        return count[0] >= n
    return done


def check_items(events: list[dict], vad: bool = True) -> None:
    """Per item, in order: speech_started, speech_stopped (server VAD only), committed, deltas, completed; the
    committed items chain by previous_item_id; deltas that agree with the transcript add up to it."""
    previous = None
    for done in of(events, "conversation.item.input_audio_transcription.completed"):
        mine = [e for e in events if e.get("item_id") == done["item_id"]]
        kinds = [e["type"] for e in mine]
        head = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"] if vad else []
        assert [k for k in kinds if not k.endswith(".delta")] == head + ["input_audio_buffer.committed",
                                                                         done["type"]], kinds
        committed = of(mine, "input_audio_buffer.committed")[0]
        assert committed["previous_item_id"] == previous
        previous = done["item_id"]
        joined = "".join(e["delta"] for e in of(mine, "conversation.item.input_audio_transcription.delta"))
        if done["transcript"].startswith(joined):
            assert joined == done["transcript"]  # the last delta completes them
        assert done["usage"]["type"] == "duration" and done["usage"]["seconds"] > 0


async def test_a_bad_key_is_refused_at_the_handshake_as_openai_does(server):
    _, base = server
    with pytest.raises(InvalidStatus) as exc:
        async with sdk(base, "wrong-key").realtime.connect(extra_query={"intent": "transcription"}):
            pass
    assert exc.value.response.status_code == 401
    assert json.loads(exc.value.response.body)["error"] == {
        "message": "Incorrect API key provided.", "type": "invalid_request_error", "param": None,
        "code": "invalid_api_key"}
    with pytest.raises(InvalidStatus) as exc:  # no key at all (the SDK always sends one)
        async with connect(f"{base}/realtime?intent=transcription"):
            pass
    assert exc.value.response.status_code == 401
    assert json.loads(exc.value.response.body)["error"]["message"].startswith("You didn't provide an API key")
    # A good key without intent=transcription: OpenAI's error event, then close 4000.
    async with sdk(base).realtime.connect() as conn:
        [error] = await receive(conn, lambda e: True)
        assert error["error"]["code"] == "invalid_intent"
        with pytest.raises(ConnectionClosed) as closed:
            await receive(conn, lambda e: True, timeout=10)
        assert closed.value.rcvd.code == 4000


async def test_completed_transcripts_are_protocol_v1_finals(server):
    v1_url, base = server
    audio, _ = join_with_silence(["jfk_16k.wav", "ldc93s1.wav", "uberi_one_two_three.wav"], [1.5, 1.0, 1.0])
    audio = to_24k(audio)
    v1 = await stream_audio(audio, RT_RATE, v1_url, speed=0)
    assert v1.ready["protocol"] == 1 and len(v1.finals) >= 3
    async with sdk(base).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        [created] = await receive(conn, lambda e: True)
        assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
        assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 600, "prefix_padding_ms": 300}}}})
        [updated] = await receive(conn, lambda e: True)
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 600
        await append(conn, audio)
        events = await receive(conn, completed(len(v1.finals)))
    assert {e["type"] for e in events} <= TRANSCRIPTION_EVENTS
    done = of(events, "conversation.item.input_audio_transcription.completed")
    assert [d["transcript"] for d in done] == [f["text"] for f in v1.finals]
    assert [s["audio_end_ms"] for s in of(events, "input_audio_buffer.speech_stopped")] == \
           [round(f["end"] * 1000) for f in v1.finals]
    assert of(events, "conversation.item.input_audio_transcription.delta")
    check_items(events)


async def test_manual_turns_commit_flushes_and_clear_drops(server):
    """The beta flavour, turn_detection null: silence cuts nothing, a commit does; a clear drops the open audio."""
    _, base = server
    ldc, uberi = load_16k("ldc93s1.wav"), load_16k("uberi_one_two_three.wav")
    async with sdk(base).beta.realtime.connect(model="whisper-1", extra_query={"intent": "transcription"}) as conn:
        [created] = await receive(conn, lambda e: True, validate=False)
        assert created["type"] == "transcription_session.created"
        assert created["session"]["input_audio_format"] == "pcm16"
        await conn.send({"type": "transcription_session.update", "session": {
            "input_audio_format": "pcm16", "turn_detection": None,
            "input_audio_transcription": {"model": "whisper-1", "language": "en"}}})
        [updated] = await receive(conn, lambda e: True, validate=False)
        assert updated["type"] == "transcription_session.updated" and updated["session"]["turn_detection"] is None
        assert updated["session"]["input_audio_transcription"]["model"] == "whisper-1"
        await conn.send({"type": "input_audio_buffer.commit", "event_id": "commit-nothing"})
        [error] = await receive(conn, lambda e: True)
        assert (error["error"]["code"], error["error"]["event_id"]) == ("input_audio_buffer_commit_empty",
                                                                        "commit-nothing")
        await append(conn, to_24k(load_16k("jfk_16k.wav")[:3 * RATE]))  # "And so my fellow..." then dropped
        await conn.send({"type": "input_audio_buffer.clear"})
        await receive(conn, lambda e: e["type"] == "input_audio_buffer.cleared")
        # Two utterances 1.2 s apart, paced at 3x real time: without server VAD they stay one item.
        await append(conn, to_24k(np.concatenate([ldc, np.zeros(int(1.2 * RATE), np.float32), uberi])), pace=3)
        await conn.send({"type": "input_audio_buffer.commit"})
        events = await receive(conn, completed(1))
        await conn.send({"type": "input_audio_buffer.commit", "event_id": "commit-again"})
        events += await receive(conn, lambda e: e["type"] == "error")
    assert events[-1]["error"]["event_id"] == "commit-again"  # the commit left nothing open
    [done] = of(events, "conversation.item.input_audio_transcription.completed")
    text = done["transcript"].lower()
    assert "greasy wash water" in text and "".join(c for c in text if c.isdigit()) == "123", text
    assert "fellow" not in text and "americans" not in text
    assert done["usage"]["seconds"] > (len(ldc) + len(uberi)) / RATE  # one window across the pause
    assert not of(events, "input_audio_buffer.speech_started")
    check_items(events[:-1], vad=False)


async def test_a_realtime_stream_in_a_room_reaches_its_viewers(server):
    _, base = server
    viewer_url = base.replace("/v1", "/v1/watch?room=realtime-room")
    async with connect(viewer_url) as viewer:
        assert json.loads(await viewer.recv())["type"] == "watching"
        query = {"intent": "transcription", "room": "realtime-room", "speaker": "Ana"}
        async with sdk(base).realtime.connect(extra_query=query) as conn:
            await receive(conn, lambda e: e["type"] == "session.created")
            await append(conn, to_24k(load_16k("ldc93s1.wav")))
            await conn.send({"type": "input_audio_buffer.commit"})  # in case the clip ends before the hangover
            [done] = of(await receive(conn, completed(1)), "conversation.item.input_audio_transcription.completed")
        while (msg := json.loads(await asyncio.wait_for(viewer.recv(), 30)))["type"] != "final":
            pass
    assert (msg["speaker"], msg["text"]) == ("Ana", done["transcript"])
    assert heard("ldc93s1.wav", msg["text"], 0.35)


async def test_bad_input_gets_openai_errors_and_harms_nothing(server):
    """Each bad event gets one `error` in OpenAI's shape (with the client's event_id), the stream goes on, and a
    v1 stream on the same server meanwhile gets its finals. Audio before any session.update takes the defaults
    (pcm16 at 24 kHz, server VAD), as it does at OpenAI."""
    v1_url, base = server
    v1 = asyncio.create_task(stream_audio(load_16k("jfk_16k.wav"), RATE, v1_url, speed=3))
    speech = to_24k(load_16k("lj001_0005.wav")[:4 * RATE])  # cut mid-sentence: only the commit closes it
    async with sdk(base).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await receive(conn, lambda e: e["type"] == "session.created")
        await append(conn, speech)
        rate = lambda r: {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": r}}}}}
        await conn.send({**rate(16000), "event_id": "e-rate-change"})
        await conn.send_raw("{not json")
        await conn.send_raw("[1, 2]")
        await conn.send({"type": "no.such.event", "event_id": "e-unknown"})
        await conn.send({**rate(12345), "event_id": "e-rate"})
        await conn.send({"type": "input_audio_buffer.append", "audio": "!!not base64!!", "event_id": "e-b64"})
        await conn.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"odd").decode(),
                         "event_id": "e-odd"})
        await conn.send_raw(b"\x00\x01")
        await conn.send({"type": "input_audio_buffer.commit", "event_id": "e-commit"})
        events = await receive(conn, completed(1))
    errors = [(e["error"]["code"], e["error"]["param"], e["error"]["event_id"]) for e in of(events, "error")]
    assert errors == [("audio_already_started", "session", "e-rate-change"),
                      ("invalid_json", None, None),
                      ("invalid_type", None, None),
                      ("invalid_value", "type", "e-unknown"),
                      ("invalid_value", "session.audio.input.format.rate", "e-rate"),
                      ("invalid_value", "audio", "e-b64"),
                      ("invalid_value", "audio", "e-odd"),
                      ("invalid_value", None, None)]
    assert all(e["error"]["type"] == "invalid_request_error" and e["error"]["message"] for e in of(events, "error"))
    assert {e["type"] for e in events} <= TRANSCRIPTION_EVENTS | {"error"}
    [done] = of(events, "conversation.item.input_audio_transcription.completed")
    assert "invention of movable metal letters" in done["transcript"].lower(), done["transcript"]
    check_items([e for e in events if e["type"] != "error"])
    result = await asyncio.wait_for(v1, 120)
    assert result.ready["protocol"] == 1 and heard("jfk_16k.wav", result.text, 0.35)


async def test_a_dropped_realtime_stream_still_gets_its_open_window_into_the_room_transcript(server):
    """No commit, the TCP connection simply gone mid-speech: the open window still becomes a final (transcript
    and room), and nothing is held for resuming (Realtime sessions cannot resume)."""
    url, base = server
    room = "realtime-drop"
    ws = await connect(f"{base}/realtime?intent=transcription&room={room}&token={KEY}")
    assert json.loads(await ws.recv())["type"] == "session.created"
    pcm = encode(to_24k(load_16k("jfk_16k.wav")[:3 * RATE]), "pcm_s16le")  # "And so my fellow Americans"
    for i in range(0, len(pcm), CHUNK * 2):
        await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                  "audio": base64.b64encode(pcm[i:i + CHUNK * 2]).decode()}))
    await all_read(ws, {"type": "not.a.type"}, "error")  # an unknown event gets an error, in order
    ws.transport.abort()
    finals = await room_finals(url, room)
    assert "fellow" in " ".join(f["text"] for f in finals).lower(), finals
    with urllib.request.urlopen(http_base(url.split("?")[0]) + "/healthz", timeout=5) as r:
        assert json.load(r)["resumable"] == 0
