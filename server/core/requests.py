"""What a stream asks for when it starts (`Start`), in the terms of the session core: audio format, room and
speaker, context, and what to resume. Each protocol adapter builds a Start from its own messages (v1's `start`,
Deepgram's query string, OpenAI's session settings); the names and limits they all check are here too.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from .errors import BAD_MESSAGE, BAD_ROOM, ProtocolError

SAMPLE_RATE = 16000  # the rate every stream is resampled to, and the unit of all timestamps
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
ENCODINGS = {"pcm_s16le": 2, "pcm_f32le": 4}  # encoding -> bytes per sample
MAX_CONTEXT = 500  # characters of a stream's `context`

ROOM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SESSION_ID = re.compile(r"[0-9a-f]{12}")  # what /v1/transcripts/ID takes


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
    diarize: bool | None = None  # label the stream's voices; None: the server's default (speakers.diarize)

    @property
    def bytes_per_sample(self) -> int:
        return ENCODINGS[self.encoding]

    @property
    def bytes_per_second(self) -> int:
        """Of the client's audio: what rate limits are measured in."""
        return self.sample_rate * self.bytes_per_sample


MAX_NAME = 64  # characters of a speaker's label or a voice's name


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value.strip()) <= MAX_NAME:
        raise ProtocolError(BAD_MESSAGE, f"{what} must be a string of 1 to {MAX_NAME} characters")
    return value.strip()


def new_session_id() -> str:
    return uuid.uuid4().hex[:12]  # matches SESSION_ID


def check_room(room: object) -> str:
    if not isinstance(room, str) or not ROOM_NAME.fullmatch(room):
        raise ProtocolError(BAD_ROOM, "a room name is 1 to 64 characters: letters, digits, '_', '.', '-' "
                                      "(starting with a letter or digit)")
    return room
