"""`python -m bench.stream` at CI size (2 clips, 2 streams, its own whisper server): the report's keys and sanity,
not its values. Plus the benchmark's small pieces on their own."""
import csv
import json
import shutil
import subprocess
import sys

import numpy as np

from bench.clips import add_noise, clean_reference, frame_power, read_manifest, speech_mask
from bench.meeting import meeting
from bench.metrics import flicker_counts, wer

from .support.audio import AUDIO, ROOT

CLIPS = ["jfk.flac", "stereo_diarization.wav"]  # 11 s of 44.1 kHz stereo FLAC; stereo with channel markers
KEYS = {"wer", "offline_wer", "wer_delta", "final_latency_p50", "final_latency_p95", "partial_latency_p50",
        "partial_latency_p95", "partial_interval_p50", "flicker", "rtf", "streams", "audio_seconds", "per_clip"}


def small_manifest(folder) -> str:
    """The shared manifest's rows for CLIPS, every column kept, next to copies of their audio."""
    with open(AUDIO / "MANIFEST.tsv", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = [row for row in reader if row["name"] in CLIPS]
        fields = reader.fieldnames
    with open(folder / "small.tsv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    for name in CLIPS:
        shutil.copy(AUDIO / name, folder / name)
    return str(folder / "small.tsv")


def test_small_run_reports_every_key_with_sane_values(tmp_path):
    out, png = tmp_path / "out.json", tmp_path / "cdf.png"
    cmd = [sys.executable, "-m", "bench.stream", "--manifest", small_manifest(tmp_path), "--backend", "whisper",
           "--streams", "2", "--speed", "1", "--json", str(out), "--plot", str(png)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert KEYS <= set(rep)
    assert rep["streams"] == 2 and len(rep["per_clip"]) == 2
    assert rep["audio_seconds"] > 10 and rep["finals"] >= 2 and rep["partials"] >= 1
    jfk = rep["per_clip"][0]  # a clean, well-known clip: streamed and offline, tiny.en gets it (near) right
    assert jfk["name"] == "jfk.flac" and jfk["wer"] < 0.2 and jfk["offline_wer"] < 0.2, jfk
    for key in ("final_latency_p50", "final_latency_p95", "partial_latency_p50", "partial_latency_p95", "rtf"):
        assert rep[key] is not None and rep[key] > 0, (key, rep[key], rep["partials"])
    # A busy CI machine may deliver a single partial per window, which leaves no interval to measure.
    assert rep["partial_interval_p50"] is None or rep["partial_interval_p50"] > 0
    assert rep["flicker"] is not None  # the partials showed words, whose changes were counted
    stereo = rep["per_clip"][1]
    assert stereo["overlapping"] and "[left]" not in stereo["reference"]
    assert "| wer |" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flicker_counts_words_that_later_text_replaced():
    partials = [("the cat".split(), 0), ("the cap sat".split(), 1), ("the cap sat on".split(), 3)]
    shown, changed, shown_stable, changed_stable = flicker_counts(partials, "the cap sat on it".split())
    assert (shown, changed) == (9, 1)  # only "cat" was replaced
    assert (shown_stable, changed_stable) == (4, 0)


def test_wer_pools_errors_over_clips():
    assert wer(["a cat sat here", "today"], ["a cat sat here", ""]) == 0.2
    assert wer(["Hello, World!"], ["hello world"]) == 0.0  # normalised before scoring


def test_channel_markers_are_not_reference_words():
    assert clean_reference("[left] He began. [right] The horizon.") == "He began. The horizon."


def test_meeting_runs_past_the_cap_and_pauses_for_three_minutes():
    clips = read_manifest(AUDIO / "MANIFEST.tsv")
    long = meeting(clips, 180)
    assert long.seconds >= 180
    silent = ~speech_mask(long.audio)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, silent.astype(int), 0])))[::2] / 100  # silent runs, s
    assert (runs >= 2.0).sum() >= 5  # pauses that close windows
    assert all(c.reference in long.reference for c in clips)


def test_noise_is_mixed_at_the_asked_snr():
    clip = read_manifest(AUDIO / "MANIFEST.tsv", 3)[2]  # ldc93s1: quiet, with silences around it
    noisy = add_noise(clip, 10.0, seed=1)
    mask = speech_mask(clip.clean)
    noise = noisy.audio - clip.clean
    snr = 10 * np.log10(frame_power(clip.clean)[mask].mean() / np.mean(np.square(noise)))
    assert abs(snr - 10.0) < 0.5 and len(noisy.audio) == len(clip.clean)
