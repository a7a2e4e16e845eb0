"""Transcript writers: SRT, WebVTT and plain text from `final` records (dicts with start, end, text, and when the
server has them, `words` with their times and voices, and the stream's `speaker`).

SRT and WebVTT cues are cut at word times, at most 2 lines of 42 characters, a new cue at each change of voice
(caption_formats.cues says how). A voice is written as WebVTT's voice span (`<v Priya>…</v>`) and as a "Priya: "
prefix in SRT and text. Text has one line per final, and a new line where the voice changes within it.
"""
from __future__ import annotations

import html

from .cues import Cue, cues, runs


def _clock(ms: int, sep: str) -> str:
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _srt_text(cue: Cue) -> str:
    return (f"{cue.voice}: " if cue.voice else "") + "\n".join(cue.lines)


def _vtt_text(cue: Cue) -> str:
    # WebVTT cue text is markup: "<" opens a tag, "&" a character reference, and "-->" would end the cue; a voice
    # span's annotation ends at the first ">" and takes character references like the text.
    text = html.escape("\n".join(cue.lines), quote=False)
    return f"<v {html.escape(cue.voice, quote=False)}>{text}</v>" if cue.voice else text


def to_srt(finals: list[dict]) -> str:
    return "\n".join(f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{_srt_text(c)}\n"
                     for i, c in enumerate(cues(finals), 1))


def to_vtt(finals: list[dict]) -> str:
    blocks = [f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{_vtt_text(c)}\n" for c in cues(finals)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_txt(finals: list[dict]) -> str:
    return "".join(f"{run.voice}: {run.text}\n" if run.voice else f"{run.text}\n"
                   for f in finals for run in runs(f))


WRITERS = {".srt": to_srt, ".vtt": to_vtt, ".txt": to_txt}
