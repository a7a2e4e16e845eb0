"""Client PCM bytes -> float32 mono at 16 kHz, resampled as a stream with soxr."""
from __future__ import annotations

import numpy as np
import soxr

from .errors import BAD_AUDIO, ProtocolError
from .requests import SAMPLE_RATE, Start


class AudioDecoder:
    """Decodes one stream's binary frames; keeps soxr's state across frames so that no sample is lost or doubled."""

    def __init__(self, start: Start, max_frame_s: float = 1.0):
        self.start = start
        self.max_frame_bytes = int(start.sample_rate * max_frame_s) * start.bytes_per_sample
        self._resampler = None
        if start.sample_rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(start.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def decode(self, data: bytes) -> np.ndarray:
        """One binary frame -> 16 kHz float32 samples (possibly none yet: the resampler holds a short delay)."""
        bps = self.start.bytes_per_sample
        if len(data) == 0:
            raise ProtocolError(BAD_AUDIO, "empty binary frame")
        if len(data) % bps:
            raise ProtocolError(BAD_AUDIO, f"binary frame of {len(data)} bytes is not a whole number of "
                                           f"{self.start.encoding} samples ({bps} bytes each); frame ignored")
        if len(data) > self.max_frame_bytes:
            raise ProtocolError(BAD_AUDIO, f"binary frame of {len(data)} bytes is longer than 1 s of audio "
                                           f"({self.max_frame_bytes} bytes); frame ignored")
        if self.start.encoding == "pcm_s16le":
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        else:
            samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
            if not np.isfinite(samples).all():
                raise ProtocolError(BAD_AUDIO, "pcm_f32le frame holds NaN or infinite samples; frame ignored")
            samples = np.clip(samples, -1.0, 1.0)
        if self._resampler is None:
            return samples
        return self._resampler.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """The resampler's delayed tail, at the end of the stream."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
