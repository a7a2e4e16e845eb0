"""A session's state as resuming needs it (`ResumeState`): plain data, small, so that it can be held here
(streams/resume.py) or shared between replicas through Redis (cluster/handover.py) alike."""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from .events import Final

RECENT_FINALS = 100  # finals a resumed client can be sent again (it resends at most its last 30 s of audio)


@dataclass
class ResumeState:
    session: str
    token: str
    room: str | None = None
    speaker: str | None = None
    context: str | None = None
    next_segment: int = 0
    covered: int = 0  # stream sample (16 kHz) up to which finals cover the audio
    cut_open: bool = False  # the drop cut a window mid-speech: the resumed stream begins inside a window
    finals: list[Final] = field(default_factory=list)  # the most recent finals sent, oldest first
    diarize: bool = False  # the stream labels its voices
    voices: dict | None = None  # the diarizer's profiles (speakers/tracker.py to_dict): labels go on the same
    names: dict[str, str] = field(default_factory=dict)  # voice label -> the name the speaker gave it


def tokens_match(expected: str, token: str | None) -> bool:
    return hmac.compare_digest(expected.encode(), (token or "").encode())  # constant time: no guessing by timing
