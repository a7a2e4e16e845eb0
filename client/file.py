"""`python -m client.file PATH`: streams an audio file to the server and prints captions as they come."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from caption_formats import to_srt, to_vtt
from caption_formats.cues import runs

from .stream import DEFAULT_URL, MAX_CONTEXT, context_arg, load_audio, stream_audio


class Printer:
    """Finals as lines; on a terminal the current partial is rewritten in place on one line. A final whose words
    carry speakers (diarization on) prints one line per voice, "[start -> end] Name: text", timed by its words."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self.tty = out.isatty()

    def __call__(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "partial" and self.tty:
            self.out.write("\r\x1b[K" + msg["text"][-200:])
        elif kind == "final":
            self.out.write(("\r\x1b[K" if self.tty else "") + "".join(self.lines(msg)))
        elif kind == "error":
            self.out.write(f"\n! {msg.get('code')}: {msg.get('message')}\n")
        self.out.flush()

    @staticmethod
    def lines(final: dict) -> list[str]:
        diarized = any(w.get("name") or w.get("speaker") for w in final.get("words") or ())
        voiced = runs(final) if diarized else []
        if not voiced or voiced[0].tokens[0].start is None:  # no speakers, or no word with text to time a line
            return [f"[{final['start']:7.2f} -> {final['end']:7.2f}] {final['text']}\n"]
        return [f"[{run.tokens[0].start / 1000:7.2f} -> {run.tokens[-1].end / 1000:7.2f}] "
                + (f"{run.voice}: " if run.voice else "") + f"{run.text}\n" for run in voiced]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m client.file", description=__doc__)
    p.add_argument("path", help="any audio file soundfile can read (WAV, FLAC, OGG, ...)")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--speed", type=float, default=1.0, help="1.0 = real time, 0 = as fast as the server takes it")
    p.add_argument("--frame-ms", type=int, default=50, choices=range(20, 101), metavar="20..100")
    p.add_argument("--srt", type=Path, help="write the finals as SubRip subtitles")
    p.add_argument("--vtt", type=Path, help="write the finals as WebVTT subtitles")
    p.add_argument("--context", type=context_arg, metavar="TEXT",
                   help=f"names and terms likely to be said (at most {MAX_CONTEXT} characters), e.g. "
                        f"\"Anneliese Kowalczyk, Quetzalcoatl\": the server gives them to the model as a prompt")
    p.add_argument("--diarize", action="store_true",
                   help="ask the server to label speakers: finals print as \"Name: text\", exports carry voices")
    args = p.parse_args(argv)
    try:
        audio, rate = load_audio(args.path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        print(f"cannot read {args.path}: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(stream_audio(audio, rate, args.url, args.speed, args.frame_ms, on_message=Printer(),
                                          context=args.context,
                                          start_extra={"diarize": True} if args.diarize else None))
    except OSError as exc:
        print(f"cannot reach the server at {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.srt:
        args.srt.write_text(to_srt(result.finals))
    if args.vtt:
        args.vtt.write_text(to_vtt(result.finals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
