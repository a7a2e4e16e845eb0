"""Captions as JSON objects: the one shape a caption has outside the process. Transcript lines (the local JSONL
and Redis Streams), room messages between replicas, and protocol v1's `partial` / `final` frames all use it, so
a caption reads the same wherever it was stored or sent:

    {"type": "final", "segment": 3, "start": 12.5, "end": 15.2, "text": "...",
     "speaker": "Ana", "session": "0123456789ab", "time": 1764000000.1,
     "words": [{"word": "Hello", "start": 12.61, "end": 12.9, "probability": 0.93,
                "speaker": "Speaker 1", "name": "Priya"}, ...]}

`speaker` and `session` are there when known (a room's caption, a transcript line); `resent` only on a final sent
again to a resumed client; `stable` only on partials; `time` (when it was kept) only in transcripts. `words` on
every final (empty when it has no text); a word's `estimated` only when its times were derived, not aligned, and
its `speaker` (the voice's stable label) and `name` (shown for that label then) only with diarization on. Records
kept before words existed have no `words` and read as finals without words.
"""
from __future__ import annotations

import dataclasses
import time

from caption_formats.cues import runs

from ..backends.transcript import Word
from ..core.events import Caption, Final, Partial
from ..core.words import word_record

_OPTIONAL = ("speaker", "session")


def word_from_record(rec: dict) -> Word:
    names = {f.name for f in dataclasses.fields(Word)}
    return Word(**{k: v for k, v in rec.items() if k in names})


def caption_record(caption: Caption) -> dict:
    kind = "final" if isinstance(caption, Final) else "partial"
    rec: dict = {"type": kind, "segment": caption.segment, "start": caption.start, "end": caption.end,
                 "text": caption.text}
    if isinstance(caption, Partial):
        rec["stable"] = caption.stable
    elif caption.resent:
        rec["resent"] = True
    rec.update({name: getattr(caption, name) for name in _OPTIONAL if getattr(caption, name) is not None})
    if isinstance(caption, Final):
        rec["words"] = [word_record(w) for w in caption.words]
    return rec


def transcript_line(final: Final) -> dict:
    """A final as transcripts keep it: with its session, its speaker in a room, and the time it was kept."""
    return {**caption_record(final), "time": time.time()}


def caption_from_record(rec: dict) -> Caption:
    """The caption a record describes; fields it does not know (time, backlog) are ignored."""
    cls = Partial if rec.get("type") == "partial" else Final
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in rec.items() if k in names}
    if cls is Final:
        fields["words"] = tuple(word_from_record(w) for w in rec.get("words") or ())
    return cls(**fields)


def voice_runs(rec: dict) -> list[tuple[str | None, str]]:
    """A final record's text as (voice, text) runs: a new run at each change of voice among its words (a word's
    `name`, else the final's `speaker`), as the exports cut their cues (caption_formats.cues.runs). A final with
    no text: one empty run of its speaker."""
    return [(run.voice, " ".join(t.text for t in run.tokens)) for run in runs(rec)] or \
        [(rec.get("speaker") or None, "")]
