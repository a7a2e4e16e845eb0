"""`python -m client.mic`: live captions from a microphone.

    Capture (PortAudio thread) -> AudioFeed (event loop: mono, 16 kHz, 40 ms frames) -> Backlog
        -> CaptionLink (websocket; after a drop, resumes the session and resends what no final covers)
        -> Display (terminal)

This module is the command and its terminal display; capture is client.capture's, the link client.link's.
Ctrl-C sends `stop`, waits a bounded time for the last finals, saves the transcript (--save) and exits 0.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
from pathlib import Path

from websockets.exceptions import InvalidHandshake, InvalidURI

from caption_formats import WRITERS
from .capture import AudioFeed, Capture, NoInputDevice, list_input_devices, parse_device
from .file import Printer
from .link import Backlog, CaptionLink, Dropped, ServerRefused
from .resample import RATE
from .stream import DEFAULT_URL, MAX_CONTEXT, context_arg


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
