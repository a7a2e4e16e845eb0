"""Captions as JSON objects: the one shape a caption has outside the process. Transcript lines (the local JSONL
and Redis Streams), room messages between replicas, and protocol v1's `partial` / `final` frames all use it, so
a caption reads the same wherever it was stored or sent:

    {"type": "final", "segment": 3, "start": 12.5, "end": 15.2, "text": "...",
     "speaker": "Ana", "session": "0123456789ab", "time": 1764000000.1}

`speaker` and `session` are there when known (a room's caption, a transcript line); `resent` only on a final sent
again to a resumed client; `stable` only on partials; `time` (when it was kept) only in transcripts.
"""
from __future__ import annotations

import dataclasses
import time

from ..core.events import Caption, Final, Partial

_OPTIONAL = ("speaker", "session")


def caption_record(caption: Caption) -> dict:
    kind = "final" if isinstance(caption, Final) else "partial"
    rec: dict = {"type": kind, "segment": caption.segment, "start": caption.start, "end": caption.end,
                 "text": caption.text}
    if isinstance(caption, Partial):
        rec["stable"] = caption.stable
    elif caption.resent:
        rec["resent"] = True
    rec.update({name: getattr(caption, name) for name in _OPTIONAL if getattr(caption, name) is not None})
    return rec


def transcript_line(final: Final) -> dict:
    """A final as transcripts keep it: with its session, its speaker in a room, and the time it was kept."""
    return {**caption_record(final), "time": time.time()}


def caption_from_record(rec: dict) -> Caption:
    """The caption a record describes; fields it does not know (time, backlog) are ignored."""
    cls = Partial if rec.get("type") == "partial" else Final
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in rec.items() if k in names})
