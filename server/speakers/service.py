"""The Diarizer: the voice encoder and the one thread that runs it, shared by every stream that labels voices.

Embedding a final window's pieces takes tens of milliseconds of CPU: it runs in the Diarizer's single worker
thread, never on the event loop, one window at a time (so a stream's tracker is only ever touched there). The
model loads in that thread too, on the first stream that asks for labels (about 1 s), not at start-up: a server
whose streams never diarize never loads it. A model that cannot load (not installed, not the pinned weights)
fails each `tracker()` call with its reason, and the session goes on without labels.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backends.transcript import Word
from .encoder import Encoder
from .options import SpeakerOptions
from .tracker import SpeakerTracker
from .words import label_words

log = logging.getLogger(__name__)


class Diarizer:
    def __init__(self, options: SpeakerOptions | None = None):
        """Cheap: nothing loads until a stream asks (`tracker`) or `load` is awaited."""
        self.options = options or SpeakerOptions()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speakers")
        self._encoder: Encoder | None = None
        self._error: Exception | None = None  # why the model did not load (not retried: the install is fixed)
        self._loading = asyncio.Lock()

    async def load(self) -> None:
        """Loads the encoder in the worker thread, once; raises RuntimeError if it cannot."""
        async with self._loading:
            if self._encoder is None and self._error is None:
                loop = asyncio.get_running_loop()
                try:
                    encoder, previous = await loop.run_in_executor(self._executor, _load_pinned)
                except Exception as exc:  # noqa: BLE001 - kept and raised to every stream that asks
                    self._error = exc
                else:
                    # The worker's pinning set torch's default for new threads to 1: it goes back, from a helper
                    # thread (the event loop's own thread never imports torch for this).
                    await asyncio.to_thread(encoder.set_default_threads, previous)
                    self._encoder = encoder
                    log.info("speaker labels: %s loaded", encoder.name)
        if self._error is not None:
            raise RuntimeError(str(self._error)) from self._error

    async def tracker(self, state: dict | None = None) -> SpeakerTracker:
        """A stream's tracker: new, or going on from `state` (SpeakerTracker.to_dict, e.g. ResumeState.voices).
        Loads the model first if need be; raises RuntimeError if it cannot be loaded."""
        await self.load()
        return SpeakerTracker.from_dict(state, self.options) if state else SpeakerTracker(self.options)

    async def label(self, tracker: SpeakerTracker, audio: np.ndarray,
                    words: Sequence[Word] | None) -> tuple[Word, ...]:
        """One final window (16 kHz float32) and its words (times from the window's start): the words with their
        `speaker` set, from the worker thread. The tracker learns from the window. Without words the tracker
        still learns from the window's speech and () is returned."""
        await self.load()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._label, tracker, audio, words)

    def _label(self, tracker: SpeakerTracker, audio: np.ndarray, words: Sequence[Word] | None) -> tuple[Word, ...]:
        assert self._encoder is not None
        pieces = tracker.track(audio, words, self._encoder)
        return label_words(words, pieces) if words is not None else ()

    async def close(self) -> None:
        """Stops the worker; a window it is embedding finishes in the background, queued ones are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _load_pinned() -> tuple[Encoder, int]:
    """In the worker thread: the encoder, and torch's default thread count before the thread was pinned to 1."""
    encoder = Encoder()
    return encoder, encoder.pin_thread()
