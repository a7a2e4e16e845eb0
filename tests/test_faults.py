"""Faults and shutdown lose nothing: SIGTERM flushes open windows into finals that are persisted and delivered,
transcripts survive a restart, and a failing or stuck backend fails only its own windows."""
import asyncio
import json
import signal
import urllib.request

import pytest
from srt import parse as parse_srt
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client.stream import encode, stream_audio
from server.config import load_config
from server.core.engine import Engine
from server.httpapi.health import health
from server.app import CaptionServer

from .support.audio import RATE, continuous_speech, join_with_silence, load_16k
from .support.peers import FaultyBackend
from .support.servers import http_base, server_process
from .support.v1 import read_all_sent, recv
from .support.waits import until


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


async def test_sigterm_flushes_open_windows_then_transcripts_survive_a_restart(tmp_path):
    data = tmp_path / "data"
    audio = load_16k("jfk_16k.wav")[:int(6.5 * RATE)]  # mid-sentence: the window is still open
    args = ("--backend", "whisper", "--data-dir", str(data))
    with server_process(*args, log_path=tmp_path / "a.log") as (url, proc):
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
            session = (await recv(ws))["session"]
            for i in range(0, len(audio), 1600):
                await ws.send(encode(audio[i:i + 1600], "pcm_s16le"))
            messages = []
            await read_all_sent(ws, messages)  # the window the signal must flush holds all 6.5 s
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                while True:
                    messages.append(await recv(ws))
        assert ws.close_code == 1001
        assert messages[-1] == {"type": "end", "reason": "shutdown"}
        finals = [m for m in messages if m["type"] == "final"]
        assert finals and finals[-1]["end"] == pytest.approx(6.5) and "fellow" in " ".join(f["text"] for f in finals)
        assert proc.wait(timeout=30) == 0
    stored = [json.loads(line) for line in (data / "sessions" / f"{session}.jsonl").read_text().splitlines()]
    assert [(s["segment"], s["text"]) for s in stored] == [(f["segment"], f["text"]) for f in finals]

    with server_process(*args, log_path=tmp_path / "b.log") as (url, _):
        status, body = get(f"{http_base(url)}/v1/transcripts/{session}.json")
        assert status == 200 and [f["text"] for f in json.loads(body)["finals"]] == [f["text"] for f in finals]
        status, srt = get(f"{http_base(url)}/v1/transcripts/{session}.srt")
        # cues cut at word times, on two lines at most: the words are all there, in order
        cue_words = " ".join(c.content for c in parse_srt(srt)).split()
        assert srt.startswith("1\n00:00:00,") and cue_words == " ".join(f["text"] for f in finals).split()
        _, vtt = get(f"{http_base(url)}/v1/transcripts/{session}.vtt")
        _, txt = get(f"{http_base(url)}/v1/transcripts/{session}.txt")
        assert vtt.startswith("WEBVTT") and txt.split() == " ".join(f["text"] for f in finals).split()


async def test_a_second_signal_exits_at_once(tmp_path):
    log = tmp_path / "s.log"
    with server_process("--backend", "whisper", "--data-dir", str(tmp_path), log_path=log) as (url, proc):
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
            await recv(ws)
            speech = continuous_speech(25.0)
            for i in range(0, len(speech), RATE // 2):  # 25 s of speech queued: flushing it takes a while
                await ws.send(encode(speech[i:i + RATE // 2], "pcm_s16le"))
            proc.send_signal(signal.SIGTERM)
            await until(lambda: "shutting down: flushing open streams" in log.read_text(), timeout=30,
                        what="the server to take the first signal")
            proc.send_signal(signal.SIGTERM)
            # exit status 1 is the second signal's (a finished flush exits 0, a missed deadline 3)
            assert await asyncio.to_thread(proc.wait, 30) == 1
    assert "second signal: exiting now" in log.read_text()


async def run_in_process(backend, tmp_path, **overrides):
    cfg = load_config(None, {"server.port": 0, "server.data_dir": str(tmp_path),
                             "segmenter.partial_interval_s": 1000, **overrides})  # finals only: batches countable
    server = CaptionServer(cfg, Engine(backend, cfg.engine))
    await server.start()
    return server, f"ws://127.0.0.1:{server.port}/v1/listen"


async def test_a_backend_fault_fails_only_its_windows(tmp_path):
    # (a batch that times out stalls the engine instead: test_lossless.py)
    backend = FaultyBackend(fail=[1])
    server, url = await run_in_process(backend, tmp_path)
    try:
        audio, _ = join_with_silence(["ldc93s1.wav", "uberi_one_two_three.wav"], [1.0, 1.0])
        hit = await stream_audio(audio, RATE, url, speed=2.0)
        errors = [m for m in hit.messages if m["type"] == "error"]
        assert [(e["code"], e["segment"]) for e in errors] == [("backend_error", 0)]
        assert [(f["segment"], bool(f["text"])) for f in hit.finals] == [(0, False), (1, True)]
        assert hit.messages[-1]["type"] == "end" and hit.close_code == 1000
        after = await stream_audio(load_16k("ldc93s1.wav"), RATE, url, speed=0)  # the server carries on
        assert after.finals[0]["text"] and not [m for m in after.messages if m["type"] == "error"]
        assert health(server)[0]["engine"]["failed_windows"] == 1  # what an operator sees, in /metrics too
        assert b"\ncaptions_engine_failed_windows_total 1.0\n" in server.metrics.render()
    finally:
        await server.shutdown()
