"""`python -m client.mic`: live captions from a microphone.

    Capture (PortAudio thread) -> AudioFeed (event loop: mono, 16 kHz, 40 ms frames) -> Backlog
        -> CaptionLink (websocket; after a drop, resumes the session and resends what no final covers)
        -> Display (terminal)

Ctrl-C sends `stop`, waits a bounded time for the last finals, saves the transcript (--save) and exits 0.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from caption_formats import WRITERS
from .file import Printer
from .resample import RATE, Framer, MonoResampler, to_pcm16
from .stream import DEFAULT_URL, MAX_CONTEXT, context_arg, start_message

FRAME_MS = 40              # live frames; the protocol takes 10 ms to 1 s
MIN_SEND = RATE // 100     # 10 ms: the smallest frame the server accepts
MAX_SEND = RATE // 2       # audio resent after a reconnect goes in 0.5 s frames, faster than real time
RATES = (48000, 44100, 32000, 16000, 96000, 22050, 8000)  # tried after the device's own default rate
SILENCE_HINT_S = 5.0       # digital silence this long at the start: the microphone is probably muted


# --- capture: PortAudio ----------------------------------------------------------------------------------

class NoInputDevice(Exception):
    pass


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # the Python package is there but the PortAudio library is not
        raise NoInputDevice(f"PortAudio is not available ({exc}); on Debian/Ubuntu: apt install libportaudio2")
    return sounddevice


def parse_device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def list_input_devices() -> str:
    sd = _sounddevice()
    try:
        default = sd.query_devices(kind="input")["index"]
    except sd.PortAudioError:
        default = None
    lines = [f"{'*' if d['index'] == default else ' '} {d['index']:3d}  {d['name']}  ({d['max_input_channels']} ch, "
             f"{d['default_samplerate']:.0f} Hz, {sd.query_hostapis(d['hostapi'])['name']})"
             for d in sd.query_devices() if d["max_input_channels"] > 0]
    return "\n".join(lines) if lines else "no audio input devices found"


class Capture:
    """One PortAudio input stream at a rate and channel count the device accepts. Each block is copied in the
    audio thread and handed to the event loop, which does everything else."""

    def __init__(self, device: int | str | None, on_block: Callable[[np.ndarray], None],
                 loop: asyncio.AbstractEventLoop):
        sd = _sounddevice()
        try:
            info = sd.query_devices(device, kind="input")
        except (ValueError, sd.PortAudioError) as exc:
            if not any(d["max_input_channels"] > 0 for d in sd.query_devices()):
                raise NoInputDevice("no audio input device found: is a microphone connected and enabled, and "
                                    "the sound server (PulseAudio/PipeWire) running?") from exc
            if device is None:
                raise NoInputDevice("no default input device; choose one with --device (`--list-devices` shows "
                                    "them)") from exc
            raise NoInputDevice(f"--device {device}: {exc} (`--list-devices` shows the choices)") from exc
        self.name = info["name"]
        self.rate, self.channels = self._pick_format(sd, info)
        self._on_block, self._loop = on_block, loop
        self.overflows = 0
        self.first_block = asyncio.Event()  # some devices (and PulseAudio monitors) take a second to deliver
        try:  # 20 ms blocks
            self._stream = sd.InputStream(device=info["index"], samplerate=self.rate, channels=self.channels,
                                          dtype="float32", blocksize=self.rate // 50, callback=self._callback)
        except sd.PortAudioError as exc:  # busy, unplugged, no permission
            raise NoInputDevice(f"cannot open {self.name!r}: {exc}") from exc

    @staticmethod
    def _pick_format(sd, info: dict) -> tuple[int, int]:
        """The device's own rate first (laptop mics run at 44.1 or 48 kHz and often refuse 16 kHz); stereo
        mics may refuse one channel, so ask for up to two and downmix."""
        rates = dict.fromkeys([int(info["default_samplerate"]), *RATES])
        for channels in dict.fromkeys([min(2, info["max_input_channels"]), 1]):
            for rate in rates:
                try:
                    sd.check_input_settings(info["index"], channels=channels, samplerate=rate, dtype="float32")
                    return rate, channels
                except Exception:  # noqa: BLE001 - PortAudio says no in several ways
                    continue
        raise NoInputDevice(f"{info['name']} accepts none of the rates {sorted(rates)} Hz")

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.overflows += 1
        try:
            self._loop.call_soon_threadsafe(self._deliver, indata.copy())  # PortAudio reuses indata
        except RuntimeError:
            pass  # the loop has closed: we are exiting

    def _deliver(self, block: np.ndarray) -> None:
        self.first_block.set()
        self._on_block(block)

    def start(self) -> None:
        self._stream.start()

    def close(self) -> None:
        """Returns once the audio thread has delivered its last block."""
        self._stream.stop()
        self._stream.close()


# --- audio on the event loop: resampling, framing, the resend buffer ----------------------------------------

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


class AudioFeed:
    """Captured blocks -> mono 16 kHz -> exact 40 ms frames of int16 -> backlog; then wakes the sender."""

    def __init__(self, in_rate: int, backlog: Backlog, wake: Callable[[], None],
                 on_silence: Callable[[], None] | None = None):
        self.resampler = MonoResampler(in_rate)
        self.framer = Framer(RATE * FRAME_MS // 1000)
        self.backlog, self.wake, self.on_silence = backlog, wake, on_silence
        self._peak, self._seconds = 0.0, 0.0
        self.in_rate = in_rate

    def push(self, block: np.ndarray) -> None:
        self._check_silence(block)
        for frame in self.framer.push(self.resampler(block)):
            self.backlog.append(to_pcm16(frame))
        self.wake()

    def flush(self) -> None:
        """End of capture: the resampler's tail and the last short frame."""
        for frame in [*self.framer.push(self.resampler.flush()), self.framer.flush()]:
            self.backlog.append(to_pcm16(frame))
        self.wake()

    def _check_silence(self, block: np.ndarray) -> None:
        if self.on_silence is None or not len(block):
            return
        self._peak = max(self._peak, float(np.abs(block).max()))
        self._seconds += len(block) / self.in_rate
        if self._seconds >= SILENCE_HINT_S:
            if self._peak < 1e-4:
                self.on_silence()
            self.on_silence = None  # one hint at most


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


# --- terminal ----------------------------------------------------------------------------------------------

class Display:
    """Captions on stdout: finals as lines, on a terminal the partial rewritten in place (client.file's
    Printer). Everything else goes to stderr, so a redirected stdout holds only the transcript."""

    def __init__(self, out=sys.stdout, err=sys.stderr):
        self.out, self.err = out, err
        self.printer = Printer(out)

    def caption(self, msg: dict) -> None:
        if msg.get("type") == "error":
            self.status(f"server: {msg.get('code')}: {msg.get('message')}")
        elif msg.get("type") == "final" and not msg["text"].strip():  # a window of noise: no empty line
            if self.printer.tty:
                self.out.write("\r\x1b[K")
                self.out.flush()
        elif msg.get("type") == "partial" and self.printer.tty:
            # one terminal row, or `\r` can no longer take the line back
            width = shutil.get_terminal_size().columns - 2
            text = msg["text"]
            self.printer({**msg, "text": text if len(text) <= width else "…" + text[-width + 1:]})
        else:
            self.printer(msg)

    def status(self, text: str) -> None:
        if self.printer.tty:
            self.out.write("\r\x1b[K")  # clear a partial first; the next partial redraws it
            self.out.flush()
        self.err.write(f"* {text}\n")
        self.err.flush()


# --- the command -------------------------------------------------------------------------------------------

async def run(args: argparse.Namespace, display: Display) -> int:
    """The whole command: returns the exit status."""
    loop = asyncio.get_running_loop()
    backlog = Backlog(args.buffer_s)
    link = CaptionLink(args.url, backlog, display.caption, display.status, args.room, args.token,
                       context=args.context)
    feed: AudioFeed | None = None
    try:  # the device first: a missing microphone is found locally, and quickly
        capture = Capture(parse_device(args.device), lambda block: feed.push(block), loop)
    except NoInputDevice as exc:
        display.status(f"no microphone: {exc}")
        return 1
    feed = AudioFeed(capture.rate, backlog, link.wake,
                     lambda: display.status(f"no sound from {capture.name!r} yet: is it muted?"))
    try:
        ws = await link.connect()
    except (ServerRefused, Dropped) as exc:
        display.status(str(exc))
        return 1
    except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI) as exc:
        display.status(f"cannot reach the server at {args.url}: {exc or type(exc).__name__} "
                       f"(is it running? `python -m server` or `make run`)")
        return 1
    finally:
        if link.sessions == 0:
            capture.close()

    runner = asyncio.create_task(link.run(ws))
    try:
        await capture_until_stopped(capture, feed, link, runner, display, args.url)
        code = await finish(link, runner, display, args.stop_timeout)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if args.save:
        try:
            args.save.write_text(WRITERS[args.save.suffix.lower()](link.finals))
            display.status(f"saved {sum(1 for f in link.finals if f['text'].strip())} captions to {args.save}")
        except OSError as exc:
            display.status(f"cannot save {args.save}: {exc}")
            code = code or 1
    return code


async def capture_until_stopped(capture: Capture, feed: AudioFeed, link: CaptionLink, runner: asyncio.Task,
                                display: Display, url: str) -> None:
    """Captures until Ctrl-C (or SIGTERM), or until the link gives up; then the tail of the audio goes out."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    capture.start()
    stopper = asyncio.create_task(stop.wait())
    heard = asyncio.create_task(capture.first_block.wait())
    try:
        # "listening" only once audio flows, so whoever reads it can start talking
        await asyncio.wait({runner, stopper, heard}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        r = link.ready
        if heard.done():
            display.status(f"listening on {capture.name!r} ({capture.rate} Hz, {capture.channels} ch) -> {url}, "
                           f"backend {r.get('backend')} ({r.get('reason') or r.get('model')}); Ctrl-C to stop")
        elif not stopper.done() and not runner.done():
            display.status(f"{capture.name!r} has delivered no audio in 10 s; still waiting (Ctrl-C to stop)")
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        heard.cancel()
        capture.close()
    await asyncio.sleep(0)  # the blocks the audio thread queued before closing go first
    if capture.overflows:
        display.status(f"the audio device overflowed {capture.overflows} times: some audio was skipped")
    feed.flush()


async def finish(link: CaptionLink, runner: asyncio.Task, display: Display, timeout: float) -> int:
    """Sends `stop` and waits, at most `timeout` seconds or until a second Ctrl-C, for the last finals."""
    code = 0
    if not runner.done():
        link.finish()
        display.status(f"stopping: waiting up to {timeout:.0f} s for the last captions (Ctrl-C again to quit now)")
        forced = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, forced.set)
        quitter = asyncio.create_task(forced.wait())
        await asyncio.wait({runner, quitter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        quitter.cancel()
        if not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            code = 130 if forced.is_set() else 0
            display.status(f"{'quit' if forced.is_set() else 'gave up waiting'}: the last "
                           f"{len(link.backlog) / RATE:.1f} s of audio have no captions")
    if not runner.cancelled() and runner.exception():  # ServerRefused on a reconnect
        display.status(str(runner.exception()))
        code = 1
    return code


def save_path(value: str) -> Path:
    path = Path(value)
    if path.suffix.lower() not in WRITERS:
        raise argparse.ArgumentTypeError(f"{value}: the name must end in {', '.join(WRITERS)}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: no such directory {path.parent}")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m client.mic", description="Live captions from a microphone.")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the server's websocket (default {DEFAULT_URL})")
    p.add_argument("--device", metavar="NAME_OR_INDEX",
                   help="input device: its index or part of its name (default: the system's default input)")
    p.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    p.add_argument("--room", metavar="NAME", help="room to caption into (viewers watch it)")
    p.add_argument("--token", metavar="T", help="access token, sent as `Authorization: Bearer T`")
    p.add_argument("--context", type=context_arg, metavar="TEXT",
                   help=f"names and terms likely to be said (at most {MAX_CONTEXT} characters), e.g. "
                        f"\"Anneliese Kowalczyk, Quetzalcoatl\": the server gives them to the model as a prompt; "
                        f"sent again on every reconnect")
    p.add_argument("--save", type=save_path, metavar="FILE.srt|.vtt|.txt", help="write the finals here on exit")
    p.add_argument("--buffer-s", type=float, default=30.0, metavar="SECONDS",
                   help="most audio held for resending after a connection drop: since the last caption and "
                        "during the outage (default 30)")
    p.add_argument("--stop-timeout", type=float, default=15.0, metavar="SECONDS",
                   help="after Ctrl-C, how long to wait for the last captions (default 15)")
    args = p.parse_args(argv)
    if args.list_devices:
        try:
            print(list_input_devices())
        except NoInputDevice as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    try:
        return asyncio.run(run(args, Display()))
    except KeyboardInterrupt:  # Ctrl-C before the stream began
        return 130


if __name__ == "__main__":
    sys.exit(main())
