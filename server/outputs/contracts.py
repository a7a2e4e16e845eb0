"""Each service's caption contract: a batch of captions -> one HTTP request, and what its answers mean.

- Zoom (support article 115002212983): POST to the caption URL + `&seq=N&lang=L`, body the caption text only,
  `text/plain; charset=utf-8`. seq rises by exactly one per new caption and stays the same on a retry; `GET
  <path>/seq` with the same query answers the seq of the last successful post (a sender resumes from it). Zoom
  asks to retry 400 (meeting not started), 403 (seq or a signature part missing) and 405 as well as 408 and 5xx:
  we do, "within limits" (see Verdict.LIMITED: the sender fails the output after a run of such answers).
- YouTube Live (`closedCaptionsIngestionUrl`): POST to the URL + `&seq=N`, seq +1 per post, `text/plain` (no
  charset); the body is, per caption, its time `YYYY-MM-DDTHH:MM:SS.mmm` (UTC, when the final was made) on one
  line and its text on the next, with a trailing newline. Several captions due at once go in one post.
- Teams CART (Microsoft's "Send real-time captions API"): POST to the CART URL as given ("you don't need to modify
  the CART URL"; its query is meetingid and token), body the caption text only, `text/plain; charset=utf-8`. The
  API documents no `seq` and none is sent; its example request carries `lang=en-us` in the query, so `lang` is
  added when the URL has none. Each POST is a new caption line (Microsoft suggests 80-120 characters). Errors:
  400 bad request, 401 bad or expired token (the host must make a new link: not retried), 404 meeting not found
  or not started (retried within limits, as Zoom's 400), 500.
- Webhook (ours): POST of the final as JSON, the v1 final record (type, segment, start, end, text, words,
  speaker, session) plus `room` and `seq` (+1 per caption, the same on a retry: a receiver drops repeats by it),
  signed as Stripe signs: header `X-Captions-Signature: t=TIMESTAMP,v1=HEX`, HEX the hex HMAC-SHA256, keyed with
  the output's secret, of `TIMESTAMP + "." + body` (TIMESTAMP: Unix seconds when sent; each attempt signs anew).
  A receiver recomputes it over the raw body, compares in constant time and refuses old timestamps (replays).

With a diarized speaker's name on a caption's words, the plain-text services get "Name: text" (a new "Name: "
wherever the voice changes), as a human captioner marks a change of speaker.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from caption_formats.cues import runs

from ..backends.transcript import Word
from ..core.events import Final
from ..core.words import word_record

KINDS = ("zoom", "youtube", "teams", "webhook")
SIGNATURE_HEADER = "X-Captions-Signature"


@dataclass(frozen=True)
class OutgoingCaption:
    """A room's final, as outputs deliver it."""

    room: str
    session: str | None
    segment: int
    start: float
    end: float
    text: str
    speaker: str | None
    made_at: float  # time.time() when the final was made: its age decides whether it is still worth sending
    words: tuple[Word, ...] = ()

    @classmethod
    def of(cls, room: str, final: Final, made_at: float) -> "OutgoingCaption":
        return cls(room, final.session, final.segment, final.start, final.end, final.text, final.speaker, made_at,
                   final.words)


@dataclass(frozen=True)
class Request:
    method: str
    url: str  # a credential: never logged
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # timeouts, 408, 429, 5xx
    LIMITED = "retry within limits"  # a 4xx the service asks to retry (Zoom's 400/403/405, Teams' 404)
    FAIL = "fail"  # any other answer: the output cannot work as given


def add_query(url: str, **params: object) -> str:
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return urlunsplit(parts._replace(query=query))


def spoken_text(caption: OutgoingCaption) -> str:
    """The caption on one line, "Name: " before each voice's words, as the room page and the exports show them
    (caption_formats.cues.runs): a word's voice is its diarized name, else the stream's speaker label in the room."""
    # A stream that gave no speaker label is labelled with its session id in the room: no name for an audience.
    label = caption.speaker if caption.speaker != caption.session else None
    words = [{"word": w.word, "start": w.start, "end": w.end, "name": w.name} for w in caption.words]
    record = {"text": caption.text, "speaker": label, "words": words}
    said = [(run.voice, " ".join(t.text for t in run.tokens)) for run in runs(record)]
    return " ".join(f"{voice}: {text}" if voice else text for voice, text in said)


def _common_verdict(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.OK
    if status in (408, 429) or status >= 500:
        return Verdict.RETRY
    return Verdict.FAIL  # redirects (never followed) included


class Contract:
    kind = ""
    batches = False  # several due captions in one request
    resumes = False  # asks the service for the last seq before the first post

    def __init__(self, url: str, lang: str = "en-US", secret: str | None = None):
        self.url, self.lang, self.secret = url, lang, secret

    def request(self, captions: Sequence[OutgoingCaption], seq: int) -> Request:
        raise NotImplementedError

    def verdict(self, status: int) -> Verdict:
        return _common_verdict(status)

    def resume_request(self) -> Request | None:
        return None

    def resumed_seq(self, body: bytes) -> int | None:
        """The last seq the service has, from the resume answer's body; None: it has none."""
        return None


class ZoomContract(Contract):
    kind = "zoom"
    resumes = True

    def request(self, captions: Sequence[OutgoingCaption], seq: int) -> Request:
        (caption,) = captions
        return Request("POST", add_query(self.url, seq=seq, lang=self.lang),
                       {"Content-Type": "text/plain; charset=utf-8"}, spoken_text(caption).encode())

    def verdict(self, status: int) -> Verdict:
        return Verdict.LIMITED if status in (400, 403, 405) else _common_verdict(status)

    def resume_request(self) -> Request:
        parts = urlsplit(self.url)
        return Request("GET", urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/seq")))

    def resumed_seq(self, body: bytes) -> int | None:
        text = body.decode("utf-8", "replace").strip()
        return int(text) if text.isdigit() else None


class YouTubeContract(Contract):
    kind = "youtube"
    batches = True

    def request(self, captions: Sequence[OutgoingCaption], seq: int) -> Request:
        lines = []
        for c in captions:
            lines.append(youtube_time(c.made_at))
            lines.append(spoken_text(c))
        return Request("POST", add_query(self.url, seq=seq), {"Content-Type": "text/plain"},
                       ("\n".join(lines) + "\n").encode())


def youtube_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


class TeamsContract(Contract):
    kind = "teams"

    def request(self, captions: Sequence[OutgoingCaption], seq: int) -> Request:
        (caption,) = captions
        has_lang = any(k.lower() == "lang" for k, _ in parse_qsl(urlsplit(self.url).query))
        url = self.url if has_lang else add_query(self.url, lang=self.lang.lower())
        return Request("POST", url, {"Content-Type": "text/plain; charset=utf-8"}, spoken_text(caption).encode())

    def verdict(self, status: int) -> Verdict:
        return Verdict.LIMITED if status == 404 else _common_verdict(status)


class WebhookContract(Contract):
    kind = "webhook"

    def request(self, captions: Sequence[OutgoingCaption], seq: int) -> Request:
        (caption,) = captions
        body = json.dumps(final_record(caption, seq), ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body, int(time.time()))
        return Request("POST", self.url, headers, body)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def final_record(caption: OutgoingCaption, seq: int) -> dict:
    """The v1 final record's shape (server/delivery/records.py), with the room and the output's seq."""
    return {"type": "final", "segment": caption.segment, "start": caption.start, "end": caption.end,
            "text": caption.text, "words": [word_record(w) for w in caption.words], "speaker": caption.speaker,
            "session": caption.session,
            "room": caption.room, "seq": seq}


CONTRACTS: dict[str, type[Contract]] = {c.kind: c for c in (ZoomContract, YouTubeContract, TeamsContract,
                                                              WebhookContract)}


def make_contract(kind: str, url: str, lang: str = "en-US", secret: str | None = None) -> Contract:
    if kind not in CONTRACTS:
        raise ValueError(f"unknown output kind {kind!r} (one of {', '.join(KINDS)})")
    if kind == "webhook" and not secret:
        raise ValueError("a webhook output needs a secret (its signature key)")
    return CONTRACTS[kind](url, lang, secret)
