"""End to end over a real websocket on loopback, with the embedded Whisper tiny.en backend and real speech."""
import asyncio
import json

import numpy as np
import pytest
import soxr
from websockets.asyncio.client import connect

from client.stream import encode, load_audio, stream_audio

from .support.audio import AUDIO, RATE, continuous_speech, heard, join_with_silence, load_16k, transcript, wer
from .support.servers import health, http_base, scrape
from .support.v1 import check_protocol_order


async def test_jfk_finals_have_low_wer(cpu_url):
    audio = load_16k("jfk_16k.wav")
    result = await stream_audio(audio, RATE, cpu_url, speed=0)
    assert result.ready["backend"] == "whisper" and result.ready["protocol"] == 1
    assert result.finals and result.close_code == 1000
    check_protocol_order(result.messages)
    assert wer(transcript("jfk_16k.wav"), result.text) <= 0.2, result.text


async def test_one_final_per_utterance_across_pauses(cpu_url):
    names = ["ldc93s1.wav", "lj050_0131.wav", "uberi_one_two_three.wav", "lj001_0005.wav"]
    audio, spans = join_with_silence(names, [1.0, 1.5, 2.0, 1.2])
    result = await stream_audio(audio, RATE, cpu_url, speed=0)
    check_protocol_order(result.messages)
    assert len(result.finals) == len(names)
    for final, (start, end), name in zip(result.finals, spans, names):
        assert final["start"] < start + 0.5 and final["end"] > end - 0.6
        assert heard(name, final["text"], 0.5), (name, final["text"])


async def test_continuous_speech_gives_contiguous_windows_of_at_most_10s(cpu_url):
    speech = continuous_speech(25.0)
    result = await stream_audio(speech, RATE, cpu_url, speed=0)
    check_protocol_order(result.messages)
    finals = result.finals
    assert len(finals) >= 3
    assert all(f["end"] - f["start"] <= 10.0 for f in finals)
    for a, b in zip(finals, finals[1:]):
        assert a["end"] == b["start"]  # cut and resumed at exactly the same sample
    assert finals[0]["start"] <= 0.05 and finals[-1]["end"] == len(speech) / RATE


async def test_two_concurrent_sessions_get_only_their_own_text(cpu_url):
    a, b = load_16k("jfk_16k.wav"), load_16k("lj050_0131.wav")
    ra, rb = await asyncio.gather(stream_audio(a, RATE, cpu_url, speed=2.0),
                                  stream_audio(b, RATE, cpu_url, speed=2.0))
    assert ra.ready["session"] != rb.ready["session"]
    ta, tb = transcript("jfk_16k.wav"), transcript("lj050_0131.wav")
    assert wer(ta, ra.text) <= 0.2 and wer(tb, rb.text) <= 0.35, (ra.text, rb.text)
    assert wer(tb, ra.text) > 0.9 and wer(ta, rb.text) > 0.9


async def test_stop_in_the_middle_of_speech_still_yields_its_final(cpu_url):
    audio = load_16k("jfk_16k.wav")[:int(6.3 * RATE)]  # "... ask not what your country" and stop mid-sentence
    result = await stream_audio(audio, RATE, cpu_url, speed=0)
    check_protocol_order(result.messages)
    assert result.finals[-1]["end"] == pytest.approx(6.3, abs=1e-3)
    assert "my fellow" in result.text and len(result.text.split()) >= 6, result.text


async def test_44k_stereo_flac_and_f32_give_the_same_segments_as_16k_s16(cpu_url):
    base = await stream_audio(load_16k("jfk_16k.wav"), RATE, cpu_url, speed=0)
    f32 = await stream_audio(load_16k("jfk_16k.wav"), RATE, cpu_url, speed=0, encoding="pcm_f32le")
    flac, rate = load_audio(str(AUDIO / "jfk.flac"))  # 44.1 kHz stereo, downmixed by the client
    assert rate == 44100
    hi = await stream_audio(flac, rate, cpu_url, speed=0, encoding="pcm_f32le")
    spans = lambda r: [(f["start"], f["end"]) for f in r.finals]  # noqa: E731
    assert spans(f32) == spans(base) and f32.text == base.text
    assert len(hi.finals) == len(base.finals)
    assert np.allclose(spans(hi), spans(base), atol=0.05)
    assert wer(base.text, hi.text) <= 0.2


async def test_resampled_rates_keep_the_stream_clock():
    """soxr streaming keeps every sample: 48 kHz in -> exactly as many 16 kHz samples as the clip has."""
    from server.core.audio import AudioDecoder
    from server.streams.protocol import Start

    clip = load_16k("ldc93s1.wav")
    hi = soxr.resample(clip, RATE, 48000).astype(np.float32)
    dec = AudioDecoder(Start(sample_rate=48000, encoding="pcm_f32le"))
    out = [dec.decode(encode(hi[i:i + 960], "pcm_f32le")) for i in range(0, len(hi), 960)] + [dec.flush()]
    assert abs(sum(map(len, out)) - len(clip)) <= 1


async def recv_json(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout=30))


@pytest.mark.parametrize("start, code", [
    ({"type": "start", "sample_rate": 12345}, "unsupported_sample_rate"),
    ({"type": "start", "sample_rate": "16000"}, "unsupported_sample_rate"),
    ({"type": "start", "sample_rate": 16000, "encoding": "mp3"}, "unsupported_encoding"),
    ({"type": "start", "sample_rate": 16000, "channels": 2}, "unsupported_channels"),
    ({"type": "begin"}, "unknown_type"),
    ({"sample_rate": 16000}, "bad_message"),
    ([1, 2, 3], "bad_message"),
    ("{not json", "bad_json"),
    ({"type": "finalize"}, "not_started"),
    ({"type": "stop"}, "not_started"),
])
async def test_bad_start_gets_an_error_and_the_connection_stays_usable(cpu_url, start, code):
    async with connect(cpu_url) as ws:
        await ws.send(encode(np.zeros(800, np.float32), "pcm_s16le"))  # audio before start
        assert (await recv_json(ws))["code"] == "not_started"
        await ws.send(start if isinstance(start, str) else json.dumps(start))
        err = await recv_json(ws)
        assert err["type"] == "error" and err["code"] == code and err["message"]
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv_json(ws))["type"] == "pong"
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1}))
        assert (await recv_json(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
        assert (await recv_json(ws))["code"] == "already_started"
        await ws.send(b"\x00\x01\x02")  # odd byte count for s16
        assert (await recv_json(ws))["code"] == "bad_audio"
        await ws.send(json.dumps({"type": "stop"}))
        assert (await recv_json(ws))["type"] == "end"


async def test_finalize_closes_the_open_window_now(cpu_url):
    audio = load_16k("jfk_16k.wav")
    async with connect(cpu_url) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
        assert (await recv_json(ws))["type"] == "ready"
        for i in range(0, 3 * RATE, 800):
            await ws.send(encode(audio[i:i + 800], "pcm_s16le"))
        await ws.send(json.dumps({"type": "finalize"}))
        while (msg := await recv_json(ws))["type"] != "final":
            assert msg["type"] == "partial"
        assert msg["segment"] == 0 and msg["end"] == 3.0 and msg["text"]
        await ws.send(json.dumps({"type": "stop"}))
        assert (await recv_json(ws))["type"] == "end"


def test_healthz_and_page(cpu_url):
    import urllib.request

    base = http_base(cpu_url)
    status = health(cpu_url)
    assert status["status"] == "ok" and status["backend"] == "whisper" and "sessions" in status
    lag = status["loop_lag"]  # measured since the server started: its probe has run
    assert lag["recent_max_ms"] is not None and 0 <= lag["recent_p99_ms"] <= lag["recent_max_ms"] <= lag["max_ms"]
    assert lag["over_250ms"] == 0 or lag["max_ms"] >= 250  # a lag counted as blocking shows in the maximum
    page = urllib.request.urlopen(base + "/", timeout=10)
    assert page.headers["Content-Type"].startswith("text/html")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(base + "/..%2f..%2fetc/passwd", timeout=10)
    assert exc.value.code == 404


async def test_metrics_count_what_a_stream_did(cpu_url):
    before = scrape(cpu_url)
    assert before["captions_up"] == 1
    names = ["ldc93s1.wav", "uberi_one_two_three.wav"]
    audio, _ = join_with_silence(names, [1.0, 1.5])
    result = await stream_audio(audio, RATE, cpu_url, speed=0)
    blocked_before = health(cpu_url)["loop_lag"]["over_250ms"]
    after = scrape(cpu_url)
    blocked_after = health(cpu_url)["loop_lag"]["over_250ms"]
    finals = 'captions_window_latency_seconds_count{kind=final}'
    assert after[finals] - before.get(finals, 0) >= len(result.finals) == len(names)
    assert after["captions_engine_windows_total"] - before["captions_engine_windows_total"] >= len(names)
    assert after["captions_engine_audio_seconds_total"] > before["captions_engine_audio_seconds_total"]
    assert after["captions_batch_size_count"] > before.get("captions_batch_size_count", 0)
    # every final waited less than the slowest bucket, and no final is counted twice
    assert after['captions_window_latency_seconds_bucket{kind=final,le=+Inf}'] == after[finals]
    # the loop-lag counter /healthz reports, read between two reads of it
    assert blocked_before <= after["captions_event_loop_blocked_total"] <= blocked_after
    assert after["captions_resident_memory_bytes"] > 1e7
