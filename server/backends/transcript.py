"""What a backend gives for one window: its text and, where it can time them, its words.

Times from a backend are seconds from the window's first sample; the session moves them onto the stream's clock
(the clock of a final's `start`/`end`) and, with diarization on, fills in each word's speaker.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    word: str  # as it appears in the text, punctuation attached ("Americans,")
    start: float
    end: float
    probability: float | None  # how sure the model was of the word (the mean of its tokens' probabilities); None: not known
    estimated: bool = False  # the times were derived, not aligned (SALM: see server/core/words.py)
    speaker: str | None = None  # diarization's stable label for the voice, "Speaker 1", "Speaker 2", ...
    speaker_confidence: float | None = None  # how close the voice was to that speaker's profile (0..1)
    name: str | None = None  # the name shown for that label when the word was captioned ("Priya" after a rename)


@dataclass(frozen=True)
class Transcript:
    text: str
    words: tuple[Word, ...] | None = None  # None: this backend does not time words (the session estimates them)
