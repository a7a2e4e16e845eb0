"""Real speech from ../shared/audio as the tests use it: clips at 16 kHz, clips joined with pauses, continuous
speech, and how close a transcript is to a clip's (WER, heard)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[2]
AUDIO = ROOT.parent / "shared" / "audio"
RATE = 16000


def manifest() -> dict[str, dict]:
    with open(AUDIO / "MANIFEST.tsv", newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f, delimiter="\t")}


def transcript(name: str) -> str:
    return manifest()[name]["transcript"]


def load_16k(name: str) -> np.ndarray:
    """A shared clip as float32 mono at 16 kHz."""
    audio, rate = sf.read(AUDIO / name, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    return audio if rate == RATE else soxr.resample(audio, rate, RATE).astype(np.float32)


def join_with_silence(names: list[str], gaps_s: list[float]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Clips separated by digital silence; returns the audio and each clip's (start, end) in seconds."""
    parts, spans, pos = [], [], 0
    for name, gap in zip(names, gaps_s):
        clip = load_16k(name)
        spans.append((pos / RATE, (pos + len(clip)) / RATE))
        parts += [clip, np.zeros(int(gap * RATE), np.float32)]
        pos += len(clip) + int(gap * RATE)
    return np.concatenate(parts), spans


def trim_silence(audio: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Drops the leading and trailing stretch below `threshold` (clips come with pauses at their ends)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0]:loud[-1] + 1]


def continuous_speech(seconds: float = 25.0) -> np.ndarray:
    """Read speech with no pause longer than a comma's: shared clips trimmed at their ends and joined."""
    names = ["lj001_0001.wav", "lj001_0005.wav", "lj050_0131.wav", "ldc93s1.wav", "jfk_16k.wav"]
    speech = np.concatenate([trim_silence(load_16k(n)) for n in names])
    assert len(speech) >= seconds * RATE
    return speech[:int(seconds * RATE)]


def wer(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    return jiwer.wer(norm(reference), norm(hypothesis) or "<empty>")


def heard(name: str, text: str, bound: float) -> bool:
    """A shared clip's words are in `text`: WER at most `bound`. Whisper writes uberi_one_two_three.wav as
    "1, 2, 3.", which the normaliser scores as WER 3.0 against "one two three": digits are compared there."""
    if name == "uberi_one_two_three.wav":
        return "".join(c for c in text if c.isdigit()) == "123"
    return wer(transcript(name), text) <= bound


# Two people taking turns: the LJ Speech reader, JFK, then the LJ reader again (clip, its voice, the pause after).
TURNS = [("lj001_0001.wav", "lj", 1.0), ("jfk_16k.wav", "jfk", 1.0), ("lj001_0005.wav", "lj", 1.0)]


def two_voices(turns=TURNS) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Real speech of two voices in turns; returns the audio and each turn's (start, end, voice) in seconds."""
    audio, spans = join_with_silence([name for name, _, _ in turns], [gap for _, _, gap in turns])
    return audio, [(start, end, voice) for (start, end), (_, voice, _) in zip(spans, turns)]


def voice_at(turns: list[tuple[float, float, str]], t: float) -> str | None:
    return next((voice for start, end, voice in turns if start <= t < end), None)
