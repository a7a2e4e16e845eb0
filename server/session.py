"""One live stream: the small async processor behind one `/v1/listen` connection.

It decodes and resamples audio, feeds the segmenter, submits windows to the shared engine and sends captions
back in protocol order: finals strictly by segment number, a partial only while its segment is still open and
only if it is newer than the last one sent.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from . import protocol as P
from .audio import AudioDecoder
from .config import SegmenterConfig
from .engine import BackendError, Engine
from .rooms import Room, Rooms
from .storage import TranscriptStore
from .segmenter import Segmenter, Window
from .vad import make_vad

log = logging.getLogger(__name__)

Send = Callable[[str], Awaitable[None]]


def seconds(sample: int) -> float:
    return sample / P.SAMPLE_RATE


def stable_prefix(previous: list[str], current: list[str]) -> int:
    """Leading words on which two consecutive partials agree: such words rarely change later
    (local agreement), so clients can show them as settled."""
    n = 0
    for a, b in zip(previous, current):
        if a != b:
            break
        n += 1
    return n


class Session:
    def __init__(self, session_id: str, engine: Engine, seg_cfg: SegmenterConfig, send: Send,
                 rooms: Rooms | None = None, url_room: str | None = None, store: TranscriptStore | None = None):
        self.id = session_id
        self._engine = engine
        self._seg_cfg = seg_cfg
        self._send = send
        self._rooms = rooms
        self._url_room = url_room  # `?room=` on the URL; a `room` in `start` wins
        self._room: Room | None = None
        self._store = store
        self._speaker = session_id
        self._decoder: AudioDecoder | None = None
        self._segmenter: Segmenter | None = None
        self._finals: asyncio.Queue = asyncio.Queue()  # (window, future) in segment order, None = no more
        self._final_sender: asyncio.Task | None = None
        self._partial_tasks: set[asyncio.Task] = set()
        self._open_segment = 0  # segments below this have had their final submitted
        self._last_partial: dict[int, tuple[int, str]] = {}  # segment -> (end sample, text) last sent
        self.ended = False

    @property
    def started(self) -> bool:
        return self._segmenter is not None

    @property
    def bytes_per_second(self) -> int | None:
        """Of the client's audio, once started: what rate limits are measured in."""
        return self._decoder.start.sample_rate * self._decoder.start.bytes_per_sample if self._decoder else None

    async def on_text(self, text: str) -> None:
        """Handles one text frame. Protocol errors are reported to the client and the session goes on."""
        if self.ended:
            return
        try:
            msg = P.parse_client_text(text)
            if isinstance(msg, P.Ping):
                await self._send(P.pong())
            elif isinstance(msg, P.Start):
                await self._start(msg)
            elif not self.started:
                raise P.ProtocolError(P.NOT_STARTED, 'send {"type":"start",...} first')
            elif isinstance(msg, P.Finalize):
                self._dispatch(self._segmenter.finalize())
            elif isinstance(msg, P.Stop):
                await self.stop()
        except P.ProtocolError as exc:
            await self._send(P.error(exc.code, exc.message))

    async def on_audio(self, data: bytes) -> None:
        if self.ended:
            return
        if not self.started:
            await self._send(P.error(P.NOT_STARTED, 'audio before {"type":"start",...}; frame ignored'))
            return
        try:
            samples = self._decoder.decode(data)
        except P.ProtocolError as exc:
            await self._send(P.error(exc.code, exc.message))
            return
        self._dispatch(self._segmenter.push(samples))

    async def _start(self, start: P.Start) -> None:
        if self.started:
            raise P.ProtocolError(P.ALREADY_STARTED, "this stream has started already; open a new connection "
                                                     "for a new stream")
        room = start.room or (P.check_room(self._url_room) if self._url_room is not None else None)
        self._decoder = AudioDecoder(start)
        self._segmenter = Segmenter(self._seg_cfg, make_vad(self._seg_cfg))
        self._final_sender = asyncio.create_task(self._send_finals(), name=f"finals-{self.id}")
        extra = {}
        if room is not None and self._rooms is not None:
            self._room = self._rooms.get(room)
            self._speaker = start.speaker or self.id
            self._room.speakers[self.id] = self._speaker
            extra = {"room": room, "speaker": self._speaker}
        backend = self._engine.backend
        await self._send(P.ready(self.id, backend.name, backend.model, backend.reason, **extra))

    async def stop(self, reason: str | None = None) -> None:
        """Flushes: every open window becomes a final, all finals are sent, then `end` (with the reason when the
        server, not the client, ended the stream)."""
        if self.ended:
            return
        self.ended = True
        if self.started:
            self._dispatch(self._segmenter.push(self._decoder.flush()) + self._segmenter.finalize())
            self._finals.put_nowait(None)
            await self._final_sender
        await self._send(P.end(**({"reason": reason} if reason else {})))

    async def close(self) -> None:
        """The connection is gone: drop queued work, keep nothing running."""
        self.ended = True
        if self._room is not None:
            self._room.speakers.pop(self.id, None)
        tasks = [*self._partial_tasks, *([self._final_sender] if self._final_sender else [])]
        for task in tasks:
            task.cancel()
        while not self._finals.empty():
            item = self._finals.get_nowait()
            if item:
                item[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- windows -> engine -> captions ---------------------------------------------------------------------------

    def _dispatch(self, windows: list[Window]) -> None:
        for w in windows:
            if not w.final and self._engine.busy:
                continue  # partials are thinned first when the engine falls behind; finals never are
            # The window's last partial is a draft of its next transcript (the SALM backend checks it in one pass).
            draft = self._last_partial.get(w.segment, (0, None))[1]
            future = self._engine.submit(self.id, w.audio, w.final, draft=draft,
                                         context=self._decoder.start.context)
            if w.final:
                self._open_segment = w.segment + 1
                self._finals.put_nowait((w, future))
            else:
                task = asyncio.create_task(self._send_partial(w, future))
                self._partial_tasks.add(task)
                task.add_done_callback(self._partial_tasks.discard)

    async def _send_partial(self, w: Window, future: asyncio.Future) -> None:
        try:
            text = await future
        except BackendError:
            return  # a partial is advisory: the window's final will report the failure if it persists
        last_end, last_text = self._last_partial.get(w.segment, (-1, ""))
        if text is None or w.segment < self._open_segment or last_end >= w.end:
            return  # superseded, or its final is already on its way
        self._last_partial[w.segment] = (w.end, text)
        await self._emit(P.caption("partial", w.segment, seconds(w.start), seconds(w.end), text,
                                   stable=stable_prefix(last_text.split(), text.split())))

    async def _send_finals(self) -> None:
        while (item := await self._finals.get()) is not None:
            w, future = item
            self._last_partial.pop(w.segment, None)
            try:
                text = await future
            except BackendError as exc:
                await self._send(P.error(P.BACKEND_ERROR, f"segment {w.segment} could not be transcribed: {exc}",
                                         segment=w.segment))
                text = ""
            final = P.caption("final", w.segment, seconds(w.start), seconds(w.end), text)
            if self._store is not None:
                self._store.append(self.id, self._room and self._room.name,
                                   {**final, "speaker": self._speaker} if self._room else final)
            await self._emit(final)

    async def _emit(self, msg: dict) -> None:
        """A caption to this client, and to the room's viewers (labelled with the speaker) if it joined one."""
        await self._send(P.dump(msg))
        if self._room is not None:
            self._room.publish({**msg, "speaker": self._speaker, "session": self.id})
