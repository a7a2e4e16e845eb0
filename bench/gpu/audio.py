"""bench.gpu's audio: the shared clips (or seeded noise where they are absent) and the offline batch cut from it."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
AUDIO = ROOT.parent / "shared" / "audio"
RATE = 16000


def speech_source(seconds: float) -> tuple[np.ndarray, str]:
    """`seconds` of audio: the shared clips joined and repeated, or seeded noise where they are absent (the GPU
    machine gets the repository only; for random weights the content changes nothing)."""
    manifest = AUDIO / "MANIFEST.tsv"
    if manifest.exists():
        import csv

        from ..clips import load_16k

        with open(manifest, newline="") as f:
            names = [row["name"] for row in csv.DictReader(f, delimiter="\t")]
        joined = np.concatenate([load_16k(AUDIO / n) for n in names])
        what = f"{len(names)} shared clips, joined and repeated"
    else:
        joined = (np.random.default_rng(0).standard_normal(60 * RATE) * 0.05).astype(np.float32)
        what = "seeded noise (../shared/audio not found)"
    reps = math.ceil(seconds * RATE / len(joined))
    return np.tile(joined, reps)[: int(seconds * RATE)].astype(np.float32), what


def cut_clips(source: np.ndarray, count: int, clip_s: float) -> list[np.ndarray]:
    n = int(clip_s * RATE)
    starts = [int((i * 3.7 * RATE) % (len(source) - n)) for i in range(count)]
    return [source[s:s + n].copy() for s in starts]
