"""Faults and shutdown lose nothing: SIGTERM flushes open windows into finals that are persisted and delivered,
transcripts survive a restart, and a failing or stuck backend fails only its own windows."""
import asyncio
import json
import signal
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client.stream import encode, stream_audio
from server.backends.whisper import WhisperBackend
from server.config import load_config
from server.core.engine import Engine
from server.httpapi.health import health
from server.app import CaptionServer

from .helpers import RATE, continuous_speech, http_base, join_with_silence, load_16k, server_process


async def recv(ws, timeout=60) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


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
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            messages = []
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
        assert srt.startswith("1\n00:00:00,") and finals[-1]["text"] in srt
        _, vtt = get(f"{http_base(url)}/v1/transcripts/{session}.vtt")
        _, txt = get(f"{http_base(url)}/v1/transcripts/{session}.txt")
        assert vtt.startswith("WEBVTT") and txt.split() == " ".join(f["text"] for f in finals).split()


async def test_a_second_signal_exits_at_once(tmp_path):
    with server_process("--backend", "whisper", "--data-dir", str(tmp_path),
                        log_path=tmp_path / "s.log") as (url, proc):
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
            await recv(ws)
            speech = continuous_speech(25.0)
            for i in range(0, len(speech), RATE // 2):  # 25 s of speech queued: flushing it takes a while
                await ws.send(encode(speech[i:i + RATE // 2], "pcm_s16le"))
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 1
            assert time.monotonic() - t0 < 3


class FaultyBackend:
    """The real embedded backend with injected faults: batches number `fail` raise, number `hang` stall."""

    def __init__(self, fail=(), hang=(), hang_s=3.0):
        self.inner = WhisperBackend()
        self.name, self.model, self.reason = "whisper", self.inner.model, "test: fault injection"
        self.uses_drafts, self.costly_batches = False, self.inner.costly_batches
        self.calls = 0
        self.fail, self.hang, self.hang_s = set(fail), set(hang), hang_s

    def transcribe(self, audios, drafts=None, contexts=None):
        self.calls += 1
        if self.calls in self.fail:
            raise RuntimeError("injected fault")
        if self.calls in self.hang:
            time.sleep(self.hang_s)
        return self.inner.transcribe(audios, drafts, contexts)

    def decode_stats(self):
        return None

    def close(self):
        self.inner.close()


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
