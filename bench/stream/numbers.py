"""What one streamed clip's timestamps say: final and partial latencies, partial cadence, flicker, how each window
ended and how long the VAD took to call the end of speech."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .. import metrics
from ..clips import RATE, speech_end
from .clients import ClipRun

CAP_S, CUT_SEARCH_S = 10.0, 2.0  # the segmenter's max_window_s and cut_search_s defaults (to spot capped windows)


def final_latencies(run: ClipRun) -> list[float]:
    """Arrival of each final minus the sending of its window's last speech (the hangover is part of the wait)."""
    out = []
    for t, m in run.of_type("final"):
        start, end = round(m["start"] * RATE), round(m["end"] * RATE)
        out.append(t - run.sent_time(speech_end(run.clip.clean, start, end)))
    return out


def partial_latencies(run: ClipRun) -> list[float]:
    """Arrival of each partial minus the sending of the last audio it covers."""
    return [t - run.sent_time(round(m["end"] * RATE)) for t, m in run.of_type("partial")]


def by_segment(run: ClipRun) -> dict[int, list[tuple[float, dict]]]:
    groups = defaultdict(list)
    for t, m in run.of_type("partial"):
        groups[m["segment"]].append((t, m))
    return groups


def partial_intervals(run: ClipRun) -> list[float]:
    """Time between consecutive partials of the same window: how often the live line updates."""
    return [b[0] - a[0] for group in by_segment(run).values() for a, b in zip(group, group[1:])]


def flicker_totals(runs: list[ClipRun]) -> np.ndarray:
    """(words shown, changed later, stable words shown, stable changed later) summed over every window."""
    totals = np.zeros(4, int)
    for run in runs:
        finals = {m["segment"]: m["text"].split() for _, m in run.of_type("final")}
        for segment, group in by_segment(run).items():
            partials = [(m["text"].split(), m.get("stable", 0)) for _, m in group]
            totals += metrics.flicker_counts(partials, finals.get(segment, []))
    return totals


def window_ends(run: ClipRun) -> list[tuple[dict, bool]]:
    """Each final but the last (which `stop` closed), and whether the cap cut it: a capped window is cut in the
    last `CUT_SEARCH_S` before the cap and the next one starts exactly there; otherwise a pause closed it."""
    finals = [m for _, m in run.of_type("final")]
    return [(a, a["end"] == b["start"] and a["end"] - a["start"] >= CAP_S - CUT_SEARCH_S)
            for a, b in zip(finals, finals[1:])]


def endpoint_delays(run: ClipRun) -> list[float]:
    """Stream seconds from the last speech to the close of each window a pause closed: how long the VAD and
    its hangover take to call the end of speech. Independent of server load, unlike the latencies."""
    out = []
    for m, capped in window_ends(run):
        if not capped:
            start, end = round(m["start"] * RATE), round(m["end"] * RATE)
            out.append((end - speech_end(run.clip.clean, start, end)) / RATE)
    return out

