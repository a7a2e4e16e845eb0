"""One soak client's finals against its audio: lost, clipped, split, doubled, redelivered and stray finals, and
missing segment numbers (the rules: the package's docstring)."""
from __future__ import annotations

from .audio import RATE, Stream

EPS = 1e-6  # seconds: finals' start/end are sample counts / 16000, compared exactly but for float rounding


def merged(intervals) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    """Samples two lists of disjoint intervals have in common."""
    return sum(max(0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


def account(finals: list[dict], stream: Stream, cut_at: float | None) -> dict:
    """Checks one client's finals (in arrival order, resent ones included) against its audio and the windows an
    uninterrupted stream of it gets. `cut_at`: the resumed `ready`'s position (where the server's finals ended at
    the drop); inside a window, the drop cut that window in two. An expected final may miss up to one VAD frame of
    speech without counting as clipped (those seconds are summed apart, as jitter)."""
    by_segment: dict[int, tuple] = {}
    doubled_segments = redelivered = 0
    for f in finals:
        key = (f["text"], f["start"], f["end"])
        if f["segment"] not in by_segment:
            by_segment[f["segment"]] = key
        elif by_segment[f["segment"]] == key:
            redelivered += 1  # the same final twice: harmless, but resume should not send what the client has
        else:
            doubled_segments += 1
    segments = sorted(by_segment)
    missing = (segments[-1] + 1 - len(segments)) if segments else 0  # numbers in 0..last never received
    ordered = [by_segment[s] for s in segments]
    overlaps = sum(b[1] < a[2] - EPS for a, b in zip(ordered, ordered[1:]))  # also: a later segment starting earlier
    spans = [(round(s * RATE), round(e * RATE)) for _, s, e in ordered]
    got = merged(spans)
    speech = merged(run for runs in stream.speech for run in runs)
    # The finals expected: one per window, the window a drop cut as two (the part flushed at the drop, the rest).
    cut = round(cut_at * RATE) if cut_at is not None else None
    expected = [piece for ws, we in stream.windows
                for piece in ([(ws, cut), (cut, we)] if cut is not None and ws < cut < we else [(ws, we)])]
    lost = clipped = 0
    lost_s = clipped_s = jitter_s = 0.0
    where = []
    for ps, pe in expected:
        said = merged((max(a, ps), min(b, pe)) for a, b in speech if a < pe and b > ps)
        total, heard = sum(b - a for a, b in said), overlap(said, got)
        if total and heard < total:
            where.append((ps / RATE, pe / RATE, (total - heard) / RATE))
            if heard == 0:
                lost, lost_s = lost + 1, lost_s + total / RATE
            elif total - heard > stream.vad_frame:
                clipped, clipped_s = clipped + 1, clipped_s + (total - heard) / RATE
            else:  # the VAD decides on whole frames, and a resumed stream's frames start at the resume point
                jitter_s += (total - heard) / RATE
    # Each final belongs to the expected final it overlaps most; more than one there is a split.
    owners = [max(range(len(expected)), key=lambda i: min(e, expected[i][1]) - max(s, expected[i][0]))
              for s, e in spans if any(s < pe and e > ps for ps, pe in expected)]
    splits = len(owners) - len(set(owners))
    return {"utterances": len(stream.spans), "finals_expected": len(expected), "finals": len(ordered),
            "final_messages": len(finals), "lost": lost, "lost_speech_s": lost_s, "clipped": clipped,
            "clipped_speech_s": clipped_s, "jitter_speech_s": jitter_s, "split": splits, "missing_segments": missing,
            "doubled": doubled_segments + overlaps, "redelivered": redelivered,
            "stray": sum(not any(s < ue and e > us for us, ue in stream.spans) for _, s, e in ordered),
            # Speech no window holds even without a drop: what the VAD itself leaves out (0 for these clips).
            "speech_outside_windows_s": (sum(b - a for a, b in speech) - overlap(speech, merged(stream.windows)))
            / RATE, "speech_missed_at": [tuple(round(x, 3) for x in w) for w in where]}
