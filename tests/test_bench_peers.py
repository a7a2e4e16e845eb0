"""bench.peers end to end in its CI size: our server only (the peers need a large install), N=2 (one level: each
level is a fresh server and its audio in real time), ~12 s of audio, as a subprocess; the JSON report has every
key, with sane values. Plus the parts that need no server."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bench.peers import RUN_KEYS, max_streams_within, meeting_audio
from bench.peer_clients import FRAME, Final, StreamRun, WhisperLiveClient, WhisperLiveKitClient, wlk_seconds
from bench.clips import RATE, Clip

from .support.audio import ROOT


def test_tiny_run_reports_every_number(tmp_path):
    out = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, "-m", "bench.peers", "--tiny", "--servers", "ours", "--our-backend",
                           "whisper", "--streams", "2", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    cfg = rep["config"]
    assert cfg["streams"] == [2] and cfg["servers"] == ["ours"] and cfg["fresh_server_per_n"] is True
    assert cfg["audio_seconds"] >= 10 and cfg["pause_s"] == 1.5 and cfg["frame_ms"] == 100
    assert cfg["reference_words"] > 0
    assert [r["streams"] for r in rep["runs"]] == [2]
    for run in rep["runs"]:
        assert set(RUN_KEYS) <= set(run), set(RUN_KEYS) - set(run)
        assert run["server"] == "ours" and run["status"] == "ok", run["errors"]
        assert run["wer"] < 0.2, run["transcripts"]  # --tiny streams jfk.flac: tiny.en gets it (near) right
        assert run["finals"] > 0
        assert 0 < run["final_latency_p50"] <= run["final_latency_p95"] < 60
        assert all(x > 0 for x in run["final_latencies"])
        assert run["partials"] >= 1
        assert run["partials_per_stream_s"] == pytest.approx(run["partials"] / (run["streams"] * run["audio_seconds"]))
        assert run["server_cpu_seconds"] > 0 and run["server_cpu_per_audio_second"] > 0
        assert run["audio_seconds"] == cfg["audio_seconds"]
        assert run["wall_seconds"] >= run["audio_seconds"]
        assert run["unfinished_streams"] == 0 and run["failed_streams"] == 0 and run["errors"] == []
        assert len(run["transcripts"]) == run["streams"]
    ours = rep["servers"]["ours"]
    assert ours["max_streams_p95_within_3s"] == max_streams_within(rep["runs"])
    assert ours["settings"]["backend"] == "whisper" and ours["settings"]["compute_type"] == "int8"
    assert "| ours | 2 |" in proc.stdout


def test_meeting_audio_joins_clips_with_pauses():
    a = Clip("a", "one", np.full(RATE, 0.5, np.float32), np.full(RATE, 0.5, np.float32))
    b = Clip("b", "two", np.full(RATE // 2, 0.5, np.float32), np.full(RATE // 2, 0.5, np.float32))
    audio, reference, names = meeting_audio([a, b], min_seconds=5.0)
    assert names == ["a", "b", "a"] and reference == "one two one"
    assert len(audio) == 3 * int(1.5 * RATE) + 2 * len(a.audio) + len(b.audio)
    assert not audio[len(a.audio):len(a.audio) + int(1.5 * RATE)].any()  # the pause is digital silence


def test_max_streams_within_needs_every_smaller_n():
    def run(n, p95, status="ok"):
        return {"streams": n, "final_latency_p95": p95, "status": status}
    assert max_streams_within([run(1, 1.0), run(2, 2.9), run(4, 3.5), run(8, 2.0)]) == 2
    assert max_streams_within([run(1, 9.0), run(2, 2.0)]) is None
    assert max_streams_within([run(1, 1.0), run(2, None)]) == 1  # no finals: not within
    assert max_streams_within([run(1, 1.0), run(2, None, "skipped")]) == 1


def test_latency_is_measured_from_the_frame_holding_the_end():
    run = StreamRun(0, sent_at=[10.0 + 0.1 * i for i in range(10)])
    assert run.sent_time(0.25) == pytest.approx(10.2)  # sample 3999 is in frame 2
    assert run.sent_time(0.3) == pytest.approx(10.2)  # the end is exclusive: sample 4799 is in frame 2
    assert run.sent_time(5.0) == pytest.approx(10.9)  # past the audio: the last frame
    assert FRAME == RATE // 10


def test_whisperlive_segments_become_finals_once_and_partials_on_change():
    client = WhisperLiveClient("ws://unused", np.zeros(RATE, np.float32), StreamRun(0))
    seg = lambda s, e, t, c: {"start": s, "end": e, "text": t, "completed": c}  # noqa: E731
    client.on_message(1.0, {"uid": client.uid, "segments": [seg("0.000", "1.000", "hello", False)]})
    client.on_message(2.0, {"uid": client.uid, "segments": [seg("0.000", "1.500", "hello there", False)]})
    client.on_message(3.0, {"uid": client.uid, "segments": [seg("0.000", "1.500", "hello there", False)]})
    client.on_message(4.0, {"uid": client.uid, "segments": [seg("0.000", "1.500", "hello there", True),
                                                            seg("2.000", "2.500", "again", False)]})
    client.on_message(5.0, {"uid": client.uid, "segments": [seg("0.000", "1.500", "hello there", True),
                                                            seg("2.000", "3.000", "again and", True)]})
    client.on_message(6.0, {"uid": "someone else", "segments": [seg("9.000", "9.500", "no", True)]})
    assert [(f.arrival, f.start, f.end, f.text) for f in client.run.finals] == [
        (4.0, 0.0, 1.5, "hello there"), (5.0, 2.0, 3.0, "again and")]
    assert client.run.partials == [1.0, 2.0, 4.0]
    assert client.pending is None


def test_whisperlivekit_commits_become_finals():
    client = WhisperLiveKitClient("ws://unused", np.zeros(RATE, np.float32), StreamRun(0))
    client.lines, client.buffer = {}, ""
    line = lambda s, e, t, sp=1: {"speaker": sp, "text": t, "start": s, "end": e}  # noqa: E731
    client.on_message(1.0, {"lines": [], "buffer_transcription": "and so"})
    client.on_message(2.0, {"lines": [line("0:00:00.50", "0:00:01.20", "And so")], "buffer_transcription": "my"})
    client.on_message(3.0, {"lines": [line("0:00:00.50", "0:00:02.00", "And so my fellow"),
                                      line("0:00:02.00", "0:00:04.00", None, -2)], "buffer_transcription": ""})
    client.on_message(4.0, {"lines": [line("0:00:00.50", "0:00:02.00", "And so my fellow"),
                                      line("0:01:04.00", "0:01:05.00", "Ask not")], "buffer_transcription": ""})
    assert [(f.arrival, f.end, f.text) for f in client.run.finals] == [
        (2.0, 1.2, "And so"), (3.0, 2.0, "my fellow"), (4.0, 65.0, "Ask not")]
    assert client.run.partials == [1.0, 2.0]
    assert wlk_seconds("1:02:03.25") == pytest.approx(3723.25)
    assert isinstance(client.run.finals[0], Final)
