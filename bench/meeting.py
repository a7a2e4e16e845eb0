"""A long meeting-like stream: the manifest's clips joined with pauses, so that windows end both at pauses and at
the 10 s cap."""
from __future__ import annotations

import itertools

import numpy as np

from .clips import RATE, Clip, trim

# Pauses after each clip, in turn. 0.3 s is under the segmenter's 600 ms hangover, so the clips on either side
# run on as one window (and past the 10 s cap); the longer ones close windows as a real pause would.
GAPS_S = (0.3, 4.0, 0.3, 0.3, 8.0, 2.0)


def meeting(clips: list[Clip], min_seconds: float) -> Clip:
    """Clips (trimmed of their own silences) and pauses, cycling through `clips` until `min_seconds` is reached."""
    if not clips:
        raise ValueError("a meeting needs at least one clip")
    parts, references, used, total, overlapping = [], [], 0, 0, False
    for clip, gap in zip(itertools.cycle(clips), itertools.cycle(GAPS_S)):
        if total >= min_seconds * RATE:
            break
        speech = trim(clip.clean)
        parts += [speech, np.zeros(int(gap * RATE), np.float32)]
        references.append(clip.reference)
        total += len(speech) + int(gap * RATE)
        used += 1
        overlapping = overlapping or clip.overlapping
    audio = np.concatenate(parts)
    return Clip(f"meeting ({used} clips, {len(audio) / RATE:.0f} s)", " ".join(references), audio, audio, overlapping)
