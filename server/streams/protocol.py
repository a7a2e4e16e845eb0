"""Protocol v1's frames (docs/protocol.md): parsing what clients send, encoding the session's typed events.

Pure functions, no I/O, so that the adapter (v1.py) stays small and the parser can be tested alone. What every
protocol shares (the start request, names, error codes) is the core's: core/requests.py, core/errors.py.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..core.errors import (BAD_JSON, BAD_MESSAGE, RESUME_REFUSED, UNKNOWN_TYPE, UNSUPPORTED_CHANNELS,
                           UNSUPPORTED_ENCODING, UNSUPPORTED_SAMPLE_RATE, ProtocolError)
from ..core.events import Caption, End, Error, Event, Ready, Renamed
from ..core.requests import (ENCODINGS, MAX_CONTEXT, SAMPLE_RATE, SAMPLE_RATES, SESSION_ID, Start, check_name,
                             check_room)
from ..delivery.records import caption_record

PROTOCOL_VERSION = 1
MAX_TEXT_FRAME = 64 * 1024


@dataclass(frozen=True)
class Finalize:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Rename:
    """Gives a diarized voice's label ("Speaker 2") a name ("Priya"), shown on captions from then on."""

    speaker: str
    name: str


ClientMessage = Start | Finalize | Stop | Ping | Rename


def load_object(text: str) -> dict:
    """One client text frame as a JSON object (any protocol's); raises ProtocolError (bad_message, bad_json)."""
    if len(text) > MAX_TEXT_FRAME:
        raise ProtocolError(BAD_MESSAGE, f"text frame of {len(text)} characters exceeds {MAX_TEXT_FRAME}")
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ProtocolError(BAD_JSON, f"text frame is not valid JSON: {exc}"[:300]) from None
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_MESSAGE, "a message must be a JSON object")
    return msg


def parse_client_text(text: str) -> ClientMessage:
    """Parses one client text frame; raises ProtocolError with a code from the list above."""
    msg = load_object(text)
    kind = msg.get("type")
    if kind == "start":
        return _parse_start(msg)
    if kind == "finalize":
        return Finalize()
    if kind == "stop":
        return Stop()
    if kind == "ping":
        return Ping()
    if kind == "rename":
        return Rename(check_name(msg.get("speaker"), "speaker"), check_name(msg.get("name"), "name"))
    if not isinstance(kind, str):
        raise ProtocolError(BAD_MESSAGE, 'a message needs a string "type"')
    raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind[:64]!r}")


def _parse_start(msg: dict) -> Start:
    rate = msg.get("sample_rate", SAMPLE_RATE)
    if type(rate) not in (int, float) or not math.isfinite(rate) or rate != int(rate):
        raise ProtocolError(UNSUPPORTED_SAMPLE_RATE, f"sample_rate must be an integer, got {rate!r}")
    if int(rate) not in SAMPLE_RATES:
        raise ProtocolError(
            UNSUPPORTED_SAMPLE_RATE, f"sample_rate {int(rate)} is not one of {', '.join(map(str, SAMPLE_RATES))}"
        )
    encoding = msg.get("encoding", "pcm_s16le")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ProtocolError(UNSUPPORTED_ENCODING, f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    channels = msg.get("channels", 1)
    if type(channels) is not int or channels != 1:
        raise ProtocolError(UNSUPPORTED_CHANNELS, f"only mono audio (channels: 1) is accepted, got {channels!r}")
    room = msg.get("room")
    if room is not None:
        check_room(room)
    speaker = msg.get("speaker")
    if speaker is not None and (not isinstance(speaker, str) or not 0 < len(speaker) <= 64):
        raise ProtocolError(BAD_MESSAGE, "speaker must be a string of 1 to 64 characters")
    diarize = msg.get("diarize")
    if diarize is not None and not isinstance(diarize, bool):
        raise ProtocolError(BAD_MESSAGE, "diarize must be true or false")
    context = msg.get("context")
    if context is not None and (not isinstance(context, str) or len(context) > MAX_CONTEXT):
        raise ProtocolError(BAD_MESSAGE, f"context must be a string of at most {MAX_CONTEXT} characters")
    resume, token, offset = msg.get("resume"), msg.get("resume_token"), msg.get("offset")
    if resume is not None:
        if not isinstance(resume, str) or not SESSION_ID.fullmatch(resume):
            raise ProtocolError(BAD_MESSAGE, "resume must be the session id from `ready`")
        if not isinstance(token, str) or not token:
            raise ProtocolError(RESUME_REFUSED, "resuming a session needs its resume_token (sent in `ready`)")
        if type(offset) is not int or offset < 0:
            raise ProtocolError(BAD_MESSAGE, "offset must be the stream position (an integer count of 16 kHz "
                                             "samples, >= 0) at which the resent audio begins")
    return Start(sample_rate=int(rate), encoding=encoding, channels=1, room=room, speaker=speaker,
                 context=(context.strip() or None) if context else None, resume=resume,
                 resume_token=token if resume else None, offset=offset if resume else None, diarize=diarize)


def dump(msg: dict) -> str:
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":"))


def encode(event: Event) -> dict:
    """A session event as v1 sends it; fields that do not apply are left out."""
    if isinstance(event, Ready):
        msg = {"type": "ready", "protocol": PROTOCOL_VERSION, "session": event.session, "backend": event.backend,
               "model": event.model, "sample_rate": SAMPLE_RATE, "reason": event.reason,
               "resume_token": event.resume_token}
        if event.room is not None:
            msg.update(room=event.room, speaker=event.speaker)
        if event.resumed:
            msg.update(resumed=True, position=event.position)
        return msg
    if isinstance(event, Error):
        return error_message(event.code, event.message,
                             **({"segment": event.segment} if event.segment is not None else {}))
    if isinstance(event, End):
        return {"type": "end", **({"reason": event.reason} if event.reason else {})}
    if isinstance(event, Renamed):
        return {"type": "rename", "speaker": event.speaker, "name": event.name}
    return caption_record(event)


def encode_viewer(caption: Caption, backlog: bool) -> str:
    """A room's caption as a viewer gets it (`/v1/watch`): labelled with speaker and session; `backlog` on the
    finals said before the viewer joined."""
    return dump({**caption_record(caption), "backlog": True} if backlog else caption_record(caption))


def error_message(code: str, message: str, **extra: object) -> dict:
    return {"type": "error", "code": code, "message": message, **extra}


def error(code: str, message: str, **extra: object) -> str:
    return dump(error_message(code, message, **extra))


def pong() -> str:
    return dump({"type": "pong"})
