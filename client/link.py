"""The resume link: one caption stream over as many websocket connections as it takes (CaptionLink), and the
audio it holds for resending after a drop (Backlog). Shared by the microphone client, the tests and the
benchmarks; it knows nothing of where the audio comes from."""
from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Callable

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .resample import RATE
from .stream import start_message

MIN_SEND = RATE // 100     # 10 ms: the smallest frame the server accepts
MAX_SEND = RATE // 2       # audio resent after a reconnect goes in 0.5 s frames, faster than real time


# --- the resend buffer -------------------------------------------------------------------------------------

class Backlog:
    """The audio a new session would need: everything since the end of the last final, as 16 kHz int16 on
    the stream's own clock (sample 0 = the first one captured). Bounded: beyond `max_s` the oldest goes."""

    def __init__(self, max_s: float = 30.0):
        self.max_samples = int(max_s * RATE)
        self.start = 0  # stream sample of the first one held
        self.end = 0    # stream sample after the last one held = all audio captured so far
        self._chunks: deque[np.ndarray] = deque()

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._chunks.append(samples)
            self.end += len(samples)
            if len(self) > self.max_samples:
                self.release(self.end - self.max_samples)

    def release(self, upto: int) -> None:
        """Forgets the audio before stream sample `upto`."""
        upto = min(upto, self.end)
        while self.start < upto:
            head = self._chunks[0]
            n = min(len(head), upto - self.start)
            if n == len(head):
                self._chunks.popleft()
            else:
                self._chunks[0] = head[n:]
            self.start += n

    def read(self, pos: int, count: int) -> np.ndarray:
        """Up to `count` samples from stream sample `pos` (start <= pos <= end)."""
        out, skip = [], pos - self.start
        for chunk in self._chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            out.append(chunk[skip:skip + count])
            count -= len(out[-1])
            skip = 0
            if count == 0:
                break
        return np.concatenate(out) if out else np.zeros(0, "<i2")


# --- the connection: sessions, reconnects, one continuous timeline -----------------------------------------

class ServerRefused(Exception):
    """The server answered but will not take this stream (bad start, bad token, ...): retrying cannot help."""


class Dropped(Exception):
    """The connection ended before the stream did."""


# Refusals that say "not now" (docs/protocol.md, close 1013/1001): a reconnect waits and tries again, holding the
# audio, instead of giving up on the stream.
TRY_LATER = ("overloaded", "backend_stalled", "too_many_connections", "shutting_down")


class CaptionLink:
    """One caption stream over as many websocket connections as it takes.

    After a drop the link resumes its session: the server flushed the open window into a final at the drop and
    kept the session, so the link sends `start` with the session's id, its resume token and `offset` (where the
    audio it resends begins: the end of its last final), then resends the backlog from there. The server first
    sends again the finals that end after `offset` (the link keeps those it lacks, e.g. the one flushed at the
    drop) and drops resent audio they cover, so no word is doubled and none lost.

    If the server no longer has the session (it restarted, or the session expired), the link starts a new one.
    A new session starts its clock and segment numbers at 0, so the link remembers the stream sample at which
    its audio begins (`base`) and the number of finals before it, and shifts every caption by them: the display
    and the saved transcript keep one timeline. A resumed session keeps its clock and numbering, so its shift too.
    """

    def __init__(self, url: str, backlog: Backlog, on_message: Callable[[dict], None],
                 on_status: Callable[[str], None], room: str | None = None, token: str | None = None,
                 backoff: tuple[float, float] = (0.5, 5.0), open_timeout: float = 10.0, context: str | None = None):
        self.url, self.backlog = url, backlog
        self.on_message, self.on_status = on_message, on_status
        self.room, self.token, self.context = room, token, context
        self.backoff, self.open_timeout = backoff, open_timeout
        self.finals: list[dict] = []  # on the stream's clock, numbered 0, 1, 2, ... across sessions, each once
        self.ready: dict = {}  # the current session's `ready` (its id and resume token)
        self.sessions = 0    # sessions the server started for this stream (a resumed one is not a new one)
        self.resumes = 0     # reconnections that resumed the session
        self.resumed = False  # whether the current connection resumed the session
        self.final_upto = 0  # stream sample where the last final ended: the audio before it is transcribed
        self.base = 0        # stream sample where this session's audio (its time 0) begins
        self.sent = 0        # stream sample up to which this connection has sent audio
        self._segment_base = 0
        self._stop_sent = False
        self._finishing = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def finish(self) -> None:
        """No more audio will come: send what is left, then `stop`."""
        self._finishing = True
        self._wake.set()

    async def connect(self) -> ClientConnection:
        """Opens a connection that resumes the session if there is one (a new session if there is none, or the
        server no longer has it) and is to be sent the audio from the end of the last final. Raises OSError/
        TimeoutError/InvalidHandshake when the server cannot be reached, ServerRefused when it will not take
        the stream."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = await connect(self.url, additional_headers=headers, open_timeout=self.open_timeout,
                               ping_interval=5, ping_timeout=10, close_timeout=2, max_size=None,
                               compression=None)  # PCM does not deflate; spare the CPU
        except InvalidStatus as exc:
            if 400 <= exc.response.status_code < 500:  # 401/403/404: the same answer next time
                raise ServerRefused(f"HTTP {exc.response.status_code} from {self.url}") from exc
            raise
        self.backlog.release(self.final_upto)  # nothing is being sent now: resend from the last final's end
        if self.backlog.start > self.final_upto:  # the bound dropped audio no final covers
            self.on_status(f"{(self.backlog.start - self.final_upto) / RATE:.1f} s of audio could not be held "
                           f"during the outage and has no captions")
            self.final_upto = self.backlog.start
        try:
            ready = await self._start(ws)
        except BaseException:
            await ws.close()
            raise
        if not ready.get("resumed"):  # a new session: its clock and segment numbers start here
            self.base = self.backlog.start
            self._segment_base = self._next_segment()
            self.sessions += 1
        self.resumed = bool(ready.get("resumed"))
        self.resumes += self.resumed
        self.sent = self.backlog.start
        self._stop_sent = False
        self.ready = ready
        return ws

    async def _start(self, ws: ClientConnection) -> dict:
        """Sends `start` (resuming the session if there is one) and returns the server's `ready`."""
        # every start carries the room and the context: a new session knows nothing of the old one
        start = start_message(RATE, "pcm_s16le", room=self.room, context=self.context)
        session, secret = self.ready.get("session"), self.ready.get("resume_token")
        if session and secret:
            reply = await self._ask(ws, {**start, "resume": session, "resume_token": secret,
                                         "offset": self.backlog.start - self.base})  # on the session's clock
            if reply.get("type") == "ready":
                return reply
            if reply.get("code") in TRY_LATER:
                raise Dropped(f"the server cannot take the stream now ({reply['code']}: {reply.get('message')})")
            if reply.get("code") not in ("resume_unknown", "resume_refused"):
                raise ServerRefused(f"the server refused the stream: {reply.get('message', reply)}")
            # the connection stays open for a plain start
            self.on_status(f"session {session} not resumed ({reply.get('code')}: {reply.get('message')}); "
                           f"starting a new session")
        reply = await self._ask(ws, start)
        if reply.get("code") in TRY_LATER:
            raise Dropped(f"the server cannot take the stream now ({reply['code']}: {reply.get('message')})")
        if reply.get("type") != "ready":
            raise ServerRefused(f"the server refused the stream: {reply.get('message', reply)}")
        return reply

    async def _ask(self, ws: ClientConnection, start: dict) -> dict:
        await ws.send(json.dumps(start))
        return json.loads(await asyncio.wait_for(ws.recv(), self.open_timeout))

    def _next_segment(self) -> int:
        """The stream's number for the next final."""
        return self.finals[-1]["segment"] + 1 if self.finals else 0

    async def run(self, ws: ClientConnection | None = None) -> None:
        """Streams until the server has sent `end` after `finish()`, reconnecting with backoff after each drop.
        Only ServerRefused ends it early."""
        delay = self.backoff[0]
        while True:
            try:
                if ws is None:
                    ws = await self.connect()
                    self.on_status(f"reconnected ({'session resumed' if self.resumed else 'new session'}): sending "
                                   f"the {len(self.backlog) / RATE:.1f} s of audio since the last caption")
                    delay = self.backoff[0]
                await self._stream(ws)
                return
            except (OSError, asyncio.TimeoutError, ConnectionClosed, InvalidHandshake, Dropped) as exc:
                reason = str(exc) or type(exc).__name__
            if ws is not None:  # it was up: say what happens now
                self.on_status(f"connection lost ({reason}); reconnecting, holding the audio meanwhile (up to "
                               f"{self.backlog.max_samples / RATE:.0f} s)")
            else:
                self.on_status(f"still unreachable ({reason}); next try in {delay:.1f} s")
            ws = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    async def _stream(self, ws: ClientConnection) -> None:
        sender = asyncio.create_task(self._send(ws))
        receiver = asyncio.create_task(self._receive(ws))
        try:
            # Both end normally only once `end` came after our `stop`; either raising ends the session.
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_EXCEPTION)
            for task in (receiver, sender):
                if task.done() and task.exception():
                    raise task.exception()
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            await ws.close()

    async def _send(self, ws: ClientConnection) -> None:
        while True:
            if self.sent < self.backlog.start:  # audio this session never got was dropped: its clock would skip
                raise Dropped("audio dropped before it could be sent")
            avail = self.backlog.end - self.sent
            if avail >= MIN_SEND:
                # whole backlog in 0.5 s pieces, never leaving a piece under 10 ms behind
                n = avail if avail <= MAX_SEND else MAX_SEND if avail - MAX_SEND >= MIN_SEND else avail - MIN_SEND
                await ws.send(self.backlog.read(self.sent, n).tobytes())
                self.sent += n
            elif self._finishing:  # under 10 ms left over: too short to send, and inaudible
                await ws.send(json.dumps({"type": "stop"}))
                self._stop_sent = True
                return
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _receive(self, ws: ClientConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            kind = msg.get("type")
            if kind == "end":
                if self._stop_sent:
                    return
                raise Dropped("the server ended the stream")
            if kind in ("partial", "final"):
                msg = self._to_stream_clock(msg)
            if kind == "final":
                if msg["segment"] < self._next_segment():
                    continue  # resent after a resume, and held already
                self.finals.append(msg)
                # the audio up to its end is transcribed: no need to hold it any more (audio not sent yet on
                # this connection stays: a resumed session expects its resend whole, and drops it itself)
                self.final_upto = max(self.final_upto, round(msg["end"] * RATE))
                self.backlog.release(min(self.final_upto, self.sent))
            self.on_message(msg)
        raise Dropped(f"closed by the server, code {ws.close_code}")

    def _to_stream_clock(self, msg: dict) -> dict:
        offset = self.base / RATE
        return {**msg, "segment": msg["segment"] + self._segment_base,
                "start": msg["start"] + offset, "end": msg["end"] + offset}
