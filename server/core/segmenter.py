"""VAD windowing: cuts one stream of 16 kHz audio into speech windows of at most `max_window_s`.

A window opens on `min_speech_ms` of voiced frames (reaching back `pre_roll_ms` so first phonemes are kept) and
closes after `hangover_ms` of silence. A window that reaches the cap is cut at the quietest 10 ms of its last
`cut_search_s`, and the next window starts exactly at that sample: none lost, none repeated. While a window is
open, a Partial carrying the whole window so far is emitted every `partial_interval_s` of new audio.

All positions are sample indices of the stream at 16 kHz. The segmenter knows nothing of sockets or models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import SegmenterConfig
from .requests import SAMPLE_RATE

CUT_FRAME = SAMPLE_RATE // 100  # 10 ms: resolution of the quietest-point search


@dataclass
class Window:
    """A snapshot of one window: `final` is True once it is closed and will not change again."""

    segment: int
    start: int  # first sample, stream index
    audio: np.ndarray
    final: bool
    continued: bool = False  # a final cut at the cap mid-speech: the next window starts at its end

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


class Segmenter:
    def __init__(self, cfg: SegmenterConfig, vad, position: int = 0, segment: int = 0, open_window: bool = False):
        """`position`, `segment`: where the stream's clock and numbering begin (a resumed stream goes on).
        `open_window`: begin inside a window, as a resumed stream does whose window the drop cut mid-speech: the
        rest of that utterance may be too short to open a window of its own, and must not be lost."""
        ms = SAMPLE_RATE // 1000
        self._vad = vad
        self._frame = vad.frame_samples
        self._pre_roll = cfg.pre_roll_ms * ms
        self._hangover = cfg.hangover_ms * ms
        self._min_speech = max(cfg.min_speech_ms * ms, 1)
        self._max_window = int(cfg.max_window_s * SAMPLE_RATE)
        self._cut_search = int(cfg.cut_search_s * SAMPLE_RATE)
        self._partial_every = int(cfg.partial_interval_s * SAMPLE_RATE)

        self._pending = np.zeros(0, np.float32)  # samples that do not yet fill a VAD frame
        self._pos = position  # stream index of the first pending sample
        self._floor = position  # no window may start before this (the end of the previous one)
        # Recent audio: while idle the last pre-roll + onset, while a window is open that window's audio.
        self._chunks: list[np.ndarray] = []
        self._buf_start = position
        self._buf_len = 0
        self._open = False
        self._voiced_run = 0
        self._silence_run = 0
        self._since_partial = 0
        self._segment = segment
        self._open = open_window
        self._unvoiced_resume = open_window  # that window has had no voiced frame yet: silence alone ends it quietly

    # -- public ------------------------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Stream index just past the last sample pushed."""
        return self._pos + len(self._pending)

    @property
    def in_window(self) -> bool:
        """A window is open (speech, or the hangover after it)."""
        return self._open

    def push(self, samples: np.ndarray) -> list[Window]:
        """Feeds audio; returns the windows (partials and finals, in order) that it produced."""
        events: list[Window] = []
        data = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n_frames = len(data) // self._frame
        for i in range(n_frames):
            self._step(data[i * self._frame:(i + 1) * self._frame], events)
        self._pending = data[n_frames * self._frame:]
        return events

    def finalize(self) -> list[Window]:
        """Closes the open window now (with any not-yet-framed samples). A voiced onset still too short to have
        opened a window is closed too, so that speech cut off by a stop is still transcribed."""
        onset = self._pos - self._voiced_run if not self._open and self._voiced_run else None
        if len(self._pending):
            self._append(self._pending)
            self._pos += len(self._pending)
            self._pending = np.zeros(0, np.float32)
        if onset is not None:
            self._open_window(onset)
        if self._open and self._unvoiced_resume:
            self._open = False  # nothing came after the drop's cut
            return []
        return [self._close(self._pos)] if self._open else []

    def clear(self) -> None:
        """Drops every sample not yet in a final: the open window (it gets no final; the next window takes its
        segment number) and the recent audio an opening window could reach back to. The stream clock goes on:
        the next window starts after this point."""
        self._pos += len(self._pending)
        self._pending = np.zeros(0, np.float32)
        self._chunks, self._buf_start, self._buf_len = [], self._pos, 0
        self._floor = self._pos
        self._open = self._unvoiced_resume = False
        self._voiced_run = self._silence_run = self._since_partial = 0

    # -- internals ---------------------------------------------------------------------------------------------

    def _step(self, frame: np.ndarray, events: list[Window]) -> None:
        voiced = self._vad.is_speech(frame)
        self._append(frame)
        self._pos += len(frame)
        if not self._open:
            self._voiced_run = self._voiced_run + len(frame) if voiced else 0
            if self._voiced_run >= self._min_speech:
                self._open_window(self._pos - self._voiced_run)
            else:
                self._trim_idle()
            return
        self._silence_run = 0 if voiced else self._silence_run + len(frame)
        self._since_partial += len(frame)
        self._unvoiced_resume = self._unvoiced_resume and not voiced
        if self._silence_run >= self._hangover and self._unvoiced_resume:
            self._unvoiced_resume = self._open = False  # the drop had cut no speech after all: no final of silence
            self._floor = self._buf_start
            self._trim_idle()
        elif self._silence_run >= self._hangover:
            events.append(self._close(self._pos))
            self._trim_idle()
        elif self._buf_len + self._frame > self._max_window:
            # One more frame would pass the cap: cut now, at the quietest point of the last stretch.
            audio = self._audio()
            tail = audio[len(audio) - self._cut_search:]
            n = len(tail) // CUT_FRAME
            energy = np.square(tail[len(tail) - n * CUT_FRAME:].reshape(n, CUT_FRAME)).mean(axis=1)
            cut = len(audio) - n * CUT_FRAME + int(np.argmin(energy)) * CUT_FRAME + CUT_FRAME // 2
            events.append(self._close(self._buf_start + cut, audio, continued=True))
            # The rest starts the next window at exactly the cut sample (where _close left _buf_start).
            self._append(audio[cut:])
            self._open = True
            self._silence_run = 0
            self._since_partial = self._buf_len
        elif self._since_partial >= self._partial_every:
            self._since_partial = 0
            events.append(Window(self._segment, self._buf_start, self._audio(), final=False))

    def _open_window(self, onset: int) -> None:
        start = max(onset - self._pre_roll, self._floor, self._buf_start)
        audio = self._audio()[start - self._buf_start:]
        self._chunks, self._buf_start, self._buf_len = [audio], start, len(audio)
        self._open = True
        self._silence_run = 0
        self._since_partial = self._buf_len

    def _close(self, end: int, audio: np.ndarray | None = None, continued: bool = False) -> Window:
        audio = self._audio() if audio is None else audio
        window = Window(self._segment, self._buf_start, audio[:end - self._buf_start].copy(), final=True,
                        continued=continued)
        self._segment += 1
        self._floor = end
        self._open = False
        self._voiced_run = 0
        self._chunks, self._buf_start, self._buf_len = [], end, 0
        return window

    def _append(self, samples: np.ndarray) -> None:
        self._chunks.append(samples)
        self._buf_len += len(samples)

    def _audio(self) -> np.ndarray:
        if len(self._chunks) != 1:
            self._chunks = [np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)]
        return self._chunks[0]

    def _trim_idle(self) -> None:
        """While idle keep only what a window opening now could reach back to."""
        keep = self._pre_roll + self._min_speech + self._frame
        if self._buf_len > 2 * keep:
            audio = self._audio()[self._buf_len - keep:]
            self._chunks, self._buf_start, self._buf_len = [audio], self._buf_start + self._buf_len - keep, keep
