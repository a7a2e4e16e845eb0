"""The soak clients' audio: short utterances and pauses at 16 kHz, the windows the server's segmenter cuts it into
when nothing drops (what the finals must cover), and where in it a client may drop."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from client.stream import encode
from server.config import SegmenterConfig
from server.core.segmenter import Segmenter
from server.core.vad import make_vad

from ..clips import FRAME as SPEECH_FRAME, load_16k, speech_mask
from ..server import ROOT

RATE = 16000
# Short single utterances (no inner pause longer than the VAD hangover): each gives one window, one final.
UTTERANCES = ["ldc93s1.wav", "uberi_one_two_three.wav"]
PAUSE_S = 1.5
SEND_FRAME = RATE // 10  # 100 ms frames, as a microphone client sends them
# Where in an utterance a drop may fall: on a speech frame at least DROP_AFTER_S past its first one (the VAD has
# opened its window by then) and at least DROP_BEFORE_S before its last (the rest is speech enough for a window of
# its own, so that the cut utterance is expected to give exactly two finals).
DROP_AFTER_S, DROP_BEFORE_S = 0.4, 0.3


@lru_cache(maxsize=None)
def clip(name: str) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """A clip at 16 kHz and its speech: runs of 10 ms speech frames as (start, end) samples of the clip."""
    audio = load_16k(ROOT.parent / "shared" / "audio" / name)
    mask = np.concatenate([[False], speech_mask(audio), [False]])
    edges = np.flatnonzero(mask[1:] != mask[:-1])  # starts and ends of the runs, alternating
    return audio, tuple((int(a) * SPEECH_FRAME, int(b) * SPEECH_FRAME) for a, b in zip(edges[::2], edges[1::2]))


@dataclass
class Stream:
    audio: np.ndarray
    spans: list[tuple[float, float]]  # each utterance's (start, end) in seconds, the whole clip
    speech: list[list[tuple[int, int]]]  # each utterance's speech runs, stream samples
    # The server's windows of this audio when nothing drops (samples): set by soak() for its segmenter settings.
    windows: list[tuple[int, int]] = field(default_factory=list)
    vad_frame: int = 0  # samples the VAD decides on at once


@lru_cache(maxsize=None)
def speech_and_pauses(seconds: float, first: int) -> Stream:
    """`seconds` of utterances separated by pauses, starting with utterance `first` of the cycle."""
    clips = [clip(name) for name in UTTERANCES]
    total = int(seconds * RATE)
    audio = np.zeros(total, np.float32)
    spans, speech, pos, i = [], [], int(0.5 * RATE), first
    while pos + len(clips[i % len(clips)][0]) + RATE // 2 <= total:
        samples, runs = clips[i % len(clips)]
        audio[pos:pos + len(samples)] = samples
        spans.append((pos / RATE, (pos + len(samples)) / RATE))
        speech.append([(pos + a, pos + b) for a, b in runs])
        pos += len(samples) + int(PAUSE_S * RATE)
        i += 1
    return Stream(audio, spans, speech)


def reference_windows(audio: np.ndarray, cfg: SegmenterConfig) -> list[tuple[int, int]]:
    """The windows the server's segmenter (same VAD, same settings) cuts this audio into when nothing drops: what
    its finals must cover. The audio goes through the same 16-bit PCM as on the wire."""
    pcm = np.frombuffer(encode(audio, "pcm_s16le"), "<i2").astype(np.float32) / 32768.0
    seg = Segmenter(cfg, make_vad(cfg))
    windows = [w for i in range(0, len(pcm), SEND_FRAME) for w in seg.push(pcm[i:i + SEND_FRAME])]
    return [(w.start, w.end) for w in windows + seg.finalize() if w.final]


def plan_drop(stream: Stream, rng: random.Random) -> int | None:
    """The sample (a frame boundary) at which to drop: on a speech frame of a random utterance but the last."""
    choices = []
    for runs in stream.speech[:-1] or stream.speech:
        lo, hi = runs[0][0] + int(DROP_AFTER_S * RATE), runs[-1][1] - int(DROP_BEFORE_S * RATE)
        choices += [f for a, b in runs for f in range(a - a % SEND_FRAME, b, SEND_FRAME) if lo <= f < hi and a <= f]
    return rng.choice(choices) if choices else None
