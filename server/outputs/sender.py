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

With replicas (shared.py) a sender is made with the output's shared progress (`resume`) and a `journal`: each
caption then carries a tag (its transcript entry id); the sender records "pending" before each post and "done"
after it, and stops at once (`lost`) when a journal write answers that the lease is gone. A post a previous
holder left pending is sent first, alone, with its seq: Zoom's `…/seq` says whether it landed (then it is counted,
not sent); a webhook gets the same seq (its receiver drops a repeat); YouTube and Teams cannot tell a retry from
a new caption, so for them it is sent again as new (at least once, on a kill mid-post).
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
from .shared import Journal, Progress

log = logging.getLogger(__name__)

BODY_CAP = 4096  # bytes of an answer read (the seq answer is a number; an error page is not needed whole)
MAX_BATCH = 20  # captions in one post, for services that take several
SAME_SEQ_IS_A_RETRY = ("zoom", "webhook")  # services that take a repeated seq as a retry, not a new caption


class _Lost(Exception):
    """The journal answered that this replica no longer holds the output's lease."""


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
                 resolve: Resolve | None = None, clock: Callable[[], float] = time.time,
                 journal: Journal | None = None, resume: Progress | None = None):
        self.target: ParsedTarget = check_url(url, kind, allowed_hosts)  # RefusedURL: the API's 400
        self.contract: Contract = make_contract(kind, self.target.url, lang, secret)
        self.settings = settings
        self._allowed = allowed_for(kind, allowed_hosts)
        self._resolve = resolve
        self._clock = clock
        self._queue: deque[tuple[OutgoingCaption, str | None]] = deque()  # with its tag (a shared entry id)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._seq: int | None = None  # the next seq to send; None until known (Zoom: after resuming)
        self._client_errors = 0
        self.state = "ok"
        self.delivered = self.retried = self.dropped = 0
        self.last_error: str | None = None
        self.last_seq: int | None = None  # the seq of the last request the service accepted
        self.lost = False  # the lease went elsewhere: this sender stopped
        self._journal = journal
        self._cursor: str | None = None  # the last tag finished with (delivered or dropped)
        self._redo: tuple[int, list[str]] | None = None  # a post a previous holder left pending: (seq, tags)
        if resume is not None:
            self.state = resume.state
            self.delivered, self.retried, self.dropped = resume.delivered, resume.retried, resume.dropped
            self.last_error, self.last_seq, self._cursor = resume.last_error, resume.last_seq, resume.cursor
            if not self.contract.resumes:
                self._seq = resume.next_seq
            if resume.pending_seq is not None and resume.pending:
                self._redo = (resume.pending_seq, list(resume.pending))

    # -- the room's side ---------------------------------------------------------------------------------------

    def offer(self, caption: OutgoingCaption, tag: str | None = None) -> None:
        if not caption.text.strip():
            return  # a final with no words (silence, a failed window): nothing to show
        if self.state == "failed":
            self.dropped += 1
            return
        if len(self._queue) >= self.settings.queue:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((caption, tag))
        self._wake.set()

    def describe(self) -> dict:
        return {"kind": self.contract.kind, "host": self.target.host, "state": self.state,
                "delivered": self.delivered, "retried": self.retried, "dropped": self.dropped,
                "queued": len(self._queue), "last_error": self.last_error, "last_seq": self.last_seq}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._allowed, self._resolve), limit=1)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                              timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s))
        if not self.contract.resumes and self._seq is None:
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

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def wait_stopped(self) -> None:
        """Returns when the delivering task has ended (the output failed, or was closed)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    # -- delivery ----------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self.state != "failed":
                while not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                batch = self._take()
                if batch:
                    await self._deliver(batch)
                else:
                    await self._record()  # only drops: the shared cursor goes past them
        except _Lost:
            self.lost = True
            log.info("output %s %s: lease lost; delivery stopped here", self.contract.kind, self.target.redacted)

    def _take(self) -> list[tuple[OutgoingCaption, str | None]]:
        """The next caption(s) to send, those past max age dropped on the way. A post a previous holder left
        pending goes first and alone, as it was."""
        redo = set(self._redo[1]) if self._redo else set()
        if redo and self._queue and self._queue[0][1] not in redo:
            self._redo, redo = None, set()  # its entries are not next (trimmed away): nothing to redo
        limit = len(redo) if redo else MAX_BATCH if self.contract.batches else 1
        taken: list[tuple[OutgoingCaption, str | None]] = []
        while self._queue and len(taken) < limit and (not redo or self._queue[0][1] in redo):
            item = self._queue.popleft()
            if self._fresh(item[0]):
                taken.append(item)
            else:
                self.dropped += 1
                self._cursor = item[1] or self._cursor
        return taken

    def _fresh(self, caption: OutgoingCaption) -> bool:
        return self._clock() - caption.made_at <= self.settings.max_age_s

    async def _deliver(self, batch: list[tuple[OutgoingCaption, str | None]]) -> None:
        tries = 0
        redo, self._redo = self._redo, None
        if redo is not None and not self.contract.resumes:  # Zoom asks instead (below)
            # a webhook receiver drops it if it landed; YouTube would refuse a seq it has: a new one
            self._seq = redo[0] if self.contract.kind in SAME_SEQ_IS_A_RETRY else redo[0] + 1
        while True:
            fresh = [item for item in batch if self._fresh(item[0])]
            stale_tag = batch[-1][1]
            self.dropped += len(batch) - len(fresh)
            batch = fresh
            if not batch:  # all past max age: the cursor goes past them (older ones never follow newer ones)
                self._cursor = stale_tag or self._cursor
                await self._record()
                return
            captions, tags = [c for c, _ in batch], [t for _, t in batch]
            resuming = self._seq is None
            if resuming:
                request = self.contract.resume_request()
            else:
                request = self.contract.request(captions, self._seq or 0)
                await self._record(pending=(self._seq or 0, tags))  # before the post: a new holder redoes it
            assert request is not None
            verdict, status, body, error = await self._attempt(request)
            if verdict is Verdict.OK:
                self._client_errors = 0
                self.state = "ok"
                if resuming:
                    last = self.contract.resumed_seq(body)
                    self._seq = (last or 0) + 1
                    self.last_seq = last
                    if redo is not None and last is not None and last >= redo[0]:
                        self._done(batch, redo[0])  # the previous holder's post landed: counted, not resent
                        await self._record()
                        return
                    continue  # the seq is known; now the batch itself
                self._done(batch, self._seq or 0)
                self._seq = (self._seq or 0) + 1
                await self._record()
                return
            self.last_error = error
            if verdict is Verdict.LIMITED:
                self._client_errors += 1
                if self._client_errors >= self.settings.client_error_limit:
                    verdict = Verdict.FAIL
                    self.last_error = f"{error} ({self._client_errors} times in a row)"
            if verdict is Verdict.FAIL:
                self._fail(len(batch))
                await self._record()
                return
            if self.state != "retrying":
                log.warning("output %s %s: retrying: %s", self.contract.kind, self.target.redacted, self.last_error)
            self.state = "retrying"
            self.retried += 1
            await self._record(pending=None if resuming else (self._seq or 0, tags))
            await asyncio.sleep(min(self.settings.backoff_s * 2 ** tries, self.settings.backoff_max_s))
            tries += 1

    def _done(self, batch: list[tuple[OutgoingCaption, str | None]], seq: int) -> None:
        self.delivered += len(batch)
        self.last_seq = seq
        self._cursor = batch[-1][1] or self._cursor

    async def _record(self, pending: tuple[int, list[str | None]] | None = None) -> None:
        """The progress, to the shared journal (with replicas); raises _Lost when the lease is gone."""
        if self._journal is None:
            return
        progress = Progress(state=self.state, delivered=self.delivered, retried=self.retried, dropped=self.dropped,
                            queued=len(self._queue), last_error=self.last_error, last_seq=self.last_seq,
                            next_seq=self._seq, cursor=self._cursor or "0-0", pending_seq=pending[0] if pending else None,
                            pending=[t for t in pending[1] if t] if pending else [])
        if not await self._journal(progress):
            raise _Lost

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
