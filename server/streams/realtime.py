"""OpenAI's Realtime API, transcription sessions only, at `/v1/realtime?intent=transcription`
(docs/protocol.md, "OpenAI Realtime transcription"). The official `openai` SDK connects to it as to OpenAI.

Both flavours of the API are spoken: the GA one (`session.created` / `session.update` with
`session.audio.input.*`) and the beta one (header `OpenAI-Beta: realtime=v1`: `transcription_session.created`,
`transcription_session.update` with `input_audio_format`, `input_audio_transcription`, `turn_detection`).
An update may use either shape; the answer's shape follows its event name (and, for `session.*`, the flavour).

The session core underneath is the one every protocol shares (listen.py): client JSON events become session
calls (`input_audio_buffer.append` -> audio, `.commit` -> finalize, `.clear` -> clear), and the core's messages
become Realtime events (`encode`): a window that opens is `input_audio_buffer.speech_started`, its partials are
`...input_audio_transcription.delta`, its final is `speech_stopped`, `committed` and `...completed`. Our Session
is made at the first audio, so that the format, turn detection and prompt can be set until then.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs

from . import auth
from . import protocol as P
from ..config import SegmenterConfig
from ..httpapi.responses import json_response, split_path
from .v1 import Listener, new_session_id

RATE = 24000  # OpenAI's only PCM rate, and the default here; other rates of P.SAMPLE_RATES are an extension
BYTES_PER_SAMPLE = 2  # pcm16 (audio/pcm): 16-bit little-endian mono
MANUAL_HANGOVER_MS = 10 ** 9  # turn_detection null: silence never closes a window; a commit (or the cap) does
MAX_PADDING_MS = MAX_SILENCE_MS = 10_000
CLOSE_INVALID = 4000  # what OpenAI closes with after an error event about the connection itself (invalid_intent)

CLIENT_EVENTS = ("session.update", "transcription_session.update", "input_audio_buffer.append",
                 "input_audio_buffer.commit", "input_audio_buffer.clear")


class RealtimeError(Exception):
    """One client mistake: sent back as an `error` event (OpenAI's shape); the connection goes on."""

    def __init__(self, code: str, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.param, self.kind = code, message, param, kind


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


# -- the handshake ----------------------------------------------------------------------------------------------

def handshake_refusal(cfg, query: dict, request):
    """A bad, missing or viewer key is refused at the handshake with OpenAI's HTTP status and JSON error body, so
    that the SDK's connect raises as it does against OpenAI (the websockets client's InvalidStatus, carrying the
    response)."""
    token = auth.token_from(request.headers, query)
    verdict = auth.check(cfg, auth.SPEAK, token)
    if verdict == auth.OK:
        return None
    if verdict == auth.FORBIDDEN:
        return _refusal(HTTPStatus.FORBIDDEN, "insufficient_permissions",
                        "This key may not stream audio (it is a viewer key): use a speaker key.")
    if token is None:
        return _refusal(HTTPStatus.UNAUTHORIZED, None,
                        "You didn't provide an API key. You need to provide your API key in an Authorization "
                        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    # Unlike OpenAI, no part of the key is echoed: nobody reading logs of refusals learns anything of it.
    return _refusal(HTTPStatus.UNAUTHORIZED, "invalid_api_key", "Incorrect API key provided.")


def _refusal(status: HTTPStatus, code: str | None, message: str):
    return json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                    "code": code}}, status)


# -- the session's settings -------------------------------------------------------------------------------------

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
    changes = {}
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
    if type(rate) is not int or rate not in P.SAMPLE_RATES:
        raise RealtimeError("invalid_value", f"Invalid value: {str(rate)[:32]}. Supported rates are: "
                                             f"{', '.join(map(str, P.SAMPLE_RATES))} (24000 is OpenAI's).",
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
        out["prompt"] = (out["prompt"] or "").strip()[:P.MAX_CONTEXT].strip() or None
    return out


def _turn_detection(value, current: Settings, where: str) -> dict:
    if value is None:
        return {"vad": False}
    td = _object(value, where)
    if td.get("type") != "server_vad":
        raise RealtimeError("invalid_value", f"Invalid value: {str(td.get('type'))[:64]!r}. Supported values are: "
                                             "'server_vad' (or turn_detection null).", f"{where}.type")
    out = {"vad": True}
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


# -- the connection ---------------------------------------------------------------------------------------------

@dataclass
class Item:
    """The conversation item of one segment, and what of its text went out as deltas."""

    id: str
    sent: str = ""


class RealtimeListener(Listener):
    resumable = False  # an OpenAI client reconnects with a new session; a dropped one is flushed, not held

    def __init__(self, app, ws, url_room):
        super().__init__(app, ws, url_room)
        self.query = {k: v[0] for k, v in parse_qs(split_path(ws.request)[1]).items()}
        self.beta = ws.request.headers.get("OpenAI-Beta", "").startswith("realtime=v1")
        self.settings = Settings.defaults(app.cfg.segmenter)
        # Ours from the start (session.created goes out before the Session exists): `sess_ID` names the
        # transcript at /v1/transcripts/ID.
        self.session_id = new_session_id()
        self.expires_at = int(time.time() + self.lim.max_session_s)
        self._items: dict[int, Item] = {}  # segment -> its item, until its final
        self._previous_item: str | None = None  # the last committed item: the next one's previous_item_id
        self._failed: dict[int, str] = {}  # segment -> why it could not be transcribed (its final is empty)
        self._appended = 0  # audio bytes in the frame just handled: Listener.run's audio-rate limit counts them

    # -- Listener's hooks ---------------------------------------------------------------------------------------

    async def opened(self) -> None:
        try:
            self._check_query()
        except RealtimeError as exc:
            await self.send(self._error(exc))
            await self.ws.close(CLOSE_INVALID, f"{exc.kind}.{exc.code}")
            return
        created = "transcription_session.created" if self.beta else "session.created"
        await self.send(self._event(created, session=self._describe(self.beta)))

    async def on_text(self, text: str) -> None:
        event_id = None
        try:
            event = _parse(text)
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            kind = event.get("type")
            if kind in ("session.update", "transcription_session.update"):
                await self._update(event, answer=kind.replace(".update", ".updated"))
            elif kind == "input_audio_buffer.append":
                await self._append(event)
            elif kind == "input_audio_buffer.commit":
                self._commit()
            elif kind == "input_audio_buffer.clear":
                self._clear()
                await self.send(self._event("input_audio_buffer.cleared"))
            else:
                raise RealtimeError("invalid_value", f"Invalid value: {str(kind)[:64]!r}. Supported values are: "
                                                     f"{', '.join(repr(k) for k in CLIENT_EVENTS)}.", "type")
        except RealtimeError as exc:
            await self.send(self._error(exc, event_id))
        except P.ProtocolError as exc:  # from the session core (a bad frame of audio)
            await self.send(self._error(RealtimeError(exc.code, exc.message), event_id))

    async def on_audio(self, data: bytes) -> None:
        await self.send(self._error(RealtimeError(
            "invalid_value", "Binary frames are not part of the Realtime API: send audio as base64 in "
                             "input_audio_buffer.append events.")))

    def audio_bytes(self, message) -> int:
        """Realtime audio comes in text frames (base64): what the last append carried."""
        n, self._appended = self._appended, 0
        return n

    def error_frame(self, code: str, message: str) -> str:
        return error_event(code, message)

    def segmenter_config(self) -> SegmenterConfig:
        s = self.settings
        return dataclasses.replace(self.app.cfg.segmenter, pre_roll_ms=s.prefix_padding_ms,
                                   hangover_ms=s.silence_duration_ms if s.vad else MANUAL_HANGOVER_MS)

    def encode(self, msg: dict) -> list[str]:
        kind = msg["type"]
        if kind == "partial":
            return self._partial(msg)
        if kind == "final":
            return self._final(msg)
        if kind == "error":
            if "segment" in msg:  # the window could not be transcribed: its final (empty) comes next
                self._failed[msg["segment"]] = msg["message"]
                return []
            return [self.error_frame(msg["code"], msg["message"])]
        if kind == "end" and msg.get("reason") == "shutdown":
            return [self.error_frame("shutting_down", "the server is shutting down; open windows were "
                                                      "transcribed")]
        return []  # ready: session.created went out on connect; end: the close that follows says it

    # -- client events ------------------------------------------------------------------------------------------

    def _check_query(self) -> None:
        q = self.query
        if q.get("intent") != "transcription":
            raise RealtimeError("invalid_intent", "This server serves transcription sessions only: connect with "
                                                  "?intent=transcription.")
        if self.url_room is not None and not P.ROOM_NAME.fullmatch(self.url_room):
            raise RealtimeError("invalid_value", "'room' is 1 to 64 characters: letters, digits, '_', '.', '-' "
                                                 "(starting with a letter or digit).", "room")
        if "speaker" in q and not 0 < len(q["speaker"]) <= 64:
            raise RealtimeError("invalid_value", "'speaker' must be 1 to 64 characters.", "speaker")

    async def _update(self, event: dict, answer: str) -> None:
        new = parse_update(event.get("session"), self.settings)
        if self.session is not None and new.fixed() != self.settings.fixed():
            raise RealtimeError("audio_already_started", "The audio format, turn detection and prompt are fixed "
                                                         "once audio has been appended: open a new connection to "
                                                         "change them.", "session")
        self.settings = new
        beta = self.beta or answer.startswith("transcription_session")
        await self.send(self._event(answer, session=self._describe(beta)))

    async def _append(self, event: dict) -> None:
        data = _audio_bytes(event.get("audio"))
        if not data:
            return
        if self.session is None:  # the settings are fixed from here on
            await self._start(P.Start(sample_rate=self.settings.rate, room=self.url_room,
                                      speaker=self.query.get("speaker"), context=self.settings.prompt),
                              self.session_id)
        self._appended = len(data)
        step = self.settings.rate * BYTES_PER_SAMPLE  # 1 s: the most the session takes in one piece
        for i in range(0, len(data), step):
            self.session.audio(data[i:i + step])

    def _commit(self) -> None:
        if self.session is None or not self.session.finalize():
            raise RealtimeError("input_audio_buffer_commit_empty", "Error committing input audio buffer: no speech "
                                                                   "since the last commit.")

    def _clear(self) -> None:
        if self.session is not None:
            next_segment = self.session.clear()
            for segment in [s for s in self._items if s >= next_segment]:
                del self._items[segment]  # that window's item is dropped; the next window gets a new one

    # -- session messages -> server events ----------------------------------------------------------------------

    def _item(self, msg: dict) -> tuple[Item, list[str]]:
        """The item of the message's segment, and the events its first message brings: under server VAD, the
        window that opened is speech_started."""
        item = self._items.get(msg["segment"])
        if item is not None:
            return item, []
        item = self._items[msg["segment"]] = Item(new_id("item"))
        if not self.settings.vad:
            return item, []
        return item, [self._event("input_audio_buffer.speech_started", audio_start_ms=_ms(msg["start"]),
                                  item_id=item.id)]

    def _delta(self, item: Item, text: str) -> list[str]:
        """Deltas are append-only, our partials are revisions: only text that extends what was sent goes out,
        so that the deltas of an item, joined, are always a prefix of its latest text."""
        if not text.startswith(item.sent) or len(text) == len(item.sent):
            return []
        delta, item.sent = text[len(item.sent):], text
        return [self._event("conversation.item.input_audio_transcription.delta", item_id=item.id, content_index=0,
                            delta=delta)]

    def _partial(self, msg: dict) -> list[str]:
        item, frames = self._item(msg)
        return frames + self._delta(item, msg["text"])

    def _final(self, msg: dict) -> list[str]:
        item, frames = self._item(msg)
        del self._items[msg["segment"]]  # its last message
        if self.settings.vad:
            frames.append(self._event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(msg["end"]),
                                      item_id=item.id))
        frames.append(self._event("input_audio_buffer.committed", item_id=item.id,
                                  previous_item_id=self._previous_item))
        self._previous_item = item.id
        failed = self._failed.pop(msg["segment"], None)
        if failed is not None:
            return frames + [self._event("conversation.item.input_audio_transcription.failed", item_id=item.id,
                                         content_index=0, error={"type": "server_error", "code": "backend_error",
                                                                 "message": failed, "param": None})]
        return frames + self._delta(item, msg["text"]) + [self._event(
            "conversation.item.input_audio_transcription.completed", item_id=item.id, content_index=0,
            transcript=msg["text"], usage={"type": "duration", "seconds": round(msg["end"] - msg["start"], 3)})]

    # -- building events ----------------------------------------------------------------------------------------

    def _event(self, kind: str, **fields) -> str:
        return server_event(kind, **fields)

    def _error(self, exc: RealtimeError, event_id: str | None = None) -> str:
        return error_event(exc.code, exc.message, exc.param, event_id, exc.kind)

    def _describe(self, beta: bool) -> dict:
        """The session's effective configuration, in the GA or the beta shape."""
        s = self.settings
        vad = {"type": "server_vad", "threshold": s.threshold, "prefix_padding_ms": s.prefix_padding_ms,
               "silence_duration_ms": s.silence_duration_ms} if s.vad else None
        transcription = {"model": s.model or self.app.engine.backend.name, "language": s.language,
                         "prompt": s.prompt or ""}
        common = {"id": f"sess_{self.session_id}", "object": "realtime.transcription_session", "expires_at": self.expires_at,
                  "include": None}
        if beta:
            return {**common, "modalities": ["text"], "input_audio_format": "pcm16",
                    "input_audio_transcription": transcription, "turn_detection": vad,
                    "input_audio_noise_reduction": None}
        return {"type": "transcription", **common, "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": s.rate}, "transcription": transcription,
            "noise_reduction": None, "turn_detection": vad}}}


def server_event(kind: str, **fields) -> str:
    """One server event: every one has its own event_id."""
    return P.dump({"type": kind, "event_id": new_id("event"), **fields})


def error_event(code: str, message: str, param: str | None = None, event_id: str | None = None,
                kind: str | None = None) -> str:
    """OpenAI's `error` event; `event_id` inside it: the client event that caused it, when known."""
    return server_event("error", error={"type": kind or _error_kind(code), "code": code, "message": message,
                                        "param": param, "event_id": event_id})


def _parse(text: str) -> dict:
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        raise RealtimeError("invalid_json", "The event is not valid JSON.") from None
    if not isinstance(event, dict):
        raise RealtimeError("invalid_type", "An event must be a JSON object.")
    if not isinstance(event.get("type"), str):
        raise RealtimeError("missing_required_parameter", "Missing required parameter: 'type'.", "type")
    return event


def _audio_bytes(audio) -> bytes:
    """An append's `audio`: base64 of whole 16-bit samples."""
    if not isinstance(audio, str):
        raise RealtimeError("missing_required_parameter", "Missing required parameter: 'audio' (a base64 string).",
                            "audio")
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeError("invalid_value", "Invalid 'audio': not valid base64.", "audio") from None
    if len(data) % BYTES_PER_SAMPLE:
        raise RealtimeError("invalid_value", f"Invalid 'audio': {len(data)} bytes is not a whole number of 16-bit "
                                             "samples.", "audio")
    return data


SERVER_ERRORS = (P.BACKEND_ERROR, P.BACKEND_STALLED, "overloaded", "shutting_down")  # not the client's doing


def _error_kind(code: str) -> str:
    return "server_error" if code in SERVER_ERRORS else "invalid_request_error"


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))
