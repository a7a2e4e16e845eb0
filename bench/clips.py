"""Benchmark clips: the manifest's rows as 16 kHz float32 audio with a clean reference text, plus white noise."""
from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 16000
FRAME = RATE // 100  # 10 ms: resolution of the speech-energy mask
SPEECH_DB = -20.0  # a frame counts as speech within this many dB of the clip's loud (95th percentile) frames


@dataclass
class Clip:
    name: str
    reference: str
    audio: np.ndarray  # float32 mono 16 kHz, what is streamed (noise included, if any)
    clean: np.ndarray  # the same without noise: where speech is, for latency
    overlapping: bool = False  # two voices at once: a single-speaker ASR cannot transcribe both

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE


def load_16k(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)  # stereo is mixed down: the server takes one channel
    return audio if rate == RATE else soxr.resample(audio, rate, RATE).astype(np.float32)


def clean_reference(text: str) -> str:
    """Drops speaker/channel markers such as "[left]": they are annotations, not words anyone said."""
    return " ".join(re.sub(r"\[[^\]]*\]", " ", text).split())


def is_overlapping(row: dict) -> bool:
    """Two speakers at once: channel markers (mixed to mono here) or notes that say the turns overlap."""
    return "[left]" in row["transcript"] or "overlapping" in row.get("notes", "").lower()


def read_manifest(path: Path, count: int | None = None) -> list[Clip]:
    """`count` clips from a TSV with `name` (relative to its folder) and `transcript`, cycling if it is larger."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path} has no rows")
    loaded: dict[str, Clip] = {}
    clips = []
    for row in itertools.islice(itertools.cycle(rows), len(rows) if count is None else count):
        if row["name"] not in loaded:
            audio = load_16k(path.parent / row["name"])
            loaded[row["name"]] = Clip(row["name"], clean_reference(row["transcript"]), audio, audio,
                                       is_overlapping(row))
        clips.append(loaded[row["name"]])
    return clips


def frame_power(audio: np.ndarray) -> np.ndarray:
    n = len(audio) // FRAME
    return np.square(audio[:n * FRAME].reshape(n, FRAME).astype(np.float64)).mean(axis=1)


def speech_mask(audio: np.ndarray) -> np.ndarray:
    """One bool per 10 ms frame: loud enough to be speech. Relative to the clip, as levels differ by 20 dB."""
    power = frame_power(audio)
    if not len(power) or power.max() == 0:
        return np.zeros(len(power), bool)
    return power >= np.percentile(power, 95) * 10 ** (SPEECH_DB / 10)


def speech_end(clean: np.ndarray, start: int, end: int) -> int:
    """The sample after the last speech frame in [start, end); `end` if the window holds no speech."""
    mask = speech_mask(clean)
    first, last = start // FRAME, min(end // FRAME, len(mask))
    voiced = np.flatnonzero(mask[first:last])
    return min(end, (first + voiced[-1] + 1) * FRAME) if len(voiced) else end


def trim(audio: np.ndarray, margin_s: float = 0.1) -> np.ndarray:
    """Cuts the silence before the first and after the last speech frame, keeping a short margin."""
    voiced = np.flatnonzero(speech_mask(audio))
    if not len(voiced):
        return audio
    margin = int(margin_s * RATE)
    return audio[max(0, voiced[0] * FRAME - margin):(voiced[-1] + 1) * FRAME + margin]


def add_noise(clip: Clip, snr_db: float, seed: int) -> Clip:
    """White noise at `snr_db` below the speech power (speech frames only, so pauses do not dilute it)."""
    power = frame_power(clip.clean)[speech_mask(clip.clean)]
    speech_power = power.mean() if len(power) else 0.0
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(len(clip.clean)) * np.sqrt(speech_power * 10 ** (-snr_db / 10))
    noisy = np.clip(clip.clean + noise, -1.0, 1.0).astype(np.float32)
    return Clip(clip.name, clip.reference, noisy, clip.clean, clip.overlapping)
