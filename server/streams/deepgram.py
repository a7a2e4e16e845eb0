"""Deepgram's live streaming protocol on `/v1/listen`, so that Deepgram's SDKs and clients caption through this
server (docs/protocol.md, "Deepgram live at /v1/listen").

A Deepgram stream is configured by its query string and starts on connect; binary frames are raw linear16 PCM;
the client may send KeepAlive, Finalize, CloseStream and Configure. The server answers with Results (interim
and final), SpeechStarted, UtteranceEnd, Metadata (on close) and Error. Underneath it is the same Session as
protocol v1: same windows, same finals, same rooms and transcripts; only the frames differ.

A bad key, or a query this server cannot serve (another encoding, rate or channel count), is refused at the
handshake with the HTTP status and JSON body Deepgram answers with, which is where Deepgram's SDKs expect it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from ..backends.transcript import Word
from ..config import AuthConfig, SegmenterConfig
from ..core.errors import BAD_JSON, BAD_MESSAGE, UNKNOWN_TYPE, ProtocolError
from ..core.events import Caption, End, Error, Event, Final, Ready, Renamed
from ..core.requests import MAX_CONTEXT, SAMPLE_RATES, Start, check_room
from ..core.session import Session
from . import auth
from . import protocol as P
from .connection import Refusal, params
from .policy import Adapter, Stream

# Deepgram's live query parameters (those of its SDKs and docs). Protocol v1 uses only `room` and `token`, which
# are not among them, so a v1 client is never read as Deepgram; any one of these names decides (intake.py).
DEEPGRAM_PARAMS = frozenset({
    "callback", "callback_method", "channels", "detect_entities", "diarize", "diarize_model", "dictation",
    "encoding", "endpointing", "extra", "filler_words", "interim_results", "keyterm", "keywords", "language",
    "language_hint", "mip_opt_out", "model", "multichannel", "no_delay", "numerals", "profanity_filter",
    "punctuate", "redact", "replace", "sample_rate", "search", "smart_format", "tag", "utterance_end_ms",
    "vad_events", "version",
})

CHANNEL = [0, 1]  # [channel index, channel count]: every stream here is mono
SCHEMA_ERRORS = (BAD_JSON, BAD_MESSAGE, UNKNOWN_TYPE)  # a client text message not understood: "SchemaError"


def asked_for(query: dict) -> bool:
    return bool(DEEPGRAM_PARAMS & set(query))


# -- the query string -----------------------------------------------------------------------------------------

class BadRequest(ValueError):
    """A query this server cannot serve: refused at the handshake with HTTP 400."""


@dataclasses.dataclass(frozen=True)
class Options:
    start: Start
    interim_results: bool = False
    vad_events: bool = False
    utterance_end_ms: int | None = None
    endpointing_ms: int | None = None  # None: the server's own hangover


def query_of(query_string: str) -> dict[str, list[str]]:
    """Every value of every parameter (keyterm and keywords repeat)."""
    return parse_qs(query_string, keep_blank_values=True)


def parse_options(query: dict[str, list[str]]) -> Options:
    """The stream's settings; raises BadRequest. Parameters not read here (punctuate, smart_format, model,
    language, ...) are accepted and have no effect (docs/protocol.md says why)."""
    def last(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    encoding, rate = last("encoding"), last("sample_rate")
    if encoding is None:
        raise BadRequest("send raw PCM with encoding=linear16&sample_rate=N: containerized audio (WAV, Ogg, "
                         "WebM, ...) is not decoded by this server")
    if encoding != "linear16":
        raise BadRequest(f"encoding {encoding[:32]!r} is not supported by this server: only linear16")
    if rate is None:
        raise BadRequest("sample_rate is required with encoding=linear16")
    rate_value = _integer("sample_rate", rate)
    if rate_value not in SAMPLE_RATES:
        raise BadRequest(f"sample_rate {rate_value} is not supported by this server: one of "
                         f"{', '.join(map(str, SAMPLE_RATES))}")
    if _integer("channels", last("channels")) not in (None, 1):
        raise BadRequest("only mono audio (channels=1) is supported by this server")
    # diarize_model (v1, latest) turns diarization on too, as Deepgram documents; which model is ours to pick.
    diarize = last("diarize") or ("true" if last("diarize_model") else None)
    start = Start(sample_rate=rate_value, encoding="pcm_s16le", channels=1, room=_room(last("room")),
                  speaker=_speaker(last("speaker")), context=context_of(query),
                  diarize=None if diarize is None else _flag("diarize", diarize))
    endpointing = last("endpointing")
    return Options(
        start=start,
        interim_results=_flag("interim_results", last("interim_results")),
        vad_events=_flag("vad_events", last("vad_events")),
        utterance_end_ms=_integer("utterance_end_ms", last("utterance_end_ms"), minimum=1),
        # endpointing=false (or true: Deepgram's default is on) keeps this server's own hangover.
        endpointing_ms=None if endpointing in (None, "false", "true") else _integer("endpointing", endpointing))


def _flag(name: str, value: str | None) -> bool:
    if value is None or value in ("false", "False"):
        return False
    if value in ("true", "True"):
        return True
    raise BadRequest(f"{name} must be true or false, not {value[:32]!r}")


def _integer(name: str, value: str | None, minimum: int = 0) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 9 or int(value) < minimum:
        raise BadRequest(f"{name} must be an integer of at least {minimum}, not {value[:32]!r}")
    return int(value)


def _room(room: str | None) -> str | None:
    try:
        return None if room is None else check_room(room)
    except ProtocolError as exc:
        raise BadRequest(f"room: {exc.message}") from None


def _speaker(speaker: str | None) -> str | None:
    if speaker is not None and not 0 < len(speaker) <= 64:
        raise BadRequest("speaker must be 1 to 64 characters")
    return speaker


def context_of(query: dict[str, list[str]]) -> str | None:
    """Keyterms and keywords, as the stream's context (the model's prompt): whole terms, in order, while they
    fit in MAX_CONTEXT. A keyword's `:boost` suffix means nothing to our models and is dropped."""
    terms = query.get("keyterm", []) + [k.rsplit(":", 1)[0] if _boosted(k) else k for k in query.get("keywords", [])]
    context = ""
    for term in filter(None, (t.strip() for t in terms)):
        joined = f"{context}, {term}" if context else term
        if len(joined) > MAX_CONTEXT:
            break
        context = joined
    return context or None


def _boosted(keyword: str) -> bool:
    _, sep, boost = keyword.rpartition(":")
    return bool(sep) and boost.lstrip("-").replace(".", "", 1).isdigit()


# -- the handshake --------------------------------------------------------------------------------------------

def handshake_refusal(cfg: AuthConfig, headers, query_string: str) -> Refusal | None:
    """Deepgram refuses at the handshake: 401 for a missing or unknown key, 400 for a query it cannot serve,
    with its JSON error body (and its dg-request-id and dg-error headers). None: go on."""
    query = query_of(query_string)
    verdict = auth.check(cfg, auth.SPEAK, auth.token_from(headers, params(query_string)))
    if verdict == auth.UNAUTHORIZED:
        return refusal(HTTPStatus.UNAUTHORIZED, "INVALID_AUTH", "Invalid credentials.")
    if verdict == auth.FORBIDDEN:
        return refusal(HTTPStatus.FORBIDDEN, "INSUFFICIENT_PERMISSIONS", "This key may not stream audio.")
    try:
        parse_options(query)
    except BadRequest as exc:
        return refusal(HTTPStatus.BAD_REQUEST, "Bad Request", f"Bad Request: {exc}")
    return None


def refusal(status: HTTPStatus, code: str, message: str) -> Refusal:
    request_id = str(uuid.uuid4())
    body = json.dumps({"err_code": code, "err_msg": message, "request_id": request_id}).encode()
    return Refusal(status, body, "application/json",
                   {"dg-request-id": request_id, "dg-error": message.encode("ascii", "replace").decode()})


# -- the stream -----------------------------------------------------------------------------------------------

class Deepgram(Adapter):
    resumable = False  # Deepgram streams cannot resume; a dropped one is flushed into its transcript and room

    def __init__(self, stream: Stream):
        super().__init__(stream)
        self.options = parse_options(query_of(stream.ws.query_string))  # checked at the handshake already
        self._created = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._request_id = ""  # our session id, from `ready`
        self._model: dict = {"uuid": "", "info": {}}
        self._audio_bytes = 0
        self._sha256 = hashlib.sha256()  # of the audio received, as Deepgram's Metadata has it
        self._speaking: set[int] = set()  # segments whose SpeechStarted was sent and whose final was not yet
        self._from_finalize: set[int] = set()  # segments a Finalize closed
        self._closing_from: int | None = None  # segments from here on were flushed by CloseStream

    @property
    def _session(self) -> Session:
        session = self.stream.session
        assert session is not None, "a Deepgram stream starts on connect"
        return session

    # -- client -> session

    async def opened(self) -> None:
        await self.stream.start(self.options.start)  # a Deepgram stream starts on connect: the query is its start

    async def on_text(self, text: str) -> None:
        try:
            msg = _control(text)
        except ProtocolError as exc:
            await self.stream.send(self._error(exc.code, exc.message, original=text))
            return
        kind = msg["type"]
        if kind == "KeepAlive":
            pass  # any frame resets the idle timer (policy.py): nothing else to do
        elif kind == "Finalize":
            first = self._next_segment()
            self._session.finalize()
            self._from_finalize.update(range(first, self._next_segment()))
        elif kind == "CloseStream":
            await self._close_stream()
        elif kind == "Configure":
            await self.stream.send(P.dump(self._configured(msg)))
        else:
            await self.stream.send(self._error(UNKNOWN_TYPE, f"unknown message type {kind[:64]!r}: expected KeepAlive, "
                                                        "Finalize, CloseStream or Configure", original=text))

    async def on_audio(self, data: bytes) -> None:
        if not data:
            await self._close_stream()  # an empty frame: Deepgram's older end-of-stream signal
            return
        try:
            for piece in self._pieces(data):
                self._session.audio(piece)
        except ProtocolError as exc:
            await self.stream.send(self.error_frame(exc.code, exc.message))
            return
        self._audio_bytes += len(data)
        self._sha256.update(data)

    def _pieces(self, data: bytes) -> list[bytes]:
        """Deepgram takes frames of any length; the session takes at most 1 s each: longer ones are cut into
        whole seconds (a byte count that is not a whole number of samples is left whole, to be refused)."""
        second = self.options.start.bytes_per_second
        if len(data) <= second or len(data) % self.options.start.bytes_per_sample:
            return [data]
        return [data[i:i + second] for i in range(0, len(data), second)]

    async def _close_stream(self) -> None:
        """Every open window becomes a final; the finals, then Metadata, are sent; then the policy closes with
        1000 (the session has ended)."""
        self._closing_from = self._next_segment()
        await self._session.stop()

    def _next_segment(self) -> int:
        return self._session.next_segment  # segments below it have their finals on the way

    def _configured(self, msg: dict) -> dict:
        """Configure: our models take keyterms only at connect (as the stream's context); formatting features
        are accepted and, like the query's, have no effect."""
        if msg.get("keyterms") is not None:
            return {"type": "ConfigureFailure", "request_id": self._request_id,
                    "code": "CONFIGURE_KEYTERMS_NOT_SUPPORTED",
                    "description": "this server's models take keyterms only at connect (keyterm=... in the URL)"}
        return {"type": "ConfigureSuccess", "request_id": self._request_id}

    # -- session -> client

    def segmenter_config(self) -> SegmenterConfig:
        cfg = self.stream.cfg.segmenter
        changes: dict[str, Any] = {}
        if self.options.endpointing_ms is not None:  # ms of silence that end an utterance: our hangover
            changes["hangover_ms"] = max(self.options.endpointing_ms, cfg.frame_ms)
        if not (self.options.interim_results or self.options.vad_events or self.options.start.room):
            changes["partial_interval_s"] = cfg.max_window_s + 1  # nobody reads partials: spare the engine
        return dataclasses.replace(cfg, **changes)

    def encode(self, event: Event) -> list[str]:
        if isinstance(event, Ready):
            self._ready(event)
            return []  # Deepgram sends nothing on open
        if isinstance(event, Error):
            return [self.error_frame(event.code, event.message)]
        if isinstance(event, End):
            return [P.dump(self._metadata())]
        if isinstance(event, Renamed):
            return []  # a Deepgram client cannot rename voices: never sent one
        return [P.dump(m) for m in self._caption(event)]

    def error_frame(self, code: str, message: str) -> str:
        return self._error(code, message)

    def _error(self, code: str, description: str, original: str | None = None) -> str:
        """Deepgram's Error message. `variant`: SchemaError for a text message not understood (with the `message`
        it was, shortened), else protocol v1's error code (docs/protocol.md)."""
        frame = {"type": "Error", "variant": "SchemaError" if code in SCHEMA_ERRORS else code,
                 "description": description}
        if original is not None:
            frame["message"] = original[:200]
        return P.dump(frame)

    def _ready(self, ready: Ready) -> None:
        self._request_id = ready.session  # so that a client can fetch /v1/transcripts/ID later
        name, backend = ready.model, ready.backend
        self._model = {"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{backend}/{name}")),
                       "info": {"name": name, "version": "n/a", "arch": backend}}

    def _caption(self, caption: Caption) -> list[dict]:
        segment, final = caption.segment, isinstance(caption, Final)
        out = []
        if segment not in self._speaking:  # the first caption of a window: its speech started at its start
            self._speaking.add(segment)
            if self.options.vad_events:
                out.append({"type": "SpeechStarted", "channel": CHANNEL, "timestamp": caption.start})
        if final:
            self._speaking.discard(segment)
        if final or self.options.interim_results:
            out.append(self._results(caption, final))
        if final and caption.text and self.options.utterance_end_ms:
            out.append({"type": "UtteranceEnd", "channel": CHANNEL, "last_word_end": caption.end})
        return out

    def _results(self, caption: Caption, final: bool) -> dict:
        segment, text = caption.segment, caption.text
        words = caption.words if isinstance(caption, Final) else ()  # interim results carry no words
        from_finalize = final and segment in self._from_finalize
        self._from_finalize.discard(segment)
        flushed = from_finalize or (self._closing_from is not None and segment >= self._closing_from)
        return {
            "type": "Results", "channel_index": CHANNEL,
            "duration": round(caption.end - caption.start, 6), "start": caption.start,
            "is_final": final,
            "speech_final": final and not flushed,  # a final is a window the VAD closed, unless a flush did
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": text, "confidence": _confidence(caption),
                                          "words": [deepgram_word(w) for w in words]}]},
            "metadata": {"request_id": self._request_id, "model_info": self._model["info"],
                         "model_uuid": self._model["uuid"]},
        }

    def _metadata(self) -> dict:
        bps = self.options.start.bytes_per_second
        return {"type": "Metadata", "transaction_key": "deprecated", "request_id": self._request_id,
                "sha256": self._sha256.hexdigest(), "created": self._created,
                "duration": round(self._audio_bytes / bps, 6), "channels": 1,
                "models": [self._model["uuid"]], "model_info": {self._model["uuid"]: self._model["info"]}}


def deepgram_word(word: Word) -> dict:
    """A word as Deepgram sends it: `word` bare and lower case, `punctuated_word` as written; with diarization,
    `speaker` an integer from 0 ("Speaker 1" is 0) and `speaker_confidence`."""
    bare = "".join(c for c in word.word if c.isalnum() or c in "'-").lower() or word.word.lower()
    out: dict = {"word": bare, "start": word.start, "end": word.end,
                 "confidence": 1.0 if word.probability is None else word.probability, "punctuated_word": word.word}
    if word.speaker is not None:
        out["speaker"] = speaker_number(word.speaker)
        out["speaker_confidence"] = 1.0 if word.speaker_confidence is None else word.speaker_confidence
    return out


def speaker_number(label: str) -> int:
    """Deepgram's speaker integer for one of our labels: "Speaker 1" -> 0."""
    return int(label.rsplit(" ", 1)[-1]) - 1


def _confidence(caption: Caption) -> float:
    """The mean of the words' probabilities, as a transcript's confidence; where they are not known (interim
    results, estimated words) 1.0 for any text and 0.0 for none, so that clients filtering on it keep our
    results."""
    known = [w.probability for w in caption.words if w.probability is not None] if isinstance(caption, Final) else []
    if known:
        return round(sum(known) / len(known), 4)
    return 1.0 if caption.text else 0.0


def _control(text: str) -> dict:
    """One client text frame -> a JSON object with a string `type`; raises ProtocolError."""
    msg = P.load_object(text)
    if not isinstance(msg.get("type"), str):
        raise ProtocolError(BAD_MESSAGE, 'a message must be a JSON object with a string "type"')
    return msg
