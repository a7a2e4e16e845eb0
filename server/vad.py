"""Voice activity detectors: one speech/non-speech decision per fixed-size frame of 16 kHz float32 audio."""
from __future__ import annotations

import numpy as np

from .config import SegmenterConfig
from .protocol import SAMPLE_RATE


class WebRtcVad:
    def __init__(self, aggressiveness: int, frame_ms: int):
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)
        self.frame_samples = SAMPLE_RATE * frame_ms // 1000

    def is_speech(self, frame: np.ndarray) -> bool:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        return self._vad.is_speech(pcm, SAMPLE_RATE)


class SileroVad:
    """Silero VAD (its model ships inside the silero-vad package). Stateful: one instance per stream."""

    frame_samples = 512  # the model's fixed chunk at 16 kHz

    def __init__(self, threshold: float):
        import torch
        from silero_vad import load_silero_vad

        self._torch = torch
        self._model = load_silero_vad()
        self._model.reset_states()
        self._threshold = threshold

    def is_speech(self, frame: np.ndarray) -> bool:
        with self._torch.inference_mode():
            prob = self._model(self._torch.from_numpy(np.ascontiguousarray(frame)), SAMPLE_RATE).item()
        return prob >= self._threshold


def make_vad(cfg: SegmenterConfig):
    if cfg.vad == "silero":
        return SileroVad(cfg.silero_threshold)
    return WebRtcVad(cfg.aggressiveness, cfg.frame_ms)
