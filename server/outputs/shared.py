"""What a room's outputs need from storage shared by replicas, declared here and implemented over Redis by
server/cluster/outputs.py (cluster sits above outputs in the import layers; app.py injects it).

With replicas every replica knows every output (its definition is shared), exactly one replica delivers it at a
time (the holder of its lease), and the holder keeps the output's progress where any replica can read it and
a new holder can go on from it. The holder's sender writes that progress through a `Journal`:

- before each post: "pending: seq N carries entries E1..Ek" (with the cursor: the last entry finished with);
- after the service accepted it: "done: last seq N, cursor Ek, pending none".

So a holder killed mid-post leaves its post recorded as pending, and the next holder sends it again with the
SAME seq (Zoom, and a webhook receiver, take the same seq as a retry, not a new caption; Zoom's `…/seq` also says
whether it landed, and then it is not sent at all): a killed replica neither doubles nor skips a caption. A
journal write is fenced by the lease (written only while this replica holds it): when it answers False the lease
is gone (expired, taken over, the output removed, Redis away) and the sender stops at once, before posting.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from .contracts import OutgoingCaption


@dataclass(frozen=True)
class OutputSpec:
    """An output's definition, as every replica needs it to deliver it (the URL and secret are credentials: they
    are kept in the deployment's own Redis, never listed)."""

    kind: str
    url: str
    lang: str
    secret: str | None
    host: str  # what may be shown

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> OutputSpec:
        return cls(**json.loads(raw))


@dataclass
class Progress:
    """One output's delivery as shared: written only by its lease holder, read by every replica (GET lists it)."""

    holder: str | None = None  # the replica delivering it
    state: str = "ok"
    delivered: int = 0
    retried: int = 0
    dropped: int = 0
    queued: int = 0  # waiting at the holder when it last wrote
    last_error: str | None = None
    last_seq: int | None = None
    next_seq: int | None = None  # the seq of the next new caption; None: ask the service (Zoom) or start at 1
    cursor: str = "0-0"  # the last transcript entry finished with (delivered or dropped): go on after it
    pending_seq: int | None = None  # a post under way (maybe landed, maybe not) ...
    pending: list[str] = field(default_factory=list)  # ... and the entries it carries

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Progress:
        data = json.loads(raw)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["pending"] = list(known.get("pending") or [])  # Lua's cjson writes an empty list as {}
        return cls(**known)


# Writes the sender's progress, fenced by the lease; False: the lease is lost (the sender stops before posting).
Journal = Callable[[Progress], Awaitable[bool]]


class Sender(Protocol):
    """What a holder drives: sender.OutputSender."""

    state: str

    def offer(self, caption: OutgoingCaption, tag: str | None = None) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def running(self) -> bool: ...

    @property
    def queued(self) -> int: ...


# Makes a sender for a held output, going on from its shared progress and recording through the journal.
Deliver = Callable[[OutputSpec, Progress, Journal], Sender]


class SharedUnavailable(Exception):
    """The shared store (Redis) did not answer: the output could not be added or removed; try again."""


class SharedOutputs(Protocol):
    async def define(self, room: str, output_id: str, spec: OutputSpec, max_per_room: int) -> bool:
        """Shares a new output (False: the room has max_per_room already); this replica takes its lease at once.
        Raises SharedUnavailable."""
        ...

    async def undefine(self, room: str, output_id: str) -> bool:
        """Removes an output everywhere (its holder stops at its next write); False: there was none."""
        ...

    def listed(self, room: str) -> list[tuple[str, OutputSpec, Progress | None]]:
        """The room's outputs and their progress as last read (refreshed every heartbeat)."""
        ...

    async def start(self, deliver: Deliver) -> None:
        ...

    async def close(self) -> None:
        ...
