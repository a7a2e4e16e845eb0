"""Numbers from timed caption messages: WER, latency percentiles, partial flicker. No I/O."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from server.core.session import stable_prefix  # the words two texts agree on, from the start


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return _normalizer()(text)


def wer(references: list[str], hypotheses: list[str]) -> float | None:
    """Word error rate pooled over all pairs (errors summed, then divided by all reference words)."""
    import jiwer

    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r]  # a reference with no words has no rate
    if not pairs:
        return None
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def flicker_counts(partials: list[tuple[list[str], int]], final: list[str]) -> tuple[int, int, int, int]:
    """For one segment's partials in arrival order, each (words, stable K), and its final's words:
    (words shown, of them changed later, stable words shown, of them changed later).

    A shown word counts as changed when any later partial or the final differs at or before its position: a
    viewer sees it replaced (an inserted word shifts the rest of the line, and that is seen too)."""
    shown = changed = shown_stable = changed_stable = 0
    for i, (words, stable) in enumerate(partials):
        later = [w for w, _ in partials[i + 1:]] + [final]
        kept = min(stable_prefix(words, other) for other in later)
        shown += len(words)
        changed += len(words) - kept
        shown_stable += stable
        changed_stable += stable - min(stable, kept)
    return shown, changed, shown_stable, changed_stable
