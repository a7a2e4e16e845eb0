"""OpenAI's Realtime transcription at /v1/realtime, driven by the official `openai` SDK against one real server
(Whisper tiny.en, a speaker key): the same finals as protocol v1 for the same audio, commits, clears, rooms, a
refused key, and bad input that gets OpenAI-shaped errors while a v1 stream beside it goes on. Every GA event
received is validated against the SDK's own schemas (pydantic). The pure parts (settings, encoding, segmenter and
session clear) are tested alone in test_realtime_units.py."""
from __future__ import annotations

import asyncio
import base64
import json
import urllib.request

import numpy as np
import pytest
import soxr
from openai import AsyncOpenAI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from client.stream import encode, stream_audio

from .support.audio import RATE, heard, join_with_silence, load_16k
from .support.realtime import GA_EVENT
from .support.servers import http_base, room_finals, server_process
from .support.waits import all_read

KEY = "good-key"
RT_RATE = 24000
CHUNK = RT_RATE // 20  # 50 ms appends: the same pieces as client.stream's 50 ms frames
TRANSCRIPTION_EVENTS = {"input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                        "input_audio_buffer.committed", "conversation.item.input_audio_transcription.delta",
                        "conversation.item.input_audio_transcription.completed"}


def to_24k(audio: np.ndarray) -> np.ndarray:
    return soxr.resample(audio, RATE, RT_RATE).astype(np.float32)


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

