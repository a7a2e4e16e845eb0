"""One stream's online speaker tracking: which known voice each ~1.6 s piece of a final window is, or a new one.

Policy, from a feasibility study on the server's own VAD windows and the benchmarks (docs/benchmarks.md, "Speaker
labels (#24)"):
- One label per window cannot work: on a real conversation most windows hold two voices. So each window's speech
  is cut into pieces of `piece_s` every `hop_s`, each piece is embedded, and each goes to the known speaker whose
  running mean embedding is most similar by cosine, if that similarity reaches `threshold`.
- A piece like no one known is a candidate. A new speaker is founded only when `confirm` consecutive full pieces
  of speech agree with each other, in a window holding at least `min_found_s` of speech; otherwise the piece gets
  no label. Short windows, non-speech and pieces across a change of voice otherwise found speakers that do not
  exist. A speaker founded from pieces that lie between two other voices and that a mix of those two explains
  (cosine with the plane of their means) is such a change, and is dropped at the end of the window.
- Speech is the window's loud frames that are inside its words (times relative to the window), when they are
  given: silences and pauses are left out, and a window without words (a beep, noise) gives no piece at all.
  Without words the loud frames alone are used, and a piece must also look like speech (`is_speechlike`) to
  found or to teach a speaker.

Labels are "Speaker 1", "Speaker 2", ... in order of founding, stable for the session; `to_dict`/`from_dict` carry
the profiles across a resume or a handover to another replica. The state is replaced whole at the end of each
`track`, so `to_dict` from another thread sees it before or after a window, never halfway.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ..backends.transcript import Word
from .encoder import DIMENSIONS, SAMPLE_RATE, normalize_volume
from .options import SpeakerOptions

FRAME = SAMPLE_RATE // 100  # 10 ms
WORD_PAD_S = 0.08  # around each word: its aligned times clip the first and last phonemes a little
LOUD_DB = 40.0  # speech: frames within this many dB of the window's loud (95th percentile) frames
SPEECH_SWING_DB = 6.0  # a speech piece's 10 ms energies spread over at least this (10th to 90th percentile)
SPEECH_FLATNESS = 0.3  # and its spectrum is far from flat (white noise is about 0.56)


class Embedder(Protocol):
    def embed(self, pieces: list[np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Piece:
    """One labelled piece of a window: times in seconds from the window's first sample."""

    start: float  # the first and last instants of audio in it (silences between words are left out)
    end: float
    center: float  # the instant at its middle sample: words take the label of the piece centred nearest
    full: bool  # it holds `piece_s` of speech (a shorter window's speech is repeated to fill it)
    speechlike: bool
    label: str | None = None
    similarity: float = 0.0  # to the speaker it was given (or, unlabelled, to the nearest known one)


def _no_rows() -> np.ndarray:
    return np.zeros((0, DIMENSIONS))


@dataclass(frozen=True)
class _State:
    labels: tuple[str, ...] = ()
    sums: np.ndarray = field(default_factory=_no_rows)  # per speaker, the sum of its pieces' unit embeddings
    counts: tuple[int, ...] = ()  # per speaker, its pieces
    next_number: int = 1  # of the next label: numbers are never reused
    pending: np.ndarray = field(default_factory=_no_rows)  # the consecutive candidate pieces (unit rows)


class SpeakerTracker:
    def __init__(self, options: SpeakerOptions | None = None):
        self.options = options or SpeakerOptions()
        self._state = _State()

    @property
    def labels(self) -> tuple[str, ...]:
        return self._state.labels

    # -- one window --------------------------------------------------------------------------------------------

    def track(self, audio: np.ndarray, words: Sequence[Word] | None, encoder: Embedder) -> list[Piece]:
        """Labels the pieces of one final window (16 kHz float32) and learns from them. Blocks (embedding)."""
        speech, where = _gather(audio, speech_spans(audio, words))
        if not len(speech):
            return []
        speech = normalize_volume(speech)
        n = int(self.options.piece_s * SAMPLE_RATE)
        hop = int(self.options.hop_s * SAMPLE_RATE)
        if len(speech) >= n:
            starts = list(range(0, len(speech) - n + 1, hop))
            if len(speech) - (starts[-1] + n) > hop // 2:
                starts.append(len(speech) - n)  # the tail: the last words get a piece of their own
            chunks = [speech[s:s + n] for s in starts]
            bounds = [(s, s + n) for s in starts]
        else:
            chunks = [np.resize(speech, n)]  # repeated to the encoder's length (zeros would be silence to it)
            bounds = [(0, len(speech))]
        embeddings = encoder.embed(chunks).astype(np.float64)
        pieces = [Piece(start=where[a] / SAMPLE_RATE, end=(where[b - 1] + 1) / SAMPLE_RATE,
                        center=where[(a + b) // 2] / SAMPLE_RATE, full=b - a >= n, speechlike=is_speechlike(chunk))
                  for (a, b), chunk in zip(bounds, chunks)]
        may_found = len(speech) >= self.options.min_found_s * SAMPLE_RATE
        return self._assign(pieces, embeddings, may_found)

    def _assign(self, pieces: list[Piece], embeddings: np.ndarray, may_found: bool) -> list[Piece]:
        o, s = self.options, self._state
        labels, sums, counts, pending = list(s.labels), s.sums.copy(), list(s.counts), s.pending
        known = len(labels)  # speakers founded before this window; those after are named at the end
        waiting: list[int] = []  # this window's pieces in `pending`: they take the label if it is founded
        out = list(pieces)
        for i, (piece, e) in enumerate(zip(pieces, embeddings)):
            sims = _unit_rows(sums) @ e if labels else np.zeros(0)
            best = int(np.argmax(sims)) if labels else -1
            if labels and sims[best] >= o.threshold:
                out[i] = replace(piece, label=labels[best], similarity=float(sims[best]))
                if piece.full and piece.speechlike:  # a repeated short piece or noise would blur the profile
                    sums[best] += e
                    counts[best] += 1
                pending, waiting = pending[:0], []
                continue
            out[i] = replace(piece, similarity=float(sims[best]) if labels else 0.0)
            if not (may_found and piece.full and piece.speechlike and len(labels) < o.max_speakers):
                pending, waiting = pending[:0], []
                continue
            if len(pending) and float(_unit(pending.sum(axis=0)) @ e) < o.threshold:
                pending, waiting = pending[:0], []  # a different voice again: this piece starts a new candidate
            pending = np.vstack([pending, e])
            waiting.append(i)
            if len(pending) >= o.confirm:
                labels.append(f"new {len(labels)}")
                sums = np.vstack([sums, pending.sum(axis=0)])
                counts.append(len(pending))
                for j in waiting:
                    out[j] = replace(out[j], label=labels[-1], similarity=float(_unit(sums[-1]) @ embeddings[j]))
                pending, waiting = pending[:0], []
        # A speaker founded in this window from the pieces between two other voices, that those two explain
        # together, was the change from one voice to the other (pieces across it mix both): it is dropped.
        for k in range(len(labels) - 1, known - 1, -1):
            if _is_change(out, embeddings, labels, sums, k, o.threshold):
                out = [replace(p, label=None) if p.label == labels[k] else p for p in out]
                del labels[k], counts[k]
                sums = np.delete(sums, k, axis=0)
        names = {label: f"Speaker {s.next_number + n}" for n, label in enumerate(labels[known:])}
        out = [replace(p, label=names.get(p.label, p.label)) if p.label else p for p in out]
        labels = [names.get(label, label) for label in labels]
        self._state = _State(tuple(labels), sums, tuple(counts), s.next_number + len(names), pending)
        return out

    # -- carried across a resume -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-safe: the profiles as lists of floats (float64, so the round trip is exact)."""
        s = self._state
        return {"speakers": [{"label": label, "sum": row.tolist(), "count": count}
                             for label, row, count in zip(s.labels, s.sums, s.counts)],
                "next_number": s.next_number, "pending": s.pending.tolist()}

    @classmethod
    def from_dict(cls, data: dict, options: SpeakerOptions | None = None) -> "SpeakerTracker":
        """A tracker going on from `to_dict`'s output."""
        tracker = cls(options)
        speakers = data.get("speakers", [])
        pending = np.array(data.get("pending") or [], np.float64).reshape(-1, DIMENSIONS)
        sums = np.array([sp["sum"] for sp in speakers], np.float64).reshape(-1, DIMENSIONS)
        tracker._state = _State(tuple(sp["label"] for sp in speakers), sums,
                                tuple(int(sp["count"]) for sp in speakers), int(data.get("next_number", 1)), pending)
        return tracker


def _is_change(pieces: list[Piece], embeddings: np.ndarray, labels: list[str], sums: np.ndarray, k: int,
               threshold: float) -> bool:
    """Whether speaker k's pieces lie between two different voices that, mixed, are as like them as the
    threshold asks: their embeddings' cosine with the plane of those two voices' means reaches it."""
    mine = [i for i, p in enumerate(pieces) if p.label == labels[k]]
    others = [(i, p.label) for i, p in enumerate(pieces) if p.label not in (None, labels[k])]
    before = next((label for i, label in reversed(others) if i < mine[0]), None)
    after = next((label for i, label in others if i > mine[-1]), None)
    if before is None or after is None or before == after:
        return False
    plane = np.linalg.qr(_unit_rows(sums[[labels.index(before), labels.index(after)]]).T)[0]  # (256, 2)
    return float(np.median(np.linalg.norm(embeddings[mine] @ plane, axis=1))) >= threshold


# -- where the speech is ---------------------------------------------------------------------------------------

def speech_spans(audio: np.ndarray, words: Sequence[Word] | None) -> list[tuple[int, int]]:
    """Sample ranges of speech in a window: its loud 10 ms frames (within LOUD_DB of its loud ones) that are
    inside its words (padded by WORD_PAD_S), when words are given. Aligned words take in the silence around them
    (a window's first word often starts at its first sample): the loudness check leaves it out."""
    power = _frame_power(audio)
    if not len(power) or power.max() <= 0:
        return []
    speech = power >= np.percentile(power, 95) * 10 ** (-LOUD_DB / 10)
    if words is not None:
        said = np.zeros(len(power), bool)
        for w in words:
            said[max(0, int((w.start - WORD_PAD_S) * 100)):max(0, int(np.ceil((w.end + WORD_PAD_S) * 100)))] = True
        speech &= said
    edges = np.flatnonzero(np.diff(np.concatenate([[0], speech.astype(np.int8), [0]])))
    return [(int(a) * FRAME, int(b) * FRAME) for a, b in zip(edges[::2], edges[1::2])]


def is_speechlike(piece: np.ndarray) -> bool:
    """Speech's energy swings with its syllables and its spectrum has shape: a steady beep or hum does not swing,
    white noise is flat. Music can pass; words are the real gate."""
    power = _frame_power(piece) + 1e-12
    db = 10 * np.log10(power)
    if np.percentile(db, 90) - np.percentile(db, 10) < SPEECH_SWING_DB:
        return False
    frames = piece[:len(power) * FRAME].reshape(len(power), FRAME)[power > np.percentile(power, 50)]
    spectra = np.abs(np.fft.rfft(frames * np.hanning(FRAME), axis=1)) ** 2 + 1e-12
    flatness = np.exp(np.log(spectra).mean(axis=1)) / spectra.mean(axis=1)
    return float(np.median(flatness)) < SPEECH_FLATNESS


def _gather(audio: np.ndarray, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The spans' samples end to end, and for each its index in the window."""
    if not spans:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    speech = np.concatenate([audio[a:b] for a, b in spans]).astype(np.float32, copy=False)
    where = np.concatenate([np.arange(a, b) for a, b in spans])
    return speech, where


def _frame_power(audio: np.ndarray) -> np.ndarray:
    n = len(audio) // FRAME
    return np.square(audio[:n * FRAME].reshape(n, FRAME).astype(np.float64)).mean(axis=1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
