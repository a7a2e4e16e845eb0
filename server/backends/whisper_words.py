"""Word timings for the Whisper backend: cross-attention alignment as faster-whisper's `word_timestamps`, batched,
then corrected for the alignment's lag and snapped to the pauses in the audio.

1. One CTranslate2 `Whisper.align` call for all the timed windows of a batch, on the encoder output that decoding
   already made. It runs the decoder once more over <|startoftranscript|> <|notimestamps|> + the window's own text
   tokens (those that gave its text) + <|endoftext|>: faster-whisper passes its `sot_sequence` and CTranslate2 adds
   <|notimestamps|>, the prompt decoding used (a stream's context is not part of it, as in faster-whisper). The
   cross-attention of the model's alignment heads is matched to the window's audio frames (20 ms) by dynamic time
   warping; a token starts where the path reaches it. Tokens become words and punctuation joins its word as in
   faster-whisper (`find_alignment`, `merge_punctuations`, its duration heuristics); a word's probability is the
   mean of its tokens' probabilities, as there.
2. The path reaches a token when the model has heard enough to write it, after the word began: against word-level
   forced alignments (pocketsphinx) of clips other than the benchmark's, the bundled tiny.en's boundaries came a
   median 0.10 s late, starts and ends alike (docs/benchmarks.md, "Word timings (#24)"). LAG takes that back.
3. Dynamic time warping starts at the window's first frame and gives the silence around speech to some word: the
   first word of every window began at 0, in the segmenter's pre-roll, and a word after a pause often took the
   pause. The window's own quiet stretches (at least 0.1 s, well under its loud frames) are found from its energy,
   and a word edge in or next to one moves to the speech side of it.

Times are seconds from the window's first sample, within [0, window length].
"""
from __future__ import annotations

import numpy as np

from .transcript import Word

SAMPLE_RATE = 16000
HOP = 160  # samples per log-mel frame; the encoder's frames are two of them (20 ms)
FRAME = 2 * HOP  # the alignment's resolution, and the frame of the energy used to find pauses
LAG = 0.10  # s the alignment's boundaries come late (tiny.en; see the module doc)
MIN_PAUSE = 5  # frames: a shorter quiet stretch is likely a stop consonant's closure, inside a word
QUIET = 0.2  # a frame is quiet below this fraction of the way from the window's noise floor to its loud frames
DIGITAL = -80.0  # dBFS: frames below are digital silence, left out of the floor's estimate (but quiet)
REACH = 0.5  # s: the most a word edge moves to meet a pause
# faster-whisper's defaults for WhisperModel.transcribe
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END = ".。!！?？"


def align(whisper, tokenizer, encoded: np.ndarray,
          rows: list[tuple[int, list[int], np.ndarray]]) -> dict[int, tuple[Word, ...]]:
    """{row: its words} for `rows` of (row of `encoded`, its text tokens, its audio), in one `align` call.
    `whisper` is faster-whisper's WhisperModel, `encoded` the batch's encoder output."""
    import ctranslate2

    if not rows:
        return {}
    index = [r for r, _, _ in rows]
    tokens = [list(t) for _, t, _ in rows]
    frames = [max(2, len(audio) // HOP) for _, _, audio in rows]
    if len(rows) > 1 and len({f // 2 for f in frames}) == 1:
        # When every row has as many audio frames, CTranslate2 normalises the attention over the batch's padded
        # token positions, and a row's timings would depend on its batch-mates; with rows of different lengths it
        # takes each row on its own. A row of one frame and no text (its result unused) makes that so.
        index, tokens, frames = index + [index[0]], tokens + [[]], frames + [4 if frames[0] // 2 == 1 else 2]
    alignments = whisper.find_alignment(tokenizer, tokens, ctranslate2.StorageView.from_array(
        np.ascontiguousarray(encoded[index])), frames)
    return {r: _words(alignment, audio) for (r, _, audio), alignment in zip(rows, alignments)}


def _words(alignment: list[dict], audio: np.ndarray) -> tuple[Word, ...]:
    """One window's words: faster-whisper's `add_word_timestamps` for a segment without timestamp tokens, then
    the lag taken back and the edges snapped to pauses (the module doc's steps 2 and 3)."""
    from faster_whisper.transcribe import merge_punctuations

    durations = np.array([w["end"] - w["start"] for w in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    # faster-whisper's hack: punctuation at a sentence end (and the word after it) is no longer than twice the
    # median word: DTW gives such tokens the pause that follows (or precedes) them.
    if len(durations):
        for i in range(1, len(alignment)):
            if alignment[i]["end"] - alignment[i]["start"] > longest:
                if alignment[i]["word"] in SENTENCE_END:
                    alignment[i]["end"] = alignment[i]["start"] + longest
                elif alignment[i - 1]["word"] in SENTENCE_END:
                    alignment[i]["start"] = alignment[i]["end"] - longest
    merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    words = [{"word": w["word"], "start": float(w["start"]), "end": float(w["end"]), "probability": w["probability"]}
             for w in alignment if w["word"]]
    if not words:
        return ()
    # ... and the first word after a pause (the window's start) is no longer than twice the median either.
    first = words[0]
    if first["end"] > median * 4 and (first["end"] - first["start"] > longest or (
            len(words) > 1 and words[1]["end"] - first["start"] > longest * 2)):
        if len(words) > 1 and words[1]["end"] - words[1]["start"] > longest:
            boundary = max(words[1]["end"] / 2, words[1]["end"] - longest)
            first["end"] = words[1]["start"] = boundary
        first["start"] = max(0.0, first["end"] - longest)
    duration = len(audio) / SAMPLE_RATE
    clamp = lambda t: round(min(max(t, 0.0), duration), 3)  # noqa: E731
    for w in words:
        w["start"], w["end"] = clamp(w["start"] - LAG), clamp(w["end"] - LAG)
    snap(words, pauses(audio))
    return tuple(Word(w["word"].strip(), clamp(w["start"]), clamp(w["end"]), round(float(w["probability"]), 4))
                 for w in words if w["word"].strip())



def pauses(audio: np.ndarray) -> list[tuple[float, float]]:
    """The window's quiet stretches of MIN_PAUSE frames or more, (start, end) in seconds. Quiet is relative to the
    window itself (its 10th and 95th percentile frame energies): rooms and microphones differ."""
    n = len(audio) // FRAME
    if n < MIN_PAUSE:
        return []
    rms = np.sqrt(np.mean(np.square(audio[: n * FRAME].reshape(n, FRAME), dtype=np.float64), axis=1))
    db = 20 * np.log10(np.maximum(rms, 1e-10))
    live = db[db > DIGITAL]
    if not len(live):
        return []
    loud = np.percentile(live, 95)
    floor = max(np.percentile(live, 10), loud - 40)  # a window of speech alone has no floor of its own
    quiet = np.concatenate([[False], db < floor + QUIET * (loud - floor), [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    return [(float(a * FRAME / SAMPLE_RATE), float(b * FRAME / SAMPLE_RATE))
            for a, b in zip(edges[::2], edges[1::2]) if b - a >= MIN_PAUSE]


def snap(words: list[dict], quiet: list[tuple[float, float]]) -> None:
    """Moves word edges out of pauses, in place: a start inside a pause, or just after the end of one (since the
    previous word ended), moves to the pause's end; an end inside a pause, or just before one (until the next word
    starts), moves to its start. Punctuation takes no time, so the sound between a word and a pause is the word's.
    Never past the word's other edge, never further than REACH, so the words stay in order."""
    for i, w in enumerate(words):
        before = words[i - 1]["end"] if i else 0.0
        after = words[i + 1]["start"] if i + 1 < len(words) else w["end"] + REACH
        for s0, s1 in quiet:
            if (s0 <= w["start"] <= s1 or max(before, w["start"] - REACH) <= s1 <= w["start"]) and s1 < w["end"]:
                w["start"] = s1
        for s0, s1 in quiet:
            if (s0 <= w["end"] <= s1 or w["end"] <= s0 <= min(after, w["end"] + REACH)) and s0 > w["start"]:
                w["end"] = s0
                break
