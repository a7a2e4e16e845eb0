"""Embedded CPU backend: pocketsphinx with the US English model that its PyPI wheel ships."""
from __future__ import annotations

import numpy as np

from ..protocol import SAMPLE_RATE


class SphinxBackend:
    name = "sphinx"

    def __init__(self):
        from pocketsphinx import Decoder, get_model_path

        self.model = f"pocketsphinx en-us ({get_model_path()})"
        # Batch CMN, reset before every window: with the default live CMN a window's text would depend on the
        # windows decoded before it (and on other sessions' audio, since one decoder serves them all).
        self._decoder = Decoder(samprate=SAMPLE_RATE, cmn="batch", loglevel="FATAL")
        self._cmn0 = self._decoder.get_cmn()

    def transcribe(self, audios: list[np.ndarray]) -> list[str]:
        return [self._one(audio) for audio in audios]

    def _one(self, audio: np.ndarray) -> str:
        if len(audio) < SAMPLE_RATE // 10:
            return ""  # too short for a word; pocketsphinx fails on a near-empty buffer
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        d = self._decoder
        d.reinit_feat()
        d.set_cmn(self._cmn0)
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr.strip() if hyp else ""

    def close(self) -> None:
        self._decoder = None
