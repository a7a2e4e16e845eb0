"""One output's delivery: its room's finals sent to one service, in order, each once, or dropped and counted.

`offer()` never blocks and never slows the room: it appends to a bounded queue (when full, the oldest caption is
dropped and counted). One task sends: the service's contract turns the caption (or, where the service takes
several, all those due) into a request; every request has a timeout, no redirect is followed and at most
BODY_CAP bytes of an answer are read. Timeouts, connection errors, 408, 429 and 5xx are retried with exponential
backoff (capped); so are the 4xx a service asks to retry (Zoom's 400/403/405, Teams' 404), but only
`client_error_limit` times in a row: a link that is wrong or expired would never work, and past that many such
answers with no success between them the output fails. A retry resends the same seq. Any other answer fails
the output: state `failed`, shown, it stops, and what was queued (and whatever comes later) is counted dropped.

A caption older than `max_age_s` (from when its final was made) when its turn comes, or while it is being
retried, is dropped and counted: a caption seconds late is noise on a meeting's screen, not help.

Zoom: before its first post the sender asks `…/closedcaption/seq` for the last seq the meeting has and goes on
from the next (a restarted server neither repeats nor skips a seq); that question is retried like a post.

`describe()` is what may be shown: kind, host, state, counts, last error, last seq. Never the URL (a
credential); errors name the URL only in its redacted form.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass

import aiohttp
from yarl import URL

from .contracts import Contract, OutgoingCaption, Request, Verdict, make_contract
from .guard import GuardedResolver, ParsedTarget, RefusedURL, Resolve, allowed_for, check_url, redact

log = logging.getLogger(__name__)

BODY_CAP = 4096  # bytes of an answer read (the seq answer is a number; an error page is not needed whole)
MAX_BATCH = 20  # captions in one post, for services that take several


@dataclass(frozen=True)
class OutputSettings:
    max_age_s: float = 15.0
    queue: int = 1000
    timeout_s: float = 10.0  # per request, connecting included
    backoff_s: float = 0.5  # first retry's wait; doubles per retry of the same caption
    backoff_max_s: float = 8.0
    client_error_limit: int = 10  # retryable 4xx answers in a row before the output fails


class OutputSender:
    """See the module docstring. `start()` begins delivering; `close()` stops at once."""

    def __init__(self, kind: str, url: str, *, lang: str = "en-US", secret: str | None = None,
                 allowed_hosts: Collection[str] | None = None, settings: OutputSettings = OutputSettings(),
                 resolve: Resolve | None = None, clock: Callable[[], float] = time.time):
        self.target: ParsedTarget = check_url(url, kind, allowed_hosts)  # RefusedURL: the API's 400
        self.contract: Contract = make_contract(kind, self.target.url, lang, secret)
        self.settings = settings
        self._allowed = allowed_for(kind, allowed_hosts)
        self._resolve = resolve
        self._clock = clock
        self._queue: deque[OutgoingCaption] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._seq: int | None = None  # the next seq to send; None until known (Zoom: after resuming)
        self._client_errors = 0
        self.state = "ok"
        self.delivered = self.retried = self.dropped = 0
        self.last_error: str | None = None
        self.last_seq: int | None = None  # the seq of the last request the service accepted

    # -- the room's side ---------------------------------------------------------------------------------------

    def offer(self, caption: OutgoingCaption) -> None:
        if not caption.text.strip():
            return  # a final with no words (silence, a failed window): nothing to show
        if self.state == "failed":
            self.dropped += 1
            return
        if len(self._queue) >= self.settings.queue:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(caption)
        self._wake.set()

    def describe(self) -> dict:
        return {"kind": self.contract.kind, "host": self.target.host, "state": self.state,
                "delivered": self.delivered, "retried": self.retried, "dropped": self.dropped,
                "queued": len(self._queue), "last_error": self.last_error, "last_seq": self.last_seq}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._allowed, self._resolve), limit=1)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                              timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s))
        if not self.contract.resumes:
            self._seq = 1
        self._task = asyncio.create_task(self._run(), name=f"output {self.contract.kind} {self.target.host}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wait_stopped(self) -> None:
        """Returns when the delivering task has ended (the output failed, or was closed)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    # -- delivery ----------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while self.state != "failed":
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            if batch:
                await self._deliver(batch)

    def _take(self) -> list[OutgoingCaption]:
        """The next caption(s) to send, those past max age dropped on the way."""
        taken: list[OutgoingCaption] = []
        limit = MAX_BATCH if self.contract.batches else 1
        while self._queue and len(taken) < limit:
            caption = self._queue.popleft()
            if self._fresh(caption):
                taken.append(caption)
            else:
                self.dropped += 1
        return taken

    def _fresh(self, caption: OutgoingCaption) -> bool:
        return self._clock() - caption.made_at <= self.settings.max_age_s

    async def _deliver(self, batch: list[OutgoingCaption]) -> None:
        tries = 0
        while True:
            fresh = [c for c in batch if self._fresh(c)]
            self.dropped += len(batch) - len(fresh)
            batch = fresh
            if not batch:
                return
            resuming = self._seq is None
            request = self.contract.resume_request() if resuming else self.contract.request(batch, self._seq or 0)
            assert request is not None
            verdict, status, body, error = await self._attempt(request)
            if verdict is Verdict.OK:
                self._client_errors = 0
                self.state = "ok"
                if resuming:
                    last = self.contract.resumed_seq(body)
                    self._seq = (last or 0) + 1
                    self.last_seq = last
                    continue  # the seq is known; now the batch itself
                self.delivered += len(batch)
                self.last_seq = self._seq
                self._seq = (self._seq or 0) + 1
                return
            self.last_error = error
            if verdict is Verdict.LIMITED:
                self._client_errors += 1
                if self._client_errors >= self.settings.client_error_limit:
                    verdict = Verdict.FAIL
                    self.last_error = f"{error} ({self._client_errors} times in a row)"
            if verdict is Verdict.FAIL:
                self._fail(len(batch))
                return
            if self.state != "retrying":
                log.warning("output %s %s: retrying: %s", self.contract.kind, self.target.redacted, self.last_error)
            self.state = "retrying"
            self.retried += 1
            await asyncio.sleep(min(self.settings.backoff_s * 2 ** tries, self.settings.backoff_max_s))
            tries += 1

    async def _attempt(self, request: Request) -> tuple[Verdict, int | None, bytes, str | None]:
        """One request: (verdict, status, the answer's first BODY_CAP bytes, the error to show)."""
        assert self._session is not None
        what = "resume" if request.method == "GET" else "post"
        try:
            # encoded=True: the URL goes out byte for byte (re-quoting would change what Zoom's signature covers)
            async with self._session.request(request.method, URL(request.url, encoded=True), headers=request.headers,
                                             data=request.body or None, allow_redirects=False) as response:
                body = await response.content.read(BODY_CAP)
                status = response.status
        except RefusedURL as e:  # the name now resolves somewhere not allowed
            return Verdict.FAIL, None, b"", f"{what} refused: {e}"
        except asyncio.TimeoutError:
            return Verdict.RETRY, None, b"", f"{what}: no answer within {self.settings.timeout_s:g} s"
        except aiohttp.ClientError as e:
            cause = e.__cause__ if isinstance(e.__cause__, RefusedURL) else None
            if cause is not None:
                return Verdict.FAIL, None, b"", f"{what} refused: {cause}"
            return Verdict.RETRY, None, b"", f"{what}: {type(e).__name__} talking to {self.target.host}"
        verdict = self.contract.verdict(status)
        if verdict is Verdict.OK:
            return verdict, status, body, None
        detail = body[:200].decode("utf-8", "replace").strip()
        detail = self._scrub(detail)
        return verdict, status, body, f"{what}: HTTP {status}" + (f" ({detail})" if detail else "")

    def _scrub(self, text: str) -> str:
        """The answer's text without the URL's query, should a service echo it back."""
        query = self.target.url.partition("?")[2]
        for secret in filter(None, [self.target.url, query, *query.split("&")]):
            text = text.replace(secret, "…")
        return text

    def _fail(self, in_hand: int) -> None:
        self.state = "failed"
        self.dropped += in_hand + len(self._queue)
        self._queue.clear()
        log.warning("output %s %s failed: %s", self.contract.kind, redact(self.target.url), self.last_error)
