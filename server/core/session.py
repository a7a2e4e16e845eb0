"""One live stream, whatever protocol carries it: audio -> segmenter -> engine -> output sink.

It decodes and resamples audio, feeds the segmenter, submits windows to the shared engine and hands captions to
its sink in protocol order: finals strictly by segment number, a partial only while its segment is still open and
only if it is newer than the last one sent. The protocol adapters (server/streams/) parse messages and call
start / audio / finalize / stop / detach, and encode the session's typed events (events.py) into their own frames;
nothing here knows about sockets or wire formats.

When the client goes away without `stop`, `detach` still turns every open window into a final, which reaches the
transcript and the room (the sink keeps those without the socket). The session's `state()` is then what a
reconnecting client needs to resume it (state.py).

A final carries its words on the stream's clock (words.py). With diarization on, the shared diarizer labels them
with their voices, window by window as finals come, in order: "Speaker 1", "Speaker 2", ... stable for the
session, and across a resume (the voice profiles and the names the speaker gave go with the resume state). A
diarizer that fails or is slow costs the labels of that final, never the final.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING, Protocol

from ..backends.transcript import Transcript, Word
from ..config import SegmenterConfig
from .audio import AudioDecoder
from .engine import BackendError, Engine
from .errors import BACKEND_ERROR, BAD_MESSAGE, DIARIZE_UNAVAILABLE, ProtocolError
from .events import End, Error, Event, Final, Partial, Ready, Renamed
from .requests import SAMPLE_RATE, Start
from .segmenter import Segmenter, Window
from .state import RECENT_FINALS, ResumeState
from .vad import VadFactory
from .words import estimate, place

if TYPE_CHECKING:
    from ..speakers import Diarizer, SpeakerTracker

DIARIZE_TIMEOUT_S = 10.0  # a final waits this long at most for its labels, then goes without them

log = logging.getLogger(__name__)


def seconds(sample: int) -> float:
    return sample / SAMPLE_RATE


def stable_prefix(previous: list[str], current: list[str]) -> int:
    """Leading words on which two consecutive partials agree: such words rarely change later
    (local agreement), so clients can show them as settled."""
    n = 0
    for a, b in zip(previous, current):
        if a != b:
            break
        n += 1
    return n


class Sink(Protocol):
    """Where a session's events go (delivery/sink.py): the transcript, the room, and the client while it is there.
    Declared here so that the core depends on no delivery code."""

    speaker: str | None  # the label the room's viewers see, once in a room

    @property
    def room(self) -> str | None: ...  # the room's name, once in a room

    @property
    def attached(self) -> bool: ...  # the client's connection is still there

    def join(self, room: str, speaker: str) -> None: ...
    def leave(self) -> None: ...
    def detach(self) -> None: ...
    async def started(self, state: ResumeState) -> None: ...
    async def final(self, final: Final, state: ResumeState) -> None: ...
    async def partial(self, partial: Partial) -> None: ...
    async def to_client(self, event: Event) -> None: ...


class Session:
    def __init__(self, session_id: str, engine: Engine, seg_cfg: SegmenterConfig, vad_factory: VadFactory,
                 sink: Sink, resumed: ResumeState | None = None, diarizer: Diarizer | None = None):
        self.id = session_id
        self.token = resumed.token if resumed else secrets.token_urlsafe(24)
        self._engine = engine
        self._seg_cfg = seg_cfg
        self._vad_factory = vad_factory
        self.sink = sink
        self._resumed = resumed
        self._context: str | None = None
        self._decoder: AudioDecoder | None = None
        self._segmenter: Segmenter | None = None
        self._skip = 0  # resent samples that finals already cover, still to drop
        self._finals: asyncio.Queue[tuple[Window, asyncio.Future] | None] = asyncio.Queue()  # in segment order
        self._final_sender: asyncio.Task | None = None
        self._partial_tasks: set[asyncio.Task] = set()
        self._open_segment = resumed.next_segment if resumed else 0  # below this: final submitted
        self._last_partial: dict[int, tuple[int, str]] = {}  # segment -> (end sample, text) last sent
        self._recent: deque[Final] = deque(resumed.finals if resumed else (), maxlen=RECENT_FINALS)
        self._covered = resumed.covered if resumed else 0
        self._cut_open = False
        self._cleared_to = 0  # stream sample up to which audio was dropped by `clear`: older partials are stale
        self._diarizer = diarizer  # shared by the server's sessions; None: this server labels no voices
        self._voices: SpeakerTracker | None = None  # this stream's voices (speakers/), while it labels them
        self._names: dict[str, str] = dict(resumed.names) if resumed else {}  # voice label -> name given
        self.ended = False

    @property
    def next_segment(self) -> int:
        """The number the next window's final gets: those below it are submitted."""
        return self._open_segment

    @property
    def started(self) -> bool:
        return self._segmenter is not None

    def _input(self) -> tuple[AudioDecoder, Segmenter]:
        """The decoder and segmenter, which start() makes."""
        if self._decoder is None or self._segmenter is None:
            raise RuntimeError(f"session {self.id}: audio before start()")
        return self._decoder, self._segmenter

    @property
    def bytes_per_second(self) -> int | None:
        """Of the client's audio, once started: what rate limits are measured in."""
        return self._decoder.start.bytes_per_second if self._decoder else None

    async def start(self, start: Start, room: str | None = None) -> None:
        """Begins (or resumes) the stream and answers `ready`; a resumed one then gets the finals it missed.
        `room`: the room the adapter resolved (a resumed session keeps its own when none is given)."""
        r = self._resumed
        room = room or (r.room if r else None)
        self._context = start.context or (r.context if r else None)
        diarize = start.diarize if start.diarize is not None else (r.diarize if r else False)
        self._decoder = AudioDecoder(start)
        position, segment, in_window = 0, 0, False
        if r is not None:
            offset = start.offset or 0
            # Resent audio that finals already cover is dropped; a gap (audio the client no longer had) is skipped.
            self._skip = max(0, r.covered - offset)
            position, segment, in_window = max(r.covered, offset), r.next_segment, r.cut_open and offset <= r.covered
        self._segmenter = Segmenter(self._seg_cfg, self._vad_factory(), position, segment, in_window)
        self._cut_open = in_window  # until a flush says otherwise: what a resume would begin inside
        self._final_sender = asyncio.create_task(self._send_finals(), name=f"finals-{self.id}")
        if room is not None:
            self.sink.join(room, start.speaker or (r.speaker if r else None) or self.id)
        backend = self._engine.backend
        unavailable = None
        if diarize:
            try:
                if self._diarizer is None:
                    raise RuntimeError("this server runs without speaker labels")
                self._voices = await self._diarizer.tracker(r.voices if r else None)
            except Exception as exc:  # noqa: BLE001 - no labels is no reason to refuse the stream's captions
                log.warning("session %s: no speaker labels: %s", self.id, exc)
                unavailable = Error(DIARIZE_UNAVAILABLE, f"speaker labels are not available: {exc}")
        await self.sink.started(self.state())  # resumable (on any replica) before the client knows it is
        await self.sink.to_client(Ready(self.id, backend.name, backend.model, backend.reason, self.token,
                                        room=self.sink.room, speaker=self.sink.speaker, resumed=r is not None,
                                        position=seconds(position) if r is not None else None))
        if unavailable is not None:
            await self.sink.to_client(unavailable)
        if r is not None:
            for final in self._recent:
                if final.end > seconds(start.offset or 0):
                    await self.sink.to_client(dataclasses.replace(final, resent=True))

    def audio(self, data: bytes) -> None:
        """One binary frame (raises ProtocolError for a bad one)."""
        decoder, segmenter = self._input()
        samples = decoder.decode(data)
        if self._skip:
            dropped = min(self._skip, len(samples))
            samples, self._skip = samples[dropped:], self._skip - dropped
        self._dispatch(segmenter.push(samples))

    def finalize(self) -> bool:
        """Closes the open window now; False when there was none (nothing heard since the last final)."""
        windows = self._input()[1].finalize()
        self._dispatch(windows)
        return bool(windows)

    def clear(self) -> int:
        """Drops the audio not yet in a final (OpenAI Realtime's input_audio_buffer.clear): the open window gets no
        final, and its partials still being transcribed are not sent. Returns the segment number the next window
        takes: the dropped window's own, so that numbering stays gapless."""
        segmenter = self._input()[1]
        segmenter.clear()
        self._cleared_to = segmenter.position
        self._last_partial.pop(self._open_segment, None)
        return self._open_segment

    async def stop(self, reason: str | None = None) -> None:
        """Flushes: every open window becomes a final, all finals are delivered, then `end` (with the reason when
        the server, not the client, ended the stream)."""
        if self.ended:
            return
        await self._flush()
        await self.sink.to_client(End(reason))

    async def suspend(self) -> None:
        """Flushes like `stop`, finals still sent, but without `end`: the replica is draining and the client
        resumes the session on another one (`state()` is what it resumes)."""
        if not self.ended:
            await self._flush()

    async def detach(self) -> None:
        """The client is gone without `stop`: its open window still becomes a final, persisted and published;
        nothing more is sent to it. Returns once every final is through; `state()` then resumes it."""
        self.sink.detach()
        for task in self._partial_tasks:
            task.cancel()
        await self._flush()

    async def rename(self, label: str, name: str) -> None:
        """Gives a voice's label a name, shown on that voice's words from the next final on (the transcript keeps
        both: each word has its label and the name it was shown with). Raises ProtocolError (bad_message)."""
        if self._voices is None:
            raise ProtocolError(BAD_MESSAGE, "this stream labels no voices: start it with \"diarize\": true")
        if label not in self._voices.labels:
            raise ProtocolError(BAD_MESSAGE, f"no voice is labelled {label!r} in this stream")
        self._names[label] = name
        await self.sink.to_client(Renamed(label, name))

    def close(self) -> None:
        """The session is over for good: it leaves its room."""
        self.sink.leave()

    def state(self, next_segment: int | None = None, covered: int | None = None,
              cut_open: bool | None = None, finals: bool = True) -> ResumeState:
        """What resumes this session: as it is now, or (the arguments) as it is once a given final is out."""
        return ResumeState(
            self.id, self.token, self.sink.room, self.sink.speaker, self._context,
            self._open_segment if next_segment is None else next_segment,
            self._covered if covered is None else covered, self._cut_open if cut_open is None else cut_open,
            list(self._recent) if finals else [], diarize=self._voices is not None,
            voices=self._voices.to_dict() if self._voices is not None else None, names=dict(self._names))

    async def _flush(self) -> None:
        """Every open window becomes a final; returns once all finals are through. A second call (a drop during
        a drain or a stop) waits for the same finals."""
        if not self.ended:
            self.ended = True
            if self.started:
                decoder, segmenter = self._input()
                self._cut_open = segmenter.in_window
                tail = decoder.flush()
                self._dispatch(segmenter.push(tail[min(self._skip, len(tail)):]) + segmenter.finalize())
                self._finals.put_nowait(None)
        if self._final_sender is not None:
            await self._final_sender
        await asyncio.gather(*self._partial_tasks, return_exceptions=True)

    # -- windows -> engine -> captions ---------------------------------------------------------------------------

    def _dispatch(self, windows: list[Window]) -> None:
        for w in windows:
            if not w.final and (self._engine.busy or not self.sink.attached):
                continue  # partials are thinned first when the engine falls behind; finals never are
            # The window's last partial is a draft of its next transcript (the SALM backend checks it in one pass).
            draft = self._last_partial.get(w.segment, (0, None))[1]
            future = self._engine.submit(self.id, w.audio, w.final, draft=draft, context=self._context)
            if w.final:
                self._open_segment = w.segment + 1
                self._finals.put_nowait((w, future))
            else:
                task = asyncio.create_task(self._send_partial(w, future))
                self._partial_tasks.add(task)
                task.add_done_callback(self._partial_tasks.discard)

    async def _send_partial(self, w: Window, future: asyncio.Future) -> None:
        try:
            transcript = await future
        except BackendError:
            return  # a partial is advisory: the window's final will report the failure if it persists
        text = transcript.text if transcript is not None else None
        last_end, last_text = self._last_partial.get(w.segment, (-1, ""))
        if text is None or w.segment < self._open_segment or last_end >= w.end or w.end <= self._cleared_to:
            return  # superseded, its final is already on its way, or its audio was cleared
        self._last_partial[w.segment] = (w.end, text)
        await self.sink.partial(Partial(w.segment, seconds(w.start), seconds(w.end), text,
                                        stable=stable_prefix(last_text.split(), text.split())))

    async def _send_finals(self) -> None:
        while (item := await self._finals.get()) is not None:
            w, future = item
            self._last_partial.pop(w.segment, None)
            try:
                transcript = await future
            except BackendError as exc:
                await self.sink.to_client(Error(BACKEND_ERROR, f"segment {w.segment} could not be transcribed: "
                                                               f"{exc}", segment=w.segment))
                transcript = Transcript("", ())
            words = transcript.words if transcript.words is not None else estimate(transcript.text, w.audio)
            if self._voices is not None and words:
                words = await self._label(w, words)
            final = Final(w.segment, seconds(w.start), seconds(w.end), transcript.text,
                          words=place(words, seconds(w.start), self._names))
            self._recent.append(final)
            self._covered = w.end
            # What a replica resuming this session needs once the client has this final (finals excluded: they
            # are in the shared transcript): numbering and coverage go on from it.
            await self.sink.final(final, self.state(w.segment + 1, w.end, w.continued, finals=False))

    async def _label(self, w: Window, words: tuple[Word, ...]) -> tuple[Word, ...]:
        """The window's words with their voices; unlabelled (and logged) if the diarizer fails or is too slow."""
        assert self._diarizer is not None and self._voices is not None
        try:
            return await asyncio.wait_for(self._diarizer.label(self._voices, w.audio, words), DIARIZE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the final goes out whatever happens to its labels
            log.warning("session %s: segment %d goes without speaker labels: %r", self.id, w.segment, exc)
            return words
