"""A final's words on the stream's clock: the backend's aligned words, or words estimated from the text and audio.

A backend that aligns words (Whisper: cross-attention alignment) gives their times within the window; `place`
moves them onto the stream's clock and names their voices. A backend that cannot (SALM: `generate` gives no
timestamps) gives text only, and `estimate` derives times from what is known for certain: where in the window
there is sound, and how long each word is written. Words share out the window's sounding frames (pauses take no
words) in proportion to their letters. Such words are marked `estimated`, carry no probability, and are good to
about a word's length: enough to cut subtitle cues and place a speaker change, not to highlight word by word.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np

from ..backends.transcript import Word
from .requests import SAMPLE_RATE

FRAME = SAMPLE_RATE // 50  # 20 ms frames for the energy that says where there is sound
FLOOR_DB = 35.0  # a frame sounds if it is within this of the window's loudest frame (and above SILENCE_DB)
SILENCE_DB = -60.0  # dBFS: digital silence and dither never sound


def sounding_frames(audio: np.ndarray) -> np.ndarray:
    """A boolean per 20 ms frame: is there sound (relative to the window's loudest frame)?"""
    n = len(audio) // FRAME
    if n == 0:
        return np.zeros(0, bool)
    frames = np.asarray(audio[: n * FRAME], np.float64).reshape(n, FRAME)
    db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    return db > max(SILENCE_DB, db.max() - FLOOR_DB)


def estimate(text: str, audio: np.ndarray) -> tuple[Word, ...]:
    """Window-relative words for a text without timings: the sounding frames shared out by letters."""
    tokens = text.split()
    if not tokens:
        return ()
    sound = sounding_frames(audio)
    if not sound.any():  # nothing stood out: the whole window
        sound = np.ones(max(1, len(audio) // FRAME), bool)
    at = np.flatnonzero(sound)  # frame index of each sounding frame, in order

    def time(x: float) -> float:
        """Seconds at `x` sounding frames in: within the k-th sounding frame, a fraction of its 20 ms."""
        k = min(int(x), len(at) - 1)
        return float(at[k] + (x - k)) * FRAME / SAMPLE_RATE

    weights = np.array([max(1, sum(c.isalnum() for c in t)) for t in tokens], np.float64)
    edges = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum() * len(at)  # in sounding frames
    words = [Word(token, time(lo), time(hi), None, estimated=True)
             for token, lo, hi in zip(tokens, edges[:-1], edges[1:])]
    return tuple(words)


def place(words: Iterable[Word], offset: float, names: Mapping[str, str]) -> tuple[Word, ...]:
    """Window-relative words moved to the stream's clock (`offset`: the window's start), each diarized word with
    the name its label has now."""
    return tuple(dataclasses.replace(w, start=w.start + offset, end=w.end + offset,
                                     name=names.get(w.speaker, w.speaker) if w.speaker else None)
                 for w in words)


def word_record(word: Word) -> dict:
    """A word as JSON (v1 finals, transcripts, webhooks): `estimated` only when true; `speaker`, `name` and
    `speaker_confidence` only with diarization."""
    rec: dict = {"word": word.word, "start": round(word.start, 3), "end": round(word.end, 3),
                 "probability": None if word.probability is None else round(word.probability, 3)}
    if word.estimated:
        rec["estimated"] = True
    if word.speaker is not None:
        rec.update(speaker=word.speaker, name=word.name or word.speaker)
        if word.speaker_confidence is not None:
            rec["speaker_confidence"] = round(word.speaker_confidence, 3)
    return rec
