"""bench.stream's report: every run's numbers gathered into one dict (the JSON report), its markdown tables and its
latency CDFs."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .. import metrics
from ..clips import Clip
from .clients import ClipRun
from .numbers import endpoint_delays, final_latencies, flicker_totals, partial_intervals, partial_latencies, window_ends


def share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def report(clips: list[Clip], runs: list[ClipRun], offline: list | None, offline_note: str, compute_s: float,
           engine_audio_s: float, args: argparse.Namespace, segmenter: dict | None, wall_s: float) -> dict:
    refs = [c.reference for c in clips]
    hyps = [r.hypothesis for r in runs]
    finals = [x for r in runs for x in final_latencies(r)]
    partials = [x for r in runs for x in partial_latencies(r)]
    intervals = [x for r in runs for x in partial_intervals(r)]
    shown, changed, shown_stable, changed_stable = (int(x) for x in flicker_totals(runs))
    endpoints = [x for r in runs for x in endpoint_delays(r)]
    audio_s = sum(c.seconds for c in clips)
    single = [not c.overlapping for c in clips]

    def one_voice(texts: list) -> list:
        return [t for t, keep in zip(texts, single) if keep]

    wer = metrics.wer(refs, hyps)
    offline_wer = metrics.wer(refs, offline) if offline else None
    ready = runs[0].ready if runs else {}
    return {
        "wer": wer,
        "offline_wer": offline_wer,
        "wer_delta": wer - offline_wer if wer is not None and offline_wer is not None else None,
        "wer_no_overlap": metrics.wer(one_voice(refs), one_voice(hyps)),
        "offline_wer_no_overlap": metrics.wer(one_voice(refs), one_voice(offline)) if offline else None,
        "final_latency_p50": metrics.percentile(finals, 50),
        "final_latency_p95": metrics.percentile(finals, 95),
        "partial_latency_p50": metrics.percentile(partials, 50),
        "partial_latency_p95": metrics.percentile(partials, 95),
        "partial_interval_p50": metrics.percentile(intervals, 50),
        "endpoint_p50": metrics.percentile(endpoints, 50),
        "endpoint_p95": metrics.percentile(endpoints, 95),
        "flicker": share(changed, shown),
        "flicker_stable": share(changed_stable, shown_stable),
        "stable_share": share(shown_stable, shown),
        "rtf": compute_s / audio_s if audio_s else None,
        "streams": args.streams,
        "speed": args.speed,
        "noise_snr": args.noise_snr,
        "audio_seconds": audio_s,
        "compute_seconds": compute_s,
        "engine_audio_seconds": engine_audio_s,  # audio decoded, partial re-runs included
        "finals": len(finals),
        "partials": len(partials),
        "empty_finals": sum(not m["text"].strip() for r in runs for _, m in r.of_type("final")),
        "capped_finals": sum(capped for r in runs for _, capped in window_ends(r)),
        "backend": ready.get("backend"),
        "model": ready.get("model"),
        "segmenter": segmenter,
        "offline_note": offline_note,
        "wall_seconds": wall_s,
        "final_latencies": finals,
        "partial_latencies": partials,
        "per_clip": per_clip(clips, runs, offline),
    }


def per_clip(clips: list[Clip], runs: list[ClipRun], offline: list | None) -> list[dict]:
    offline = offline or [None] * len(clips)
    return [{"name": c.name, "seconds": c.seconds, "overlapping": c.overlapping, "reference": c.reference,
             "hypothesis": r.hypothesis, "wer": metrics.wer([c.reference], [r.hypothesis]),
             "offline_hypothesis": o, "offline_wer": metrics.wer([c.reference], [o]) if o is not None else None,
             "finals": len(r.of_type("final")), "partials": len(r.of_type("partial"))}
            for c, r, o in zip(clips, runs, offline)]



def fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


SUMMARY_KEYS = ("wer", "offline_wer", "wer_delta", "wer_no_overlap", "final_latency_p50", "final_latency_p95",
                "partial_latency_p50", "partial_latency_p95", "partial_interval_p50", "endpoint_p50", "endpoint_p95",
                "flicker", "flicker_stable",
                "stable_share", "rtf", "streams", "speed", "noise_snr", "audio_seconds", "finals", "partials",
                "empty_finals", "capped_finals", "wall_seconds")


def markdown(rep: dict) -> str:
    lines = ["| metric | value |", "|---|---|", *(f"| {k} | {fmt(rep[k])} |" for k in SUMMARY_KEYS), "",
             "| clip | s | WER | offline WER | hypothesis |", "|---|---|---|---|---|"]
    for c in rep["per_clip"]:
        note = " (overlapping speech)" if c["overlapping"] else ""
        lines.append(f"| {c['name']}{note} | {c['seconds']:.1f} | {fmt(c['wer'])} | {fmt(c['offline_wer'])} | "
                     f"{c['hypothesis'][:80]} |")
    return "\n".join(lines)


def plot_cdfs(rep: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, key in (("final", "final_latencies"), ("partial", "partial_latencies")):
        xs = np.sort(rep[key])
        if len(xs):
            ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=f"{label} (n={len(xs)})")
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("share of captions at or below")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
