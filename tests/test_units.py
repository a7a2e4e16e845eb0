"""Small pure parts: config loading, the protocol parser, the engine's scheduling, the caption writers."""
import asyncio
import json
import threading
import time

import numpy as np
import pytest

from caption_formats import to_srt, to_txt, to_vtt
from server.backends.transcript import Transcript
from server.config import EngineConfig, load_config
from server.core import errors as E
from server.core import requests as Q
from server.core.engine import BackendError, Engine
from server.streams import protocol as P

from .support.waits import until


def test_default_config_loads_and_cli_overrides_win(tmp_path):
    cfg = load_config()
    assert cfg.backend.name == "auto" and cfg.segmenter.max_window_s == 10.0
    cfg = load_config(None, {"server.port": "0", "segmenter.vad": "silero", "backend.model": None})
    assert cfg.server.port == 0 and cfg.segmenter.vad == "silero" and cfg.backend.model == ""
    # each backend has its own default model, and its own options section
    assert cfg.backend.salm.model == "nvidia/canary-qwen-2.5b" and cfg.backend.whisper.model == ""
    assert cfg.backend.whisper.compute_type == "auto" and cfg.backend.salm.static_cache_len == 0


def test_auto_is_salm_on_a_cuda_gpu_and_whisper_otherwise(monkeypatch):
    from server import backends

    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    assert backends.choose("auto", "auto")[:2] == ("whisper", "cpu")
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    assert backends.choose("auto", "auto")[:2] == ("salm", "cuda")
    assert backends.choose("whisper", "auto")[:2] == ("whisper", "cuda")
    assert backends.choose("salm", "cpu") == ("salm", "cpu", "backend 'salm' was asked for")


def test_set_wins_over_every_flag_the_user_did_not_give():
    from server.__main__ import FLAG_KEYS, overrides, parse_args

    for flag, key in FLAG_KEYS.items():
        value = {"port": "1234", "backend": "salm", "device": "cpu", "vad": "silero"}.get(flag, "/tmp/x")
        assert overrides(parse_args(["--set", f"{key}={value}"])) == {key: value}, flag
        cli = "--" + flag.replace("_", "-")
        assert overrides(parse_args([cli, value]))[key] == (int(value) if flag == "port" else value), flag
    # a --set given with a flag for the same key wins too (it is applied last)
    assert overrides(parse_args(["--port", "1", "--set", "server.port=2"])) == {"server.port": "2"}
    cfg = load_config(None, overrides(parse_args(["--set", "server.data_dir=/tmp/x", "--set", "backend.name=salm"])))
    assert cfg.server.data_dir == "/tmp/x" and cfg.backend.name == "salm"


@pytest.mark.parametrize("yaml_text, message", [
    ("segmenter:\n  hangovr_ms: 300\n", "hangovr_ms"),
    ("backend:\n  name: sphinx\n", "backend.name"),
    ("backend:\n  static_cache_len: 3\n", "static_cache_len"),  # a SALM option lives in backend.salm
    ("segmenter:\n  frame_ms: 25\n", "frame_ms"),
    ("backend:\n  salm:\n    cuda_graphs: maybe\n", "cuda_graphs: 'maybe' is not a boolean"),
    ("segmenter:\n  partial_interval_s: 0\n", "partial_interval_s must be > 0"),
    ("limits:\n  max_audio_rate: 0\n", "max_audio_rate must be > 0"),
    ("limits:\n  shutdown_deadline_s: -1\n", "shutdown_deadline_s must be > 0"),
    ("engine:\n  max_wait_ms: -5\n", "max_wait_ms"),
    ("backend:\n  whisper:\n    modle: x\n", "backend.whisper: modle"),
])
def test_bad_config_is_refused_with_a_clear_message(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_boolean_overrides_from_the_command_line():
    cfg = load_config(None, {"backend.salm.cuda_graphs": "on", "engine.drafts": "False",
                             "engine.bucket_by_length": "1"})
    assert cfg.backend.salm.cuda_graphs is True and cfg.engine.drafts is False and cfg.engine.bucket_by_length is True
    with pytest.raises(ValueError, match="engine.drafts: 'ture' is not a boolean"):
        load_config(None, {"engine.drafts": "ture"})


def test_start_defaults_and_all_accepted_rates():
    assert P.parse_client_text('{"type":"start"}') == Q.Start(16000, "pcm_s16le", 1)
    for rate in Q.SAMPLE_RATES:
        msg = P.parse_client_text(json.dumps({"type": "start", "sample_rate": rate, "encoding": "pcm_f32le"}))
        assert msg.sample_rate == rate and msg.bytes_per_sample == 4


@pytest.mark.parametrize("text, code", [
    ("", E.BAD_JSON), ("null", E.BAD_MESSAGE), ('"start"', E.BAD_MESSAGE), ('{"type": 3}', E.BAD_MESSAGE),
    ('{"type":"start","sample_rate":16000.5}', E.UNSUPPORTED_SAMPLE_RATE),
    ('{"type":"start","sample_rate":true}', E.UNSUPPORTED_SAMPLE_RATE),
    ('{"type":"start","channels":true}', E.UNSUPPORTED_CHANNELS),
    ('{"type":"x"}', E.UNKNOWN_TYPE), ('{"type":"' + "a" * 70000 + '"}', E.BAD_MESSAGE),
])
def test_parser_errors(text, code):
    with pytest.raises(E.ProtocolError) as exc:
        P.parse_client_text(text)
    assert exc.value.code == code and exc.value.message


class RecordingBackend:
    """A scheduling probe, not a model: it records the batches it is given and echoes each window's length."""

    name, model, reason = "probe", "probe", "test"
    uses_drafts = costly_batches = False

    def __init__(self, fail_on: int | None = None):
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.busy = threading.Event()  # set once a batch is in transcribe()
        self.fail_on = fail_on

    def transcribe(self, audios, drafts=None, contexts=None, timed=None):
        self.busy.set()
        self.gate.wait(5)
        self.batches.append([len(a) for a in audios])
        if self.fail_on in self.batches[-1]:
            raise RuntimeError("boom")
        return [Transcript(str(len(a))) for a in audios]

    def decode_stats(self):
        return None

    def close(self):
        pass


async def held_engine(backend, cfg: EngineConfig):
    """A started engine whose worker is busy with a one-sample final until backend.gate opens, so that what the
    test queues next is batched together."""
    engine = Engine(backend, cfg)
    engine.start()
    blocker = engine.submit("s0", np.zeros(1), final=True)
    assert await asyncio.to_thread(backend.busy.wait, 30)  # the worker holds it
    return engine, blocker


async def test_engine_runs_finals_first_and_supersedes_queued_partials():
    backend = RecordingBackend()
    engine, blocker = await held_engine(backend, EngineConfig(max_batch=3, max_wait_ms=0))
    old = engine.submit("s1", np.zeros(10), final=False)
    new = engine.submit("s1", np.zeros(11), final=False)
    other = engine.submit("s2", np.zeros(20), final=False)
    fin = [engine.submit(f"f{i}", np.zeros(30 + i), final=True) for i in range(3)]
    backend.gate.set()
    assert await old is None  # superseded by the newer partial of the same session
    assert [await f for f in fin] == [Transcript("30"), Transcript("31"), Transcript("32")] and await new == Transcript("11") and await other == Transcript("20")
    assert backend.batches == [[1], [30, 31, 32], [11, 20]]  # finals before partials, at most max_batch
    assert await blocker == Transcript("1")
    await engine.close()


async def test_engine_fills_a_batch_with_partials_near_the_oldest_in_length():
    backend = RecordingBackend()
    engine, blocker = await held_engine(backend, EngineConfig(max_batch=3, max_wait_ms=0))
    # queued oldest first; the oldest (50) must go first, with its two nearest lengths (45, 60), not 10 or 100
    lengths = {"a": 50, "b": 10, "c": 100, "d": 45, "e": 12, "f": 60}
    futures = {s: engine.submit(s, np.zeros(n), final=False) for s, n in lengths.items()}
    fin = engine.submit("g", np.zeros(99), final=True)
    backend.gate.set()
    assert {s: await f for s, f in futures.items()} == {s: Transcript(str(n)) for s, n in lengths.items()}
    assert await fin == Transcript("99") and await blocker == Transcript("1")
    # the final fills one slot and the oldest partial (50) two; then the oldest left (10) with its neighbour
    assert backend.batches == [[1], [99, 45, 50], [10, 12, 60], [100]]
    await engine.close()


async def test_engine_without_bucketing_takes_partials_oldest_first():
    backend = RecordingBackend()
    engine, blocker = await held_engine(backend, EngineConfig(max_batch=2, max_wait_ms=0, bucket_by_length=False))
    futures = [engine.submit(s, np.zeros(n), final=False) for s, n in [("a", 50), ("b", 10), ("c", 49)]]
    backend.gate.set()
    await asyncio.gather(blocker, *futures)
    assert backend.batches == [[1], [50, 10], [49]]
    await engine.close()


async def test_a_scheduling_bug_fails_the_queued_windows_and_the_engine_goes_on(monkeypatch):
    backend = RecordingBackend()
    backend.gate.set()
    engine = Engine(backend, EngineConfig(max_batch=4, max_wait_ms=0))
    real = engine._take_batch
    monkeypatch.setattr(engine, "_take_batch", lambda: 1 / 0)  # once, then the real one
    engine.start()
    doomed = engine.submit("a", np.zeros(3), final=True)
    with pytest.raises(BackendError, match="could not schedule"):
        await asyncio.wait_for(doomed, 5)
    monkeypatch.setattr(engine, "_take_batch", real)
    assert await asyncio.wait_for(engine.submit("b", np.zeros(4), final=True), 5) == Transcript("4")
    await engine.close()


class DraftProbe(RecordingBackend):
    uses_drafts = True

    def __init__(self):
        super().__init__()
        self.gate.set()
        self.drafts: list[list[str | None]] = []

    def transcribe(self, audios, drafts=None, contexts=None, timed=None):
        self.drafts.append(drafts)
        return super().transcribe(audios)


async def test_engine_hands_drafts_only_to_backends_that_take_them():
    backend = DraftProbe()
    engine = Engine(backend, EngineConfig(max_batch=2, max_wait_ms=20))
    engine.start()
    await asyncio.gather(engine.submit("a", np.zeros(5), False, draft="hello"),
                         engine.submit("b", np.zeros(5), True))
    assert backend.drafts == [[None, "hello"]]  # the final first, then the partial with its draft
    await engine.close()

    off = DraftProbe()
    engine = Engine(off, EngineConfig(max_batch=2, max_wait_ms=0, drafts=False))
    engine.start()
    await engine.submit("a", np.zeros(5), False, draft="hello")
    assert off.drafts == [None]  # called with audio alone
    await engine.close()


async def test_engine_backend_failure_fails_only_that_batch():
    backend = RecordingBackend(fail_on=7)
    backend.gate.set()
    engine = Engine(backend, EngineConfig(max_batch=1, max_wait_ms=0))
    engine.start()
    bad, good = engine.submit("a", np.zeros(7), final=True), engine.submit("b", np.zeros(8), final=True)
    with pytest.raises(BackendError, match="boom"):
        await bad
    assert await good == Transcript("8")
    assert engine.stats.failed_windows == 1
    await engine.close()


async def test_engine_reports_each_batch_and_survives_a_failing_observer():
    backend = RecordingBackend()
    backend.gate.set()
    engine = Engine(backend, EngineConfig(max_batch=4, max_wait_ms=0))
    seen: list[list[tuple[bool, float]]] = []

    def observe(windows):
        seen.append(windows)
        raise ValueError("a broken metrics hook")

    engine.on_batch = observe
    engine.start()
    t0 = time.monotonic()
    assert await engine.submit("a", np.zeros(5), final=True) == Transcript("5")
    assert await asyncio.wait_for(engine.submit("b", np.zeros(6), final=False), 10) == Transcript("6")  # the engine went on
    took = time.monotonic() - t0
    assert [[final for final, _ in batch] for batch in seen] == [[True], [False]]
    assert all(0 <= wait <= took for batch in seen for _, wait in batch)  # seconds, each within the test's own
    await engine.close()


FINALS = [{"start": 0.0, "end": 2.5, "text": "hello  world"}, {"start": 2.5, "end": 2.5, "text": ""},
          {"start": 3661.25, "end": 3662.0, "text": "later"}]


def test_caption_writers():
    assert to_srt(FINALS) == ("1\n00:00:00,000 --> 00:00:02,500\nhello world\n\n"
                              "2\n01:01:01,250 --> 01:01:02,000\nlater\n")
    assert to_vtt(FINALS) == ("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nhello world\n\n"
                              "01:01:01.250 --> 01:01:02.000\nlater\n")
    assert to_txt(FINALS) == "hello world\nlater\n"


async def test_a_final_supersedes_the_queued_partial_of_its_session():
    backend = RecordingBackend()
    engine, blocker = await held_engine(backend, EngineConfig(max_batch=4, max_wait_ms=0))
    partial = engine.submit("s1", np.zeros(10), final=False)
    final = engine.submit("s1", np.zeros(12), final=True)
    backend.gate.set()
    assert await partial is None and await final == Transcript("12") and await blocker == Transcript("1")
    await engine.close()


def test_stable_prefix_counts_leading_words_two_partials_agree_on():
    from server.core.session import stable_prefix

    assert stable_prefix([], "and so my".split()) == 0
    assert stable_prefix("and so my".split(), "and so my fellow".split()) == 3
    assert stable_prefix("and so my fella".split(), "and so my fellow americans".split()) == 3
    assert stable_prefix("an so".split(), "and so".split()) == 0


async def test_loop_lag_shows_a_callback_that_blocks_the_loop(caplog):
    from server.httpapi.looplag import LoopLag

    lag = LoopLag(period_s=0.01)
    lag.start()
    await until(lambda: len(lag.recent) >= 10, timeout=30, what="ten probes")
    quiet = lag.snapshot()  # (a busy machine may have stalled this process already: counted from here)
    asyncio.get_running_loop().call_soon(time.sleep, 0.3)  # what model work on the loop would do
    await until(lambda: lag.over_warn > quiet["over_250ms"], timeout=30, what="the block to be measured")
    lag.stop()
    snap = lag.snapshot()
    # the 300 ms block, in milliseconds (bounded 10x above: the machine may be busy)
    assert 290 <= snap["max_ms"] < 3000 and snap["recent_max_ms"] == snap["max_ms"]
    assert "event loop was blocked for" in caplog.text
