"""Live audio to the server's format: any rate and channel count in, 16 kHz mono in fixed-size frames out.

Both pieces keep state across calls, so a stream cut into blocks of any size gives the same samples as the
whole signal at once: no clicks at block edges and no drift of the stream clock over hours.
"""
from __future__ import annotations

import numpy as np
import soxr

RATE = 16000  # what the server works in; sending it saves the server a resampling step and 2/3 of the bytes


class MonoResampler:
    """Downmixes blocks of shape (frames,) or (frames, channels) to mono and resamples them to `out_rate` with
    one streaming soxr resampler (its filter state carries over between blocks)."""

    def __init__(self, in_rate: int, out_rate: int = RATE):
        self.in_rate, self.out_rate = int(in_rate), out_rate
        self._soxr = None if self.in_rate == out_rate else soxr.ResampleStream(self.in_rate, out_rate, 1,
                                                                               dtype="float32", quality="HQ")

    def __call__(self, block: np.ndarray) -> np.ndarray:
        mono = np.asarray(block, dtype=np.float32)
        if mono.ndim == 2:
            mono = mono.mean(axis=1, dtype=np.float32)
        if self._soxr is None:
            return mono.copy()
        return self._soxr.resample_chunk(mono)

    def flush(self) -> np.ndarray:
        """The samples still inside the filter; call once at the end of the stream."""
        if self._soxr is None:
            return np.zeros(0, np.float32)
        return self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)


class Framer:
    """Cuts a stream of samples into frames of exactly `size` samples; keeps the remainder for the next call."""

    def __init__(self, size: int):
        self.size = size
        self._rest = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        buf = np.concatenate([self._rest, samples]) if len(self._rest) else samples
        whole = len(buf) // self.size * self.size
        self._rest = buf[whole:].copy()
        return [buf[i:i + self.size] for i in range(0, whole, self.size)]

    def flush(self) -> np.ndarray:
        """The last, shorter frame (possibly empty)."""
        rest, self._rest = self._rest, np.zeros(0, np.float32)
        return rest


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> little-endian int16, the encoding the client sends (half the bytes of f32)."""
    return (np.clip(samples, -1.0, 1.0) * 32767).round().astype("<i2")
