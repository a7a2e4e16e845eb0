"""STAND-INS for the caption services, for tests: local aiohttp servers on free 127.0.0.1 ports that enforce each
documented contract (../shared/notes/caption-outputs.md; server/outputs/contracts.py). They are not Zoom,
YouTube or Teams: no machine here reaches those; these answer as their documents say they do.

- ZoomStandin, `/closedcaption?id=…&signature=…`: POST only (405), `seq` and `lang` present (403 without seq or a
  signature part, as Zoom), `Content-Type: text/plain` with UTF-8 text. seq must be the last accepted + 1; the
  same seq with the same text again is a retry: answered 200 and counted in `repeats`, not accepted twice; any
  other seq is a violation (400). `GET /closedcaption/seq` with the same query answers the last accepted seq.
- YouTubeStandin, `/closedcaption?cid=KEY&seq=N`: `cid` must be the key (403), seq must rise, `Content-Type`
  exactly `text/plain`; the body must parse: per caption a `YYYY-MM-DDTHH:MM:SS.mmm` line (optionally `
  region:…`) within 60 s of the stand-in's clock, then a non-empty text line, and a trailing newline.
- TeamsStandin, `/cartcaption?meetingid=…&token=…`: POST, meetingid present (400), token right (401), UTF-8
  `text/plain`, a non-empty body.
- WebhookStandin, `/hook`: JSON with the final's fields and `X-Captions-Signature: t=…,v1=…` valid for its
  secret and at most 300 s old (401); seq must be the last accepted + 1 (a repeat of the last is a retry).

Each records what it accepted in `accepted` (dicts, in order), answers a contract violation with 4xx and keeps
its reason in `violations` (a test asserts none), and counts every request in `calls`. Faults for the next
caption posts: `fail_next(status, times)`, `hang_next(times)` (accept the connection, never answer),
`refuse(status)` (every post from now, e.g. 403 for good). `await s.accepted_count(n)` waits on an event.
`restart()` stops and starts it on the same port, keeping what it accepted (the service outlives our sender).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections import deque
from datetime import datetime, timezone

from aiohttp import web

YOUTUBE_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})(?: region:\S+)?$")


class Standin:
    path = "/"

    def __init__(self) -> None:
        self.port = 0
        self.accepted: list[dict] = []
        self.violations: list[str] = []
        self.calls = 0
        self.repeats = 0
        self._faults: deque[tuple[str, int]] = deque()
        self._refuse: int | None = None
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self._changed = asyncio.Event()

    # -- control -----------------------------------------------------------------------------------------------

    def fail_next(self, status: int, times: int = 1) -> None:
        self._faults.extend([("status", status)] * times)

    def hang_next(self, times: int = 1) -> None:
        self._faults.extend([("hang", 0)] * times)

    def refuse(self, status: int | None = 403) -> None:
        self._refuse = status

    async def accepted_count(self, n: int, timeout: float = 10.0) -> list[dict]:
        async def reached() -> None:
            while len(self.accepted) < n:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(reached(), timeout)
        return self.accepted

    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def start(self) -> Standin:
        app = web.Application()
        app.router.add_route("*", self.path, self._entry)
        self.routes(app)
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._release.set()  # hung handlers return
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Standin:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- handling ----------------------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        pass

    async def _entry(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        if request.method == "POST":
            if self._faults:
                what, status = self._faults.popleft()
                if what == "hang":
                    await self._release.wait()
                    return web.Response(status=503)
                return web.Response(status=status, text="stand-in fault")
            if self._refuse is not None:
                return web.Response(status=self._refuse, text="stand-in refuses")
        try:
            return await self.handle(request)
        finally:
            self._changed.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def violation(self, status: int, why: str) -> web.Response:
        self.violations.append(why)
        return web.Response(status=status, text=why)

    async def plain_text(self, request: web.Request, exact: bool = False) -> str | None:
        ctype = request.headers.get("Content-Type", "")
        if (ctype != "text/plain") if exact else (ctype.split(";")[0].strip() != "text/plain"):
            return None
        try:
            return (await request.read()).decode("utf-8")
        except UnicodeDecodeError:
            return None


class ZoomStandin(Standin):
    path = "/closedcaption"

    def __init__(self, meeting: str = "200610693", signature: str = "nYtXsecret") -> None:
        super().__init__()
        self.meeting, self.signature = meeting, signature
        self.last_seq = 0
        self.langs: set[str] = set()

    def url(self) -> str:
        """The caption URL a host copies from Zoom (its query is the credential)."""
        return (f"{self.base()}?id={self.meeting}&ns=GZHkEA%3D%3D&expire=86400&spparams=id%2Cns%2Cexpire"
                f"&signature={self.signature}")

    def routes(self, app: web.Application) -> None:
        app.router.add_get(self.path + "/seq", self._seq)

    def _signed(self, request: web.Request) -> bool:
        q = request.query
        return q.get("id") == self.meeting and q.get("signature") == self.signature and "ns" in q

    async def _seq(self, request: web.Request) -> web.Response:
        self.calls += 1
        if not self._signed(request):
            return self.violation(403, "seq query without the meeting's signature")
        return web.Response(text=str(self.last_seq))

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return self.violation(405, f"{request.method} is not a POST")
        if not self._signed(request) or not request.query.get("seq", "").isdigit():
            return self.violation(403, "missing seq or a signature part")
        if not request.query.get("lang"):
            return self.violation(400, "missing lang")
        text = await self.plain_text(request)
        if text is None:
            return self.violation(400, "body is not UTF-8 text/plain")
        seq = int(request.query["seq"])
        if self.accepted and seq == self.last_seq and text == self.accepted[-1]["text"]:
            self.repeats += 1  # a retry of the last caption: not shown again
            return web.Response(text="ok")
        if seq != self.last_seq + 1:
            return self.violation(400, f"seq {seq} after {self.last_seq}")
        self.last_seq = seq
        self.langs.add(request.query["lang"])
        self.accepted.append({"seq": seq, "text": text, "lang": request.query["lang"],
                              "raw_query": request.rel_url.raw_query_string})
        return web.Response(text="ok")


class YouTubeStandin(Standin):
    path = "/closedcaption"

    def __init__(self, key: str = "abcd-efgh-ijkl-mnop", skew_s: float = 60.0) -> None:
        super().__init__()
        self.key, self.skew_s = key, skew_s
        self.last_seq = 0
        self.posts: list[list[dict]] = []  # each accepted post's captions

    def url(self) -> str:
        return f"{self.base()}?cid={self.key}"

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return self.violation(405, "not a POST")
        if request.query.get("cid") != self.key:
            return self.violation(403, "wrong stream key")
        seq = request.query.get("seq", "")
        if not seq.isdigit() or int(seq) <= self.last_seq:
            return self.violation(400, f"seq {seq!r} does not rise from {self.last_seq}")
        body = await self.plain_text(request, exact=True)
        if body is None:
            return self.violation(400, "Content-Type is not exactly text/plain, or the body is not UTF-8")
        if not body.endswith("\n"):
            return self.violation(400, "no trailing newline")
        lines = body[:-1].split("\n")
        if len(lines) % 2:
            return self.violation(400, "a timestamp without its text line")
        captions = []
        for stamp, text in zip(lines[::2], lines[1::2]):
            m = YOUTUBE_TIME.match(stamp)
            if not m:
                return self.violation(400, f"bad timestamp line {stamp!r}")
            t = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()
            if abs(t - time.time()) > self.skew_s:
                return self.violation(400, f"timestamp {stamp} is more than {self.skew_s:g} s off")
            if not text.strip():
                return self.violation(400, "empty caption text")
            captions.append({"time": m.group(1), "text": text, "seq": int(seq)})
        self.last_seq = int(seq)
        self.posts.append(captions)
        self.accepted.extend(captions)
        return web.Response(text=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3])


class TeamsStandin(Standin):
    path = "/cartcaption"

    def __init__(self, meeting: str = "04751eac-30e6-47d9", token: str = "gjs44ra") -> None:
        super().__init__()
        self.meeting, self.token = meeting, token

    def url(self) -> str:
        return f"{self.base()}?meetingid={self.meeting}&token={self.token}"

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return self.violation(405, "not a POST")
        if request.query.get("meetingid") != self.meeting:
            return self.violation(400, "meetingid missing")
        if request.query.get("token") != self.token:
            return self.violation(401, "bad or expired token")
        text = await self.plain_text(request)
        if not text or not text.strip():
            return self.violation(400, "body is not UTF-8 text/plain captions")
        self.accepted.append({"text": text, "lang": request.query.get("lang"), "query": dict(request.query)})
        return web.Response(text="ok")


class WebhookStandin(Standin):
    path = "/hook"
    FIELDS = ("type", "segment", "start", "end", "text", "words", "speaker", "session", "room", "seq")

    def __init__(self, secret: str = "whsec-test", tolerance_s: float = 300.0) -> None:
        super().__init__()
        self.secret, self.tolerance_s = secret, tolerance_s
        self.raw: list[tuple[dict[str, str], bytes]] = []  # accepted requests' headers and bodies, for the test

    def url(self) -> str:
        return self.base()

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return self.violation(405, "not a POST")
        body = await request.read()
        parts = dict(p.split("=", 1) for p in request.headers.get("X-Captions-Signature", "").split(",") if "=" in p)
        if not parts.get("t", "").isdigit() or abs(time.time() - int(parts["t"])) > self.tolerance_s:
            return self.violation(401, "missing or stale signature timestamp")
        mac = hmac.new(self.secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, parts.get("v1", "")):
            return self.violation(401, "bad signature")
        try:
            record = json.loads(body)
        except ValueError:
            return self.violation(400, "not JSON")
        if request.headers.get("Content-Type", "").split(";")[0] != "application/json" or not all(
                k in record for k in self.FIELDS):
            return self.violation(400, "not a final record")
        last = self.accepted[-1]["seq"] if self.accepted else 0
        if record["seq"] == last:
            self.repeats += 1
            return web.Response(status=204)
        if record["seq"] != last + 1:
            return self.violation(400, f"seq {record['seq']} after {last}")
        self.accepted.append(record)
        self.raw.append((dict(request.headers), body))
        return web.Response(status=204)
