"""Embedded CPU backend: pocketsphinx with the US English model that its PyPI wheel ships.

pocketsphinx holds the GIL for a whole decode (seconds), which would freeze the event loop, so decoding runs in
worker processes; a batch's windows are decoded in parallel across them.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from ..protocol import SAMPLE_RATE

_decoder = None  # one per worker process
_cmn0 = None


def _init_worker() -> None:
    global _decoder, _cmn0
    from pocketsphinx import Decoder

    _exit_with_parent()

    # Batch CMN, reset before every window: with the default live CMN a window's text would depend on the
    # windows decoded before it in this worker (other sessions' audio among them).
    _decoder = Decoder(samprate=SAMPLE_RATE, cmn="batch", loglevel="FATAL")
    _cmn0 = _decoder.get_cmn()


def _exit_with_parent() -> None:
    """Linux: have the kernel end this worker when the server dies, even by SIGKILL (no orphans)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _decode(pcm: bytes) -> str:
    if len(pcm) < SAMPLE_RATE // 10 * 2:
        return ""  # too short for a word; pocketsphinx fails on a near-empty buffer
    d = _decoder
    d.reinit_feat()
    d.set_cmn(_cmn0)
    d.start_utt()
    d.process_raw(pcm, full_utt=True)
    d.end_utt()
    hyp = d.hyp()
    return hyp.hypstr.strip() if hyp else ""


class SphinxBackend:
    name = "sphinx"

    def __init__(self, workers: int = 0):
        from pocketsphinx import get_model_path

        self.model = f"pocketsphinx en-us ({get_model_path()})"
        self._workers = workers or min(2, os.cpu_count() or 1)
        self._pool = self._new_pool()
        self._pool.submit(int).result()  # start the workers now, not on the first caption

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the server process has threads, and a forked child would inherit their locks.
        return ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker)

    def transcribe(self, audios: list[np.ndarray]) -> list[str]:
        pcm = [(np.clip(a, -1.0, 1.0) * 32767).astype("<i2").tobytes() for a in audios]
        try:
            return list(self._pool.map(_decode, pcm))
        except BrokenProcessPool:
            self._pool = self._new_pool()  # a worker died: this batch fails, the next one gets fresh workers
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
