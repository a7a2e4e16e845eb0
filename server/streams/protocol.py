"""Protocol v1 messages (docs/protocol.md): parsing what clients send, building what the server sends.

Pure functions, no I/O, so that the transport and the session stay small and the parser can be tested alone.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

PROTOCOL_VERSION = 1
SAMPLE_RATE = 16000  # the rate every stream is resampled to, and the unit of all timestamps
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
ENCODINGS = {"pcm_s16le": 2, "pcm_f32le": 4}  # encoding -> bytes per sample
MAX_TEXT_FRAME = 64 * 1024
MAX_CONTEXT = 500  # characters of a stream's `context`

# Error codes sent in {"type":"error","code":...}; docs/protocol.md lists them all.
BAD_JSON = "bad_json"
BAD_MESSAGE = "bad_message"
UNKNOWN_TYPE = "unknown_type"
NOT_STARTED = "not_started"
ALREADY_STARTED = "already_started"
UNSUPPORTED_SAMPLE_RATE = "unsupported_sample_rate"
UNSUPPORTED_ENCODING = "unsupported_encoding"
UNSUPPORTED_CHANNELS = "unsupported_channels"
BAD_ROOM = "bad_room"
BAD_AUDIO = "bad_audio"
BACKEND_ERROR = "backend_error"
RESUME_UNKNOWN = "resume_unknown"
RESUME_REFUSED = "resume_refused"
BACKEND_STALLED = "backend_stalled"


class ProtocolError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Start:
    sample_rate: int = SAMPLE_RATE
    encoding: str = "pcm_s16le"
    channels: int = 1
    room: str | None = None  # publish this stream's captions to a room's viewers
    speaker: str | None = None  # the label viewers of the room see on these captions
    context: str | None = None  # names and terms likely to be said: a prompt for the model
    resume: str | None = None  # the id of a dropped session to go on with
    resume_token: str | None = None  # the secret its `ready` carried
    offset: int | None = None  # stream position (16 kHz samples) at which the audio resent now begins

    @property
    def bytes_per_sample(self) -> int:
        return ENCODINGS[self.encoding]


@dataclass(frozen=True)
class Finalize:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Ping:
    pass


ClientMessage = Start | Finalize | Stop | Ping


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
                 resume_token=token if resume else None, offset=offset if resume else None)


ROOM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SESSION_ID = re.compile(r"[0-9a-f]{12}")


def check_room(room) -> str:
    if not isinstance(room, str) or not ROOM_NAME.fullmatch(room):
        raise ProtocolError(BAD_ROOM, "a room name is 1 to 64 characters: letters, digits, '_', '.', '-' "
                                      "(starting with a letter or digit)")
    return room


def dump(msg: dict) -> str:
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":"))


# The session core speaks in messages (dicts): ready, partial, final, error, end. The v1 adapter sends them as
# they are (dump); the other adapters translate them into their protocol's own.

def ready(session: str, backend: str, model: str, reason: str, **extra) -> dict:
    return {"type": "ready", "protocol": PROTOCOL_VERSION, "session": session, "backend": backend,
            "model": model, "sample_rate": SAMPLE_RATE, "reason": reason, **extra}


def caption(kind: str, segment: int, start: float, end: float, text: str, **extra) -> dict:
    """A `partial` or `final` message (a dict: rooms add fields before it is sent); start/end are seconds of
    the stream's own audio."""
    return {"type": kind, "segment": segment, "start": start, "end": end, "text": text, **extra}


def error_message(code: str, message: str, **extra) -> dict:
    return {"type": "error", "code": code, "message": message, **extra}


def error(code: str, message: str, **extra) -> str:
    return dump(error_message(code, message, **extra))


def pong() -> str:
    return dump({"type": "pong"})


def end(**extra) -> dict:
    return {"type": "end", **extra}
