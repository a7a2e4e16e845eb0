"""Voice activity detectors: one speech/non-speech decision per fixed-size frame of 16 kHz float32 audio."""
from __future__ import annotations

import numpy as np

from ..config import SegmenterConfig
from .requests import SAMPLE_RATE


class WebRtcVad:
    def __init__(self, aggressiveness: int, frame_ms: int):
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)
        self.frame_samples = SAMPLE_RATE * frame_ms // 1000

    def is_speech(self, frame: np.ndarray) -> bool:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        return self._vad.is_speech(pcm, SAMPLE_RATE)


class SileroModel:
    """Silero VAD's ONNX model (it ships inside the silero-vad package), loaded once and shared by every stream:
    the model is stateless given its inputs, so each stream keeps only its own recurrent state and context."""

    CONTEXT = 64  # samples of the previous chunk the model sees before each 512-sample chunk (at 16 kHz)

    def __init__(self):
        from importlib import resources

        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = opts.intra_op_num_threads = 1  # a 512-sample chunk: threads would only cost
        path = str(resources.files("silero_vad.data") / "silero_vad.onnx")
        self._session = onnxruntime.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def speech_prob(self, chunk: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """(probability that `chunk` is speech, the next state); chunk = CONTEXT + 512 samples."""
        out, state = self._session.run(None, {"input": chunk[None, :], "state": state, "sr": self._sr})
        return float(out[0, 0]), state


class SileroVad:
    """One stream's use of the shared Silero model."""

    frame_samples = 512  # the model's fixed chunk at 16 kHz

    def __init__(self, model: SileroModel, threshold: float):
        self._model = model
        self._threshold = threshold
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(SileroModel.CONTEXT, np.float32)

    def is_speech(self, frame: np.ndarray) -> bool:
        chunk = np.concatenate([self._context, frame.astype(np.float32, copy=False)])
        prob, self._state = self._model.speech_prob(chunk, self._state)
        self._context = chunk[-SileroModel.CONTEXT:]
        return prob >= self._threshold


class VadFactory:
    """One VAD per stream (their state is the stream's), from models loaded once for the whole server."""

    def __init__(self, cfg: SegmenterConfig):
        self._cfg = cfg
        self._silero = SileroModel() if cfg.vad == "silero" else None

    def __call__(self):
        if self._silero is not None:
            return SileroVad(self._silero, self._cfg.silero_threshold)
        return WebRtcVad(self._cfg.aggressiveness, self._cfg.frame_ms)


def make_vad(cfg: SegmenterConfig):
    """A VAD for one stream with a model of its own (tests and tools; the server shares one: VadFactory)."""
    return VadFactory(cfg)()
