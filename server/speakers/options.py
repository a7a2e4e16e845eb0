"""The `speakers` config section: live speaker labels (online diarization, server/speakers)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SpeakerOptions:
    diarize: bool = False  # a stream's default when its start message does not say (labels cost a little CPU)
    # Cosine similarity to a speaker's running mean at or above which a piece is that speaker's. The one knob that
    # matters: on the benchmarks (docs/benchmarks.md, "Speaker labels") 0.05 either way moves the error a lot:
    # lower merges similar voices, higher splits one voice into several.
    threshold: float = 0.73
    piece_s: float = 1.6  # the encoder's partial utterance: what it was trained on, and the shortest it does well
    # Step between pieces: about 2.5 labels a second, so a change of speaker inside a window lands within ~0.2 s;
    # each piece costs an embedding (about 4 ms of CPU).
    hop_s: float = 0.4
    # A new speaker is founded only from a window holding this much speech (words' time) and only when `confirm`
    # consecutive full pieces agree with each other and with no one known: short windows ("yes"), a beep, or a
    # piece straddling two voices otherwise found speakers that do not exist.
    min_found_s: float = 2.0
    confirm: int = 2
    max_speakers: int = 8  # past this, pieces like no one known get no label rather than a new one
