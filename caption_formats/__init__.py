"""Transcript writers: SRT, WebVTT and plain text from `final` messages (dicts with start, end, text)."""
from __future__ import annotations

import html


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(finals: list[dict]):
    """Finals with text, one cue each; a cue never ends before it starts."""
    for f in finals:
        text = " ".join(str(f.get("text", "")).split())
        if text:
            yield f["start"], max(f["end"], f["start"] + 0.001), text


def to_srt(finals: list[dict]) -> str:
    blocks = [f"{i}\n{_clock(s, ',')} --> {_clock(e, ',')}\n{t}\n" for i, (s, e, t) in enumerate(_cues(finals), 1)]
    return "\n".join(blocks)


def to_vtt(finals: list[dict]) -> str:
    # WebVTT cue text is markup: "<" opens a tag, "&" a character reference, and "-->" would end the cue.
    blocks = [f"{_clock(s, '.')} --> {_clock(e, '.')}\n{html.escape(t, quote=False)}\n" for s, e, t in _cues(finals)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_txt(finals: list[dict]) -> str:
    return "".join(f"{t}\n" for _, _, t in _cues(finals))


WRITERS = {".srt": to_srt, ".vtt": to_vtt, ".txt": to_txt}
