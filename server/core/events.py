"""What the session core says to whoever carries a stream: typed events, in the order a client must see them.

A session emits `Ready` once, then `Partial`s and `Final`s per window (finals strictly by segment, a partial only
while its segment is open), `Error`s, and `End` when the stream is over. No event knows a wire format: each
protocol adapter (server/streams/) encodes them into its own frames, and delivery (server/delivery/) keeps and
fans out the captions. Times are seconds of the stream's own audio (16 kHz samples / 16000).

A caption published to a room, kept in a transcript or shared between replicas carries the `speaker` label
and the `session` it came from; on the speaker's own connection both are left out (None).

A final carries its `words` on the stream's clock (backends/transcript.py): aligned by the backend, or estimated
(core/words.py); with diarization on, each word has its voice's label and the name shown for it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..backends.transcript import Word


@dataclass(frozen=True)
class Ready:
    session: str
    backend: str
    model: str
    reason: str  # why this backend runs
    resume_token: str
    room: str | None = None
    speaker: str | None = None
    resumed: bool = False
    position: float | None = None  # a resumed stream: where its audio goes on, in seconds


@dataclass(frozen=True)
class Partial:
    """The open window's text so far; `stable`: its leading words that the previous partial agreed on."""

    segment: int
    start: float
    end: float
    text: str
    stable: int = 0
    speaker: str | None = None
    session: str | None = None


@dataclass(frozen=True)
class Final:
    """A window's last word: one per segment, never revised."""

    segment: int
    start: float
    end: float
    text: str
    resent: bool = False  # sent again to a resumed client that may have missed it
    speaker: str | None = None
    session: str | None = None
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Error:
    """Something went wrong on the server's side of the stream; `segment`: the window that could not be
    transcribed (its final follows, with empty text)."""

    code: str
    message: str
    segment: int | None = None


@dataclass(frozen=True)
class Renamed:
    """A diarized voice's label got a name from the speaker ("Speaker 2" -> "Priya"): the speaker's own answer.
    Later finals carry the name on that label's words, so viewers and exports show it from then on."""

    speaker: str
    name: str


@dataclass(frozen=True)
class End:
    """The stream is over; `reason` when the server ended it (shutdown, idle_timeout, session_too_long)."""

    reason: str | None = None


Caption = Partial | Final
Event = Ready | Partial | Final | Error | Renamed | End
