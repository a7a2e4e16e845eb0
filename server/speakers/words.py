"""Speaker labels onto a window's words, from its labelled pieces.

A word takes the label of the labelled piece covering its midpoint whose centre is nearest to it (a word no
labelled piece covers takes the nearest piece's label if it is within NEAR_S, else has no speaker). Pieces are
1.6 s long and 0.4 s apart, and one that straddles a change of voice mostly sounds like one of the two: where the
label changes between two pieces, the words between their centres are split at the longest pause among them, as
people mostly take turns at a pause, so that the change lands between the right two words.

`speaker_confidence` is the cosine similarity of that piece to its speaker's profile.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..backends.transcript import Word
from .tracker import Piece

NEAR_S = 0.5  # a word this close to a labelled piece takes its label (its loud part was in no piece)


def label_words(words: Sequence[Word], pieces: Sequence[Piece]) -> tuple[Word, ...]:
    """`words` with `speaker` and `speaker_confidence` set (times relative to the window, as the pieces'); `name`
    is left to the session."""
    labelled = sorted((p for p in pieces if p.label is not None), key=lambda p: p.center)
    mids = [(w.start + w.end) / 2 for w in words]
    chosen = [piece_at(labelled, t) for t in mids]
    for a, b in zip(labelled, labelled[1:]):
        if a.label == b.label:
            continue
        # The words from the last before a's centre to the first after b's: cut at the longest pause.
        inside = [i for i, t in enumerate(mids) if a.center <= t <= b.center]
        first = max((i for i, t in enumerate(mids) if t < a.center), default=None)
        last = min((i for i, t in enumerate(mids) if t > b.center), default=None)
        span = ([first] if first is not None else []) + inside + ([last] if last is not None else [])
        if not inside or len(span) < 2:
            continue
        cut = max(range(1, len(span)), key=lambda k: words[span[k]].start - words[span[k - 1]].end)
        for k, i in enumerate(span):
            if i in inside:
                chosen[i] = a if k < cut else b
    return tuple(replace(w, speaker=p.label if p else None, speaker_confidence=_confidence(p))
                 for w, p in zip(words, chosen))


def label_at(pieces: Sequence[Piece], t: float) -> str | None:
    """The label at instant t (seconds from the window's start), as a word there would take it (without the
    split at pauses)."""
    piece = piece_at([p for p in pieces if p.label is not None], t)
    return piece.label if piece else None


def piece_at(labelled: Sequence[Piece], t: float) -> Piece | None:
    """The labelled piece covering t whose centre is nearest; if none covers t, the nearest within NEAR_S."""
    covering = [p for p in labelled if p.start <= t <= p.end]
    if covering:
        return min(covering, key=lambda p: abs(p.center - t))
    near = min(labelled, key=lambda p: max(p.start - t, t - p.end), default=None)
    return near if near is not None and max(near.start - t, t - near.end) <= NEAR_S else None


def _confidence(piece: Piece | None) -> float | None:
    return None if piece is None else round(min(1.0, max(0.0, piece.similarity)), 3)
