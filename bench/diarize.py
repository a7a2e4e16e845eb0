"""`python -m bench.diarize`: live speaker labels (server/speakers) on real audio, window by window as the server runs.

    python -m bench.diarize [--thresholds 0.73,0.68,0.78] [--no-words] [--json out.json]

Each file is cut by the server's own segmenter (default SegmenterConfig and VAD), each final window is transcribed
with word timings by the bundled Whisper tiny.en (as the session does for a final), and one SpeakerTracker takes the
windows in order, online. Measured:
  (a) pyannote_sample.wav (two telephone voices, overlapping turns): DER with a 0.25 s collar (pyannote.metrics,
      reference pyannote_sample.rttm) and the number of speakers found. `der`: every instant of the final windows
      labelled as a word there would be; `der_words`: only the words' own times (pauses between words, which
      the reference counts as its speakers' turns, are then missed speech);
  (b) the four-voice conversation of bench/turns.py: speakers found, the words labelled with their true speaker
      (truth at the word's midpoint; labels mapped one to one onto voices to agree most), and the same over speech
      time in 10 ms frames;
  (c) CPU seconds of embedding and tracking per second of audio, at the first threshold: the CPU time of the
      thread that runs them (torch is pinned to that one thread, as in the server's worker; the process's time
      would also count Whisper's idle OpenMP threads spinning after each call).
Each threshold gets a fresh tracker; the pieces' embeddings are computed once and reused across thresholds.
`--no-words` runs the trackers without words (speech from the windows' loud frames), as for a backend that gives none.
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from server.backends.transcript import Word
from server.config import SegmenterConfig
from server.core.segmenter import Segmenter, Window
from server.core.vad import make_vad
from server.speakers import SpeakerOptions, SpeakerTracker, label_at, label_words
from server.speakers.encoder import Encoder

from .clips import RATE, load_16k, speech_mask
from .turns import AUDIO, conversation

COLLAR = 0.25
TARGETS = {"der": 0.20, "pyannote_speakers": 2, "turns_speakers": 4, "word_accuracy": 0.95, "cpu_per_s": 0.03}


def final_windows(audio: np.ndarray) -> list[Window]:
    """The finals the live server's segmenter makes of this audio, pushed in 100 ms chunks."""
    cfg = SegmenterConfig()
    seg = Segmenter(cfg, make_vad(cfg))
    out = []
    for i in range(0, len(audio), RATE // 10):
        out += seg.push(audio[i:i + RATE // 10])
    out += seg.finalize()
    return [w for w in out if w.final]


def window_words(windows: list[Window]) -> tuple[list[tuple[Word, ...] | None], str]:
    """Each window's words from Whisper tiny.en with `timed`; (Nones, why) where the backend gives none."""
    from server.backends.whisper import WhisperBackend

    backend = WhisperBackend()
    try:
        results = backend.transcribe([w.audio for w in windows], timed=[True] * len(windows))
    except TypeError:
        return [None] * len(windows), "WhisperBackend.transcribe has no `timed` yet"
    words = [getattr(r, "words", None) for r in results]
    if any(w is None for w in words):
        return [None] * len(windows), "WhisperBackend gave no word timings"
    return [tuple(w) for w in words], "whisper tiny.en word timings"


class CachedEncoder:
    """The encoder with its embeddings kept by piece: thresholds change the labels, never the pieces."""

    def __init__(self, encoder: Encoder):
        self._encoder = encoder
        self._cache: dict[bytes, np.ndarray] = {}

    def embed(self, pieces: list[np.ndarray]) -> np.ndarray:
        todo = [p for p in pieces if p.tobytes() not in self._cache]
        for p, e in zip(todo, self._encoder.embed(todo)):
            self._cache[p.tobytes()] = e
        return np.stack([self._cache[p.tobytes()] for p in pieces]) if pieces else np.zeros((0, 256), np.float32)


def track(windows, words, options: SpeakerOptions, encoder) -> tuple[SpeakerTracker, list, float]:
    """(the tracker, per window its pieces, CPU seconds of tracking)."""
    tracker = SpeakerTracker(options)
    pieces, cpu = [], 0.0
    for window, ws in zip(windows, words):
        t0 = time.thread_time()
        pieces.append(tracker.track(window.audio, ws, encoder))
        cpu += time.thread_time() - t0
    return tracker, pieces, cpu


def frame_labels(n_frames: int, windows, words, pieces, region: str = "windows") -> list[str | None]:
    """A label per 10 ms frame of the stream: the label at that instant as a word there would take it
    (speakers.label_at), in each window's `region`: "windows" every instant of the final windows, "words" each
    word from its start to its end (pauses between words are no one's)."""
    out: list[str | None] = [None] * n_frames
    for window, ws, ps in zip(windows, words, pieces):
        spans = ([(int(w.start * RATE), int(w.end * RATE)) for w in ws] if region == "words" and ws is not None
                 else [(0, len(window.audio))])
        for a, b in spans:
            for f in range(a // (RATE // 100), b // (RATE // 100)):
                i = window.start // (RATE // 100) + f
                if i < n_frames:
                    out[i] = label_at(ps, (f + 0.5) / 100)
    return out


def der(frames: list[str | None]) -> dict:
    """pyannote_sample.wav's diarization error rate and its parts (shares of the reference speech time)."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference = Annotation()
    for line in (AUDIO / "pyannote_sample.rttm").read_text().splitlines():
        f = line.split()
        reference[Segment(float(f[3]), float(f[3]) + float(f[4]))] = f[7]
    hypothesis = Annotation()
    i = 0
    while i < len(frames):
        j = i
        while j < len(frames) and frames[j] == frames[i]:
            j += 1
        if frames[i] is not None:
            hypothesis[Segment(i / 100, j / 100)] = frames[i]
        i = j
    metric = DiarizationErrorRate(collar=COLLAR)
    parts = metric(reference, hypothesis, detailed=True)
    total = parts["total"]
    return {"der": round(parts["diarization error rate"], 4), "confusion": round(parts["confusion"] / total, 4),
            "missed": round(parts["missed detection"] / total, 4),
            "false_alarm": round(parts["false alarm"] / total, 4)}


def best_mapping(pairs: list[tuple[str | None, str]]) -> dict[str, str]:
    """Hypothesis label -> true voice, one to one, agreeing on the most pairs (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    hyps = sorted({h for h, _ in pairs if h is not None})
    truths = sorted({t for _, t in pairs})
    counts = np.zeros((len(hyps), len(truths)))
    for h, t in pairs:
        if h is not None:
            counts[hyps.index(h), truths.index(t)] += 1
    rows, cols = linear_sum_assignment(-counts)
    return {hyps[r]: truths[c] for r, c in zip(rows, cols)}


def turns_scores(conv, windows, words, pieces, frames) -> dict:
    scores = {}
    if any(w is not None for w in words):
        pairs = []
        for window, ws, ps in zip(windows, words, pieces):
            for w in label_words(ws or (), ps):
                pairs.append((w.speaker, conv.speaker_at(window.start / RATE + (w.start + w.end) / 2)))
        mapping = best_mapping(pairs)
        scores["words"] = len(pairs)
        scores["word_accuracy"] = round(sum(mapping.get(h or "") == t for h, t in pairs) / len(pairs), 4)
        scores["words_unlabelled"] = round(sum(h is None for h, _ in pairs) / len(pairs), 4)
    # Speech time: the turns' frames loud enough to be speech (pauses inside a turn are no one's).
    truth = [t if loud else None for t, loud in zip(conv.frames(), speech_mask(conv.audio))]
    pairs = [(h, t) for h, t in zip(frames, truth) if t is not None]
    mapping = best_mapping(pairs)
    scores["time_accuracy"] = round(sum(mapping.get(h or "") == t for h, t in pairs) / len(pairs), 4)
    return scores


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--thresholds", default="0.73,0.68,0.78", help="the first is the one costed")
    p.add_argument("--no-words", action="store_true", help="track without words (speech from loud frames)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]

    pyannote_audio = load_16k(AUDIO / "pyannote_sample.wav")
    conv = conversation()
    files = {"pyannote": pyannote_audio, "turns": conv.audio}
    windows = {name: final_windows(audio) for name, audio in files.items()}
    words, source = {}, "none (--no-words): speech from loud frames"
    for name in files:
        words[name], source = (([None] * len(windows[name]), source) if args.no_words
                               else window_words(windows[name]))
    time.sleep(1.0)  # Whisper's OpenMP threads spin a while after its last call: not this benchmark's cost

    # As in the server: the encoder loads and runs in a worker thread of its own, torch pinned to it.
    worker = ThreadPoolExecutor(max_workers=1)
    t0 = time.perf_counter()
    encoder = worker.submit(Encoder).result()
    worker.submit(encoder.pin_thread).result()
    load_s = time.perf_counter() - t0
    cached = CachedEncoder(encoder)

    rows = []
    for k, threshold in enumerate(thresholds):
        row: dict = {"threshold": threshold}
        options = SpeakerOptions(threshold=threshold)
        cpu, seconds = 0.0, 0.0
        for name, audio in files.items():
            # The first threshold runs the real encoder (its CPU time is the cost); later ones reuse embeddings.
            tracker, pieces, spent = worker.submit(track, windows[name], words[name], options,
                                                   encoder if k == 0 else cached).result()
            if k == 0:
                worker.submit(track, windows[name], words[name], options, cached).result()  # fills the cache
            cpu, seconds = cpu + spent, seconds + len(audio) / RATE
            n_frames = len(audio) // (RATE // 100)
            if name == "pyannote":
                by_words = der(frame_labels(n_frames, windows[name], words[name], pieces, "words"))
                row.update(der(frame_labels(n_frames, windows[name], words[name], pieces)),
                           der_words=by_words["der"], confusion_words=by_words["confusion"],
                           pyannote_speakers=len(tracker.labels))
            else:
                frames = frame_labels(n_frames, windows[name], words[name], pieces)
                row.update(turns_scores(conv, windows[name], words[name], pieces, frames),
                           turns_speakers=len(tracker.labels))
        if k == 0:
            row["cpu_per_s"] = round(cpu / seconds, 4)
        rows.append(row)
    worker.shutdown()

    print(f"words: {source}; windows: pyannote {len(windows['pyannote'])}, turns {len(windows['turns'])} "
          f"({len(conv.audio) / RATE:.1f} s, {len(conv.turns)} turns); encoder load {load_s:.2f} s")
    keys = ["threshold", "der", "confusion", "missed", "false_alarm", "der_words", "confusion_words",
            "pyannote_speakers", "turns_speakers", "word_accuracy", "words_unlabelled", "time_accuracy", "cpu_per_s"]
    print(" | ".join(keys))
    print(" | ".join(str(TARGETS.get(k, "target")) if k != "threshold" else "target" for k in keys))
    for row in rows:
        print(" | ".join(str(row.get(k, "")) for k in keys))
    if args.json:
        args.json.write_text(json.dumps({"words": source, "load_s": round(load_s, 2), "targets": TARGETS,
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
