"""CI-sized soak with drops: `python -m bench.soak --clients 15 --seconds 20 --drop-share 0.2` against a real server
with the tiny SALM (3 of the clients drop mid-speech and resume); and the soak's accounting itself, on made-up
finals, so that a loss it should report cannot pass unseen."""
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from bench.soak.accounting import account
from bench.soak.audio import RATE, SEND_FRAME, Stream, plan_drop, reference_windows, speech_and_pauses
from bench.soak.clients import SendLog, final_latencies
from server.config import load_config

from .support.audio import ROOT


def test_soak_15_clients_3_resumed_lose_no_final(tmp_path, tiny_salm_dir):
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--clients", "15", "--seconds", "20",
                           "--drop-share", "0.2", "--model", str(tiny_salm_dir), "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.exists(), proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    flagged = json.dumps(report["flagged_clients"])[:3000]  # each client with anything wrong, its finals in full
    assert report["drops"] == report["resumes"] == 3 and not report["resume_failures"], report["resume_failures"]
    assert report["utterances"] == sum(len(speech_and_pauses(20.0, n % 2).spans) for n in range(15))
    # Every drop cut an open window in two: its flushed part came back resent, the rest is a final of its own.
    assert report["finals_expected"] == report["utterances"] + 3
    assert report["finals"] == report["finals_expected"] + report["split_finals"], flagged
    assert report["resent_finals"] >= 3 and report["redelivered_finals"] == 0, flagged
    assert report["lost_finals"] == report["clipped_finals"] == report["missing_segments"] == 0, flagged
    assert report["doubled_finals"] == report["errors"] == report["finals_ahead_of_audio"] == 0, flagged
    assert report["speech_outside_windows_s"] == 0
    assert not report["crashed_clients"] and report["unended_streams"] == 0, report["crashed_clients"]
    # Each from the moment the final's last sample left the client: a decode later, never before.
    assert 0 < report["final_latency_min"] <= report["final_latency_p50"] <= report["final_latency_p95"]
    engine = report["server"]["engine"]  # every final decoded, none from a failed or timed-out batch
    assert engine["failed_windows"] == 0 and engine["windows"] >= report["finals"], engine
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_the_soak_audio_gives_one_window_per_utterance_and_drops_fall_inside_one():
    stream = speech_and_pauses(25.0, 1)
    windows = reference_windows(stream.audio, load_config().segmenter)
    assert len(windows) == len(stream.spans) >= 5
    for (ws, we), (us, ue), runs in zip(windows, stream.spans, stream.speech):
        assert ws < us * RATE + 0.3 * RATE and we > ue * RATE - 0.3 * RATE
        assert ws <= runs[0][0] and runs[-1][1] <= we  # all the speech inside its window
    stream.windows = windows
    for seed in range(50):
        at = plan_drop(stream, random.Random(seed))
        assert at % SEND_FRAME == 0 and at < stream.speech[-1][0][0]  # never in the last utterance
        assert any(a <= at < b for runs in stream.speech for a, b in runs)  # on speech
        assert any(ws + 0.4 * RATE <= at < we for ws, we in windows)  # its window long open


def made_up_stream() -> Stream:
    """10 s: two utterances, one at 1-2 s (speech at 1-1.5 s and 1.6-1.9 s), one at 5-7 s; a window around each."""
    speech = [[(16000, 24000), (25600, 30400)], [(80000, 112000)]]
    return Stream(np.zeros(10 * RATE, np.float32), [(1.0, 2.0), (5.0, 7.0)], speech,
                  windows=[(11200, 40000), (75200, 121600)], vad_frame=480)


def final(segment, start, end, text="x", **extra) -> dict:
    return {"type": "final", "segment": segment, "start": start, "end": end, "text": text, **extra}


def test_the_accounting_passes_exactly_the_finals_expected():
    stream = made_up_stream()
    whole = account([final(0, 0.7, 2.5), final(1, 4.7, 7.6)], stream, None)
    assert (whole["finals"], whole["finals_expected"], whole["lost"], whole["clipped"], whole["doubled"],
            whole["missing_segments"], whole["speech_outside_windows_s"]) == (2, 2, 0, 0, 0, 0, 0.0)
    # A drop at 1.5 s: the flushed part (resent) and the rest, tiling the window exactly.
    cut = account([final(0, 0.7, 1.5, resent=True), final(1, 1.5, 2.5), final(2, 4.7, 7.6)], stream, 1.5)
    assert (cut["finals"], cut["finals_expected"], cut["lost"], cut["clipped"], cut["doubled"], cut["split"]) \
        == (3, 3, 0, 0, 0, 0)
    # Resuming at a final's end between windows cuts nothing.
    assert account([final(0, 0.7, 2.5), final(1, 4.7, 7.6)], stream, 2.5)["finals_expected"] == 2


def test_the_accounting_reports_every_loss_and_double():
    stream = made_up_stream()
    lost = account([final(0, 0.7, 2.5)], stream, None)  # the second window never came
    assert lost["lost"] == 1 and lost["lost_speech_s"] == 2.0 and lost["finals"] == 1 < lost["finals_expected"]
    # A drop at 1.3 s, and the rest of its window (0.5 s of speech) never came: lost too.
    rest = account([final(0, 0.7, 1.3, resent=True), final(1, 4.7, 7.6)], stream, 1.3)
    assert (rest["lost"], rest["clipped"], rest["finals"], rest["finals_expected"]) == (1, 0, 2, 3)
    assert abs(rest["lost_speech_s"] - 0.5) < 1e-9 and rest["speech_missed_at"] == [(1.3, 2.5, 0.5)]
    # The rest after a resume began 60 ms late, on speech: clipped, though every segment is there.
    clipped = account([final(0, 0.7, 1.3), final(1, 1.36, 2.5), final(2, 4.7, 7.6)], stream, 1.3)
    assert clipped["clipped"] == 1 and abs(clipped["clipped_speech_s"] - 0.06) < 1e-9 and clipped["lost"] == 0
    assert clipped["speech_missed_at"] == [(1.3, 2.5, 0.06)]
    # The rest in two finals, tiling it: split, nothing lost.
    split = account([final(0, 0.7, 1.3), final(1, 1.3, 1.55), final(2, 1.55, 2.5), final(3, 4.7, 7.6)], stream, 1.3)
    assert (split["split"], split["lost"], split["clipped"], split["doubled"]) == (1, 0, 0, 0)
    # 20 ms late is within one 30 ms VAD frame (a resumed stream's frames start at the resume point): jitter.
    jitter = account([final(0, 0.7, 1.3), final(1, 1.32, 2.5), final(2, 4.7, 7.6)], stream, 1.3)
    assert jitter["clipped"] == 0 and abs(jitter["jitter_speech_s"] - 0.02) < 1e-9
    # ... and a late start on silence (the 1.9-2.0 s pause) loses nothing.
    assert account([final(0, 0.7, 1.9), final(1, 2.0, 2.5), final(2, 4.7, 7.6)], stream, 1.9)["clipped"] == 0
    gap = account([final(0, 0.7, 2.5), final(2, 4.7, 7.6)], stream, None)  # segment 1 skipped
    assert gap["missing_segments"] == 1 and gap["lost"] == 0
    twice = account([final(0, 0.7, 2.5), final(0, 0.7, 2.5, "y"), final(1, 4.7, 7.6)], stream, None)
    assert twice["doubled"] == 1
    again = account([final(0, 0.7, 2.5), final(0, 0.7, 2.5, resent=True), final(1, 4.7, 7.6)], stream, None)
    assert again["doubled"] == 0 and again["redelivered"] == 1
    overlapping = account([final(0, 0.7, 1.6), final(1, 1.5, 2.5), final(2, 4.7, 7.6)], stream, 1.6)
    assert overlapping["doubled"] == 1
    stray = account([final(0, 0.7, 2.5), final(1, 3.0, 3.5), final(2, 4.7, 7.6)], stream, None)
    assert stray["stray"] == 1 and stray["finals"] == 3 > stray["finals_expected"]


def test_latency_counts_from_the_first_send_of_a_finals_last_sample():
    sent = SendLog()
    sent.ends, sent.times = [1600, 3200, 4800], [10.1, 10.2, 10.3]  # frames [0, 0.1), [0.1, 0.2), [0.2, 0.3) s
    sent.sending(3200)  # a resumed client's resent backlog: not a first send
    assert (sent.ends, sent.times) == ([1600, 3200, 4800], [10.1, 10.2, 10.3])
    arrivals = [(10.25, final(0, 0.0, 0.15)),  # sample 2399 first left at 10.2 s
                (10.35, final(1, 0.15, 0.2)),  # the end is exclusive: sample 3199 left at 10.2 s too
                (10.9, final(1, 0.15, 0.2, resent=True)),  # delivered before the drop: not counted again
                (10.25, final(2, 0.2, 0.3)),  # sample 4799 left only at 10.3 s: this final is ahead of its audio
                (10.5, final(3, 0.3, 0.35)),  # never sent at all
                (11.0, final(4, 0.35, 0.5))]  # the stop's flush, at the audio's end (0.5 s): not counted
    latencies, ahead = final_latencies(arrivals, sent, seconds=0.5)
    assert latencies == pytest.approx([0.05, 0.15]) and ahead == 2
