"""OpenAI Realtime transcription sessions: their settings, as `session.update` (GA shape) or
`transcription_session.update` (beta shape) sets them, checked and turned into what our stream uses (rate, turn
detection -> segmenter, prompt -> context). Pure: no I/O; the adapter is realtime.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import SegmenterConfig
from ..core.requests import MAX_CONTEXT, SAMPLE_RATES

RATE = 24000  # OpenAI's only PCM rate, and the default here; other rates of SAMPLE_RATES are an extension
MAX_PADDING_MS = MAX_SILENCE_MS = 10_000


class RealtimeError(Exception):
    """One client mistake: sent back as an `error` event (OpenAI's shape); the connection goes on."""

    def __init__(self, code: str, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.param, self.kind = code, message, param, kind


@dataclass(frozen=True)
class Settings:
    """What `session.update` sets. The first five shape the stream and are fixed once audio has come."""

    rate: int = RATE
    vad: bool = True  # turn_detection server_vad; False: null (manual commits)
    prefix_padding_ms: int = 300  # -> segmenter pre_roll_ms
    silence_duration_ms: int = 600  # -> segmenter hangover_ms
    prompt: str | None = None  # -> the stream's context
    threshold: float = 0.5  # accepted and reported; our VAD is the server's own (segmenter.vad)
    language: str | None = None  # accepted and reported; the backend's configured language is used
    model: str | None = None  # accepted and reported; the server's own backend transcribes

    @classmethod
    def defaults(cls, seg: SegmenterConfig) -> "Settings":
        return cls(prefix_padding_ms=seg.pre_roll_ms, silence_duration_ms=seg.hangover_ms)

    def fixed(self) -> tuple:
        return self.rate, self.vad, self.prefix_padding_ms, self.silence_duration_ms, self.prompt


ABSENT = object()  # a field the update leaves out keeps its value (null is a value: turn_detection null)


def parse_update(session, current: Settings) -> Settings:
    """The settings after one update's `session` object, GA shape (`audio.input.*`) or beta shape (top-level
    `input_audio_*`, `turn_detection`). Fields we do not use (noise_reduction, include, ...) are ignored.
    Raises RealtimeError naming the offending parameter."""
    if not isinstance(session, dict):
        raise RealtimeError("invalid_type", "Invalid type for 'session': expected an object.", "session")
    if session.get("type", "transcription") != "transcription":
        raise RealtimeError("invalid_value", f"Invalid value: {str(session.get('type'))[:64]!r}. This server only "
                                             "serves transcription sessions: 'session.type' must be "
                                             "'transcription'.", "session.type")
    audio = _object(session.get("audio", {}), "session.audio")
    ga_input = _object(audio.get("input", {}), "session.audio.input")
    changes: dict[str, Any] = {}
    for value, where in ((ga_input.get("format", ABSENT), "session.audio.input.format"),
                         (session.get("input_audio_format", ABSENT), "session.input_audio_format")):
        if value is not ABSENT:
            changes["rate"] = _rate(value, where)
    for value, where in ((ga_input.get("transcription", ABSENT), "session.audio.input.transcription"),
                         (session.get("input_audio_transcription", ABSENT), "session.input_audio_transcription")):
        if value is not ABSENT:
            changes.update(_transcription(value, where))
    for value, where in ((ga_input.get("turn_detection", ABSENT), "session.audio.input.turn_detection"),
                         (session.get("turn_detection", ABSENT), "session.turn_detection")):
        if value is not ABSENT:
            changes.update(_turn_detection(value, current, where))
    return dataclasses.replace(current, **changes)


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise RealtimeError("invalid_type", f"Invalid type for '{where}': expected an object.", where)
    return value


def _rate(value, where: str) -> int:
    """GA `{"type": "audio/pcm", "rate": 24000}` or beta `"pcm16"`: the sample rate of 16-bit PCM."""
    if value == "pcm16":
        return RATE
    if isinstance(value, str):
        raise RealtimeError("invalid_value", f"Invalid value: {value[:64]!r}. Supported values are: 'pcm16'.", where)
    fmt = _object(value, where)
    if fmt.get("type", "audio/pcm") != "audio/pcm":
        raise RealtimeError("invalid_value", f"Invalid value: {str(fmt.get('type'))[:64]!r}. Supported values are: "
                                             "'audio/pcm' (G.711 is not supported).", f"{where}.type")
    rate = fmt.get("rate", RATE)
    if type(rate) is not int or rate not in SAMPLE_RATES:
        raise RealtimeError("invalid_value", f"Invalid value: {str(rate)[:32]}. Supported rates are: "
                                             f"{', '.join(map(str, SAMPLE_RATES))} (24000 is OpenAI's).",
                            f"{where}.rate")
    return rate


def _transcription(value, where: str) -> dict:
    if value is None:
        return {"prompt": None, "language": None, "model": None}
    t = _object(value, where)
    out = {}
    for key in ("model", "language", "prompt"):
        if key in t:
            if t[key] is not None and not isinstance(t[key], str):
                raise RealtimeError("invalid_type", f"Invalid type for '{where}.{key}': expected a string.",
                                    f"{where}.{key}")
            out[key] = t[key]
    if "prompt" in out:  # our stream's context: blank is none, and only its first MAX_CONTEXT characters count
        out["prompt"] = (out["prompt"] or "").strip()[:MAX_CONTEXT].strip() or None
    return out


def _turn_detection(value, current: Settings, where: str) -> dict:
    if value is None:
        return {"vad": False}
    td = _object(value, where)
    if td.get("type") != "server_vad":
        raise RealtimeError("invalid_value", f"Invalid value: {str(td.get('type'))[:64]!r}. Supported values are: "
                                             "'server_vad' (or turn_detection null).", f"{where}.type")
    out: dict[str, Any] = {"vad": True}
    for key, top in (("prefix_padding_ms", MAX_PADDING_MS), ("silence_duration_ms", MAX_SILENCE_MS)):
        if key in td:
            ms = td[key]
            if type(ms) is not int or not 0 <= ms <= top:
                raise RealtimeError("invalid_value", f"'{where}.{key}' must be an integer from 0 to {top}.",
                                    f"{where}.{key}")
            out[key] = ms
    if "threshold" in td:
        th = td["threshold"]
        if type(th) not in (int, float) or not 0.0 <= th <= 1.0:
            raise RealtimeError("invalid_value", f"'{where}.threshold' must be a number from 0 to 1.",
                                f"{where}.threshold")
        out["threshold"] = float(th)
    return out
