"""OpenAI's Realtime API, transcription sessions only, at `/v1/realtime?intent=transcription`
(docs/protocol.md, "OpenAI Realtime transcription"). The official `openai` SDK connects to it as to OpenAI.

Both flavours of the API are spoken: the GA one (`session.created` / `session.update` with
`session.audio.input.*`) and the beta one (header `OpenAI-Beta: realtime=v1`: `transcription_session.created`,
`transcription_session.update` with `input_audio_format`, `input_audio_transcription`, `turn_detection`).
An update may use either shape; the answer's shape follows its event name (and, for `session.*`, the flavour).

The session core and the connection policy underneath are the ones every protocol shares (policy.py): client
JSON events become session calls (`input_audio_buffer.append` -> audio, `.commit` -> finalize, `.clear` -> clear),
and the core's events become Realtime events (`encode`): a window that opens is
`input_audio_buffer.speech_started`, its partials are `...input_audio_transcription.delta`, its final is
`speech_stopped`, `committed` and `...completed`. Our Session is made at the first audio, so that the format,
turn detection and prompt can be set until then (realtime_settings.py checks them).
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

from ..config import AuthConfig, SegmenterConfig
from ..core.errors import BACKEND_ERROR, BACKEND_STALLED, ProtocolError
from ..core.events import Caption, End, Error, Event, Final, Partial
from ..core.requests import ROOM_NAME, Start, new_session_id
from . import auth
from . import protocol as P
from .connection import Refusal, params
from .policy import Adapter, Stream
from .realtime_settings import RealtimeError, Settings, parse_update

BYTES_PER_SAMPLE = 2  # pcm16 (audio/pcm): 16-bit little-endian mono
MANUAL_HANGOVER_MS = 10 ** 9  # turn_detection null: silence never closes a window; a commit (or the cap) does
CLOSE_INVALID = 4000  # what OpenAI closes with after an error event about the connection itself (invalid_intent)

CLIENT_EVENTS = ("session.update", "transcription_session.update", "input_audio_buffer.append",
                 "input_audio_buffer.commit", "input_audio_buffer.clear")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


# -- the handshake ----------------------------------------------------------------------------------------------

def handshake_refusal(cfg: AuthConfig, headers, query_string: str) -> Refusal | None:
    """A bad, missing or viewer key is refused at the handshake with OpenAI's HTTP status and JSON error body, so
    that the SDK's connect raises as it does against OpenAI (the websockets client's InvalidStatus, carrying the
    response)."""
    token = auth.token_from(headers, params(query_string))
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


def _refusal(status: HTTPStatus, code: str | None, message: str) -> Refusal:
    return Refusal(status, json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                                 "param": None, "code": code}}).encode())


# -- the connection ---------------------------------------------------------------------------------------------

@dataclass
class Item:
    """The conversation item of one segment, and what of its text went out as deltas."""

    id: str
    sent: str = ""


class Realtime(Adapter):
    resumable = False  # an OpenAI client reconnects with a new session; a dropped one is flushed, not held

    def __init__(self, stream: Stream):
        super().__init__(stream)
        self.query = params(stream.ws.query_string)
        self.beta = stream.ws.headers.get("OpenAI-Beta", "").startswith("realtime=v1")
        self.settings = Settings.defaults(stream.cfg.segmenter)
        # Ours from the start (session.created goes out before the Session exists): `sess_ID` names the
        # transcript at /v1/transcripts/ID.
        self.session_id = new_session_id()
        self.expires_at = int(time.time() + stream.cfg.limits.max_session_s)
        self._items: dict[int, Item] = {}  # segment -> its item, until its final
        self._previous_item: str | None = None  # the last committed item: the next one's previous_item_id
        self._failed: dict[int, str] = {}  # segment -> why it could not be transcribed (its final is empty)
        self._appended = 0  # audio bytes in the frame just handled: the policy's audio-rate limit counts them

    # -- the Adapter's hooks ---------------------------------------------------------------------------------------

    async def opened(self) -> None:
        try:
            self._check_query()
        except RealtimeError as exc:
            await self.stream.send(self._error(exc))
            await self.stream.ws.close(CLOSE_INVALID, f"{exc.kind}.{exc.code}")
            return
        created = "transcription_session.created" if self.beta else "session.created"
        await self.stream.send(self._event(created, session=self._describe(self.beta)))

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
                await self.stream.send(self._event("input_audio_buffer.cleared"))
            else:
                raise RealtimeError("invalid_value", f"Invalid value: {str(kind)[:64]!r}. Supported values are: "
                                                     f"{', '.join(repr(k) for k in CLIENT_EVENTS)}.", "type")
        except RealtimeError as exc:
            await self.stream.send(self._error(exc, event_id))
        except ProtocolError as exc:  # from the session core (a bad frame of audio)
            await self.stream.send(self._error(RealtimeError(exc.code, exc.message), event_id))

    async def on_audio(self, data: bytes) -> None:
        await self.stream.send(self._error(RealtimeError(
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
        return dataclasses.replace(self.stream.cfg.segmenter, pre_roll_ms=s.prefix_padding_ms,
                                   hangover_ms=s.silence_duration_ms if s.vad else MANUAL_HANGOVER_MS)

    def encode(self, event: Event) -> list[str]:
        if isinstance(event, Partial):
            return self._partial(event)
        if isinstance(event, Final):
            return self._final(event)
        if isinstance(event, Error):
            if event.segment is not None:  # the window could not be transcribed: its final (empty) comes next
                self._failed[event.segment] = event.message
                return []
            return [self.error_frame(event.code, event.message)]
        if isinstance(event, End) and event.reason == "shutdown":
            return [self.error_frame("shutting_down", "the server is shutting down; open windows were "
                                                      "transcribed")]
        return []  # ready: session.created went out on connect; end: the close that follows says it

    # -- client events ------------------------------------------------------------------------------------------

    def _check_query(self) -> None:
        q = self.query
        if q.get("intent") != "transcription":
            raise RealtimeError("invalid_intent", "This server serves transcription sessions only: connect with "
                                                  "?intent=transcription.")
        if self.stream.url_room is not None and not ROOM_NAME.fullmatch(self.stream.url_room):
            raise RealtimeError("invalid_value", "'room' is 1 to 64 characters: letters, digits, '_', '.', '-' "
                                                 "(starting with a letter or digit).", "room")
        if "speaker" in q and not 0 < len(q["speaker"]) <= 64:
            raise RealtimeError("invalid_value", "'speaker' must be 1 to 64 characters.", "speaker")

    async def _update(self, event: dict, answer: str) -> None:
        new = parse_update(event.get("session"), self.settings)
        if self.stream.session is not None and new.fixed() != self.settings.fixed():
            raise RealtimeError("audio_already_started", "The audio format, turn detection and prompt are fixed "
                                                         "once audio has been appended: open a new connection to "
                                                         "change them.", "session")
        self.settings = new
        beta = self.beta or answer.startswith("transcription_session")
        await self.stream.send(self._event(answer, session=self._describe(beta)))

    async def _append(self, event: dict) -> None:
        data = _audio_bytes(event.get("audio"))
        if not data:
            return
        if self.stream.session is None:  # the settings are fixed from here on
            await self.stream.start(Start(sample_rate=self.settings.rate, room=self.stream.url_room,
                                          speaker=self.query.get("speaker"), context=self.settings.prompt),
                                    self.session_id)
        session = self.stream.session
        assert session is not None  # started just above
        self._appended = len(data)
        step = self.settings.rate * BYTES_PER_SAMPLE  # 1 s: the most the session takes in one piece
        for i in range(0, len(data), step):
            session.audio(data[i:i + step])

    def _commit(self) -> None:
        if self.stream.session is None or not self.stream.session.finalize():
            raise RealtimeError("input_audio_buffer_commit_empty", "Error committing input audio buffer: no speech "
                                                                   "since the last commit.")

    def _clear(self) -> None:
        if self.stream.session is not None:
            next_segment = self.stream.session.clear()
            for segment in [s for s in self._items if s >= next_segment]:
                del self._items[segment]  # that window's item is dropped; the next window gets a new one

    # -- session messages -> server events ----------------------------------------------------------------------

    def _item(self, caption: Caption) -> tuple[Item, list[str]]:
        """The item of the message's segment, and the events its first message brings: under server VAD, the
        window that opened is speech_started."""
        item = self._items.get(caption.segment)
        if item is not None:
            return item, []
        item = self._items[caption.segment] = Item(new_id("item"))
        if not self.settings.vad:
            return item, []
        return item, [self._event("input_audio_buffer.speech_started", audio_start_ms=_ms(caption.start),
                                  item_id=item.id)]

    def _delta(self, item: Item, text: str) -> list[str]:
        """Deltas are append-only, our partials are revisions: only text that extends what was sent goes out,
        so that the deltas of an item, joined, are always a prefix of its latest text."""
        if not text.startswith(item.sent) or len(text) == len(item.sent):
            return []
        delta, item.sent = text[len(item.sent):], text
        return [self._event("conversation.item.input_audio_transcription.delta", item_id=item.id, content_index=0,
                            delta=delta)]

    def _partial(self, partial: Partial) -> list[str]:
        item, frames = self._item(partial)
        return frames + self._delta(item, partial.text)

    def _final(self, final: Final) -> list[str]:
        item, frames = self._item(final)
        del self._items[final.segment]  # its last message
        if self.settings.vad:
            frames.append(self._event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(final.end),
                                      item_id=item.id))
        frames.append(self._event("input_audio_buffer.committed", item_id=item.id,
                                  previous_item_id=self._previous_item))
        self._previous_item = item.id
        failed = self._failed.pop(final.segment, None)
        if failed is not None:
            return frames + [self._event("conversation.item.input_audio_transcription.failed", item_id=item.id,
                                         content_index=0, error={"type": "server_error", "code": "backend_error",
                                                                 "message": failed, "param": None})]
        return frames + self._delta(item, final.text) + [self._event(
            "conversation.item.input_audio_transcription.completed", item_id=item.id, content_index=0,
            transcript=final.text, usage={"type": "duration", "seconds": round(final.end - final.start, 3)})]

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
        transcription = {"model": s.model or self.stream.backend_name, "language": s.language,
                         "prompt": s.prompt or ""}
        common = {"id": f"sess_{self.session_id}", "object": "realtime.transcription_session",
                  "expires_at": self.expires_at, "include": None}
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


SERVER_ERRORS = (BACKEND_ERROR, BACKEND_STALLED, "overloaded", "shutting_down")  # not the client's doing


def _error_kind(code: str) -> str:
    return "server_error" if code in SERVER_ERRORS else "invalid_request_error"


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))
