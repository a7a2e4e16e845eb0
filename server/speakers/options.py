"""The `speakers` config section: live speaker labels (online diarization, server/speakers)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SpeakerOptions:
    diarize: bool = False  # a stream's default when its start message does not say (labels cost a little CPU)
    # Cosine similarity to a speaker's running mean at or above which a piece is that speaker's. The one knob that
    # matters (docs/benchmarks.md, "Speaker labels (#24)"): both benchmarks meet their targets from 0.705 to 0.76
    # and 0.73 is the middle; at 0.68 two similar telephone voices stay one speaker, at 0.78 one reader across two
    # recordings becomes two.
    threshold: float = 0.73
    piece_s: float = 1.6  # the encoder's partial utterance: what it was trained on, and the shortest it does well
    # Step between pieces: about 2.5 labels a second, so a change of voice shows within a hop or so (and is then
    # put at the pause between words); each piece costs an embedding (about 4 ms of CPU).
    hop_s: float = 0.4
    # A new speaker is founded only from a window holding this much speech (words' time) and only when `confirm`
    # consecutive full pieces agree with each other and with no one known: short windows ("yes"), a beep, or a
    # piece straddling two voices otherwise found speakers that do not exist (3 pieces missed the second telephone
    # voice's short first turn).
    min_found_s: float = 2.0
    confirm: int = 2
    max_speakers: int = 8  # past this, pieces like no one known get no label rather than a new one
