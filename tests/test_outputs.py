"""Caption outputs (server/outputs/) against local stand-ins that enforce each service's documented contract
(tests/support/caption_standins.py: stand-ins, not the services): real HTTP over loopback, aiohttp's real client.
Backoffs and timeouts are set small; waits are on the stand-in's events, not sleeps."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone

import pytest

from server.backends.transcript import Word
from server.outputs.contracts import OutgoingCaption, YouTubeContract, spoken_text
from server.outputs.guard import RefusedURL, check_resolved, check_url, redact
from server.outputs.sender import OutputSender, OutputSettings
from tests.support.caption_standins import TeamsStandin, WebhookStandin, YouTubeStandin, ZoomStandin
from tests.support.waits import until

LOCAL = ("127.0.0.1",)
FAST = OutputSettings(timeout_s=0.5, backoff_s=0.01, backoff_max_s=0.05)


def caption(n: int, text: str | None = None, age: float = 0.0, words: tuple[Word, ...] = (),
            speaker: str | None = None) -> OutgoingCaption:
    return OutgoingCaption(room="r", session="s1", segment=n, start=n * 2.0, end=n * 2.0 + 1.5,
                           text=text or f"caption number {n}", speaker=speaker, made_at=time.time() - age,
                           words=words)


async def sender(kind: str, url: str, settings: OutputSettings = FAST, **kw) -> OutputSender:
    s = OutputSender(kind, url, allowed_hosts=LOCAL, settings=settings, **kw)
    await s.start()
    return s


async def test_zoom_seq_rises_by_one_and_not_on_retries():
    async with ZoomStandin() as zoom:
        zoom.fail_next(503, times=2)
        out = await sender("zoom", zoom.url(), lang="de-DE")
        named = (Word("Hello", 0, 0.4, 0.9, name="Priya"), Word("there.", 0.4, 0.8, 0.9, name="Priya"),
                 Word("Hi!", 1.0, 1.2, 0.9, name="Sam"))
        out.offer(caption(1, "Hello there. Hi!", words=named))
        out.offer(caption(2, "Zwei Größen"))
        out.offer(caption(3))
        got = await zoom.accepted_count(3)
        await out.close()
    assert [a["seq"] for a in got] == [1, 2, 3]
    assert [a["text"] for a in got] == ["Priya: Hello there. Sam: Hi!", "Zwei Größen", "caption number 3"]
    assert zoom.langs == {"de-DE"} and zoom.violations == [] and zoom.repeats == 0
    assert got[0]["raw_query"].endswith("spparams=id%2Cns%2Cexpire&signature=nYtXsecret&seq=1&lang=de-DE")
    d = out.describe()
    assert (d["state"], d["delivered"], d["retried"], d["dropped"], d["last_seq"]) == ("ok", 3, 2, 0, 3)


async def test_zoom_resumes_from_the_services_last_seq_after_a_restart():
    async with ZoomStandin() as zoom:
        first = await sender("zoom", zoom.url())
        first.offer(caption(1))
        first.offer(caption(2))
        await zoom.accepted_count(2)
        await first.close()
        await zoom.restart()  # our side and theirs restarted: a new sender must ask where to go on
        second = await sender("zoom", zoom.url())
        second.offer(caption(3))
        got = await zoom.accepted_count(3)
        await second.close()
    assert [a["seq"] for a in got] == [1, 2, 3] and zoom.violations == []
    assert second.describe()["last_seq"] == 3


async def test_zoom_retries_400_within_limits_then_fails():
    async with ZoomStandin() as zoom:
        zoom.refuse(400)  # meeting not started, and it never starts
        out = await sender("zoom", zoom.url(), OutputSettings(timeout_s=0.5, backoff_s=0.01, backoff_max_s=0.02,
                                                              client_error_limit=3))
        out.offer(caption(1))
        await asyncio.wait_for(out.wait_stopped(), 5)
        await out.close()
    d = out.describe()
    assert d["state"] == "failed" and d["retried"] == 2 and d["dropped"] == 1
    assert "HTTP 400" in d["last_error"] and "3 times in a row" in d["last_error"]


async def test_youtube_body_timestamps_and_batching():
    async with YouTubeStandin() as yt:
        out = OutputSender("youtube", yt.url(), allowed_hosts=LOCAL, settings=FAST)
        for n in (1, 2, 3):  # due together: one post
            out.offer(caption(n, age=1.0))
        await out.start()
        await yt.accepted_count(3)
        out.offer(caption(4, "later"))
        got = await yt.accepted_count(4)
        await out.close()
    assert yt.violations == []
    assert [len(p) for p in yt.posts] == [3, 1] and [p[0]["seq"] for p in yt.posts] == [1, 2]
    assert [c["text"] for c in got] == ["caption number 1", "caption number 2", "caption number 3", "later"]
    made = caption(1, age=1.0).made_at
    stamp = datetime.fromtimestamp(made, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    assert got[0]["time"].startswith(stamp[:-1])  # the final's time (to the second's tens), UTC, milliseconds


def test_youtube_request_shape():
    c = OutgoingCaption("r", "s", 1, 0, 1, "hello\nworld", None, made_at=1764000000.1234)
    request = YouTubeContract("http://upload.youtube.com/closedcaption?cid=K").request([c, c], seq=7)
    assert request.url == "http://upload.youtube.com/closedcaption?cid=K&seq=7"
    assert request.headers == {"Content-Type": "text/plain"}
    assert request.body == b"2025-11-24T16:00:00.123\nhello world\n2025-11-24T16:00:00.123\nhello world\n"


async def test_teams_cart_posts_text_with_lang_and_no_seq():
    async with TeamsStandin() as teams:
        out = await sender("teams", teams.url(), lang="en-US")
        out.offer(caption(1, "Hello I'm here"))
        got = await teams.accepted_count(1)
        await out.close()
    assert teams.violations == [] and got[0]["text"] == "Hello I'm here"
    assert got[0]["lang"] == "en-us" and "seq" not in got[0]["query"]


async def test_webhook_signature_verifies_with_the_secret():
    async with WebhookStandin(secret="s3cret") as hook:
        out = await sender("webhook", hook.url(), secret="s3cret")
        out.offer(caption(1, words=(Word("caption", 2.0, 2.4, 0.91, speaker="Speaker 1", name="Priya"),),
                          speaker="Ana"))
        out.offer(caption(2))
        await hook.accepted_count(2)
        await out.close()
    headers, body = hook.raw[0]
    fields = dict(p.split("=", 1) for p in headers["X-Captions-Signature"].split(","))
    expected = hmac.new(b"s3cret", fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected) and abs(int(fields["t"]) - time.time()) < 30
    record = json.loads(body)
    assert {k: record[k] for k in ("type", "segment", "room", "session", "speaker", "seq")} == {
        "type": "final", "segment": 1, "room": "r", "session": "s1", "speaker": "Ana", "seq": 1}
    assert record["words"][0]["name"] == "Priya" and hook.accepted[1]["seq"] == 2 and hook.violations == []


async def test_503_twice_then_each_caption_once_in_order():
    async with WebhookStandin() as hook:
        hook.fail_next(503, times=2)
        out = await sender("webhook", hook.url(), secret=hook.secret)
        for n in range(1, 6):
            out.offer(caption(n))
        got = await hook.accepted_count(5)
        await out.close()
    assert [r["segment"] for r in got] == [1, 2, 3, 4, 5] and hook.repeats == 0
    assert out.describe()["retried"] == 2 and out.describe()["delivered"] == 5


async def test_a_hang_times_out_and_is_retried():
    async with ZoomStandin() as zoom:
        zoom.hang_next()
        out = await sender("zoom", zoom.url(), OutputSettings(timeout_s=0.3, backoff_s=0.01))
        out.offer(caption(1))
        out.offer(caption(2))
        got = await zoom.accepted_count(2)
        await out.close()
    assert [a["seq"] for a in got] == [1, 2] and zoom.violations == []
    d = out.describe()
    assert d["retried"] == 1 and d["state"] == "ok" and "no answer within 0.3 s" in d["last_error"]


async def test_403_for_good_fails_the_output_and_shows_it():
    async with WebhookStandin() as hook:
        hook.refuse(403)
        out = await sender("webhook", hook.url() + "?token=TOPSECRET", secret=hook.secret)
        for n in range(1, 4):
            out.offer(caption(n))
        await asyncio.wait_for(out.wait_stopped(), 5)
        out.offer(caption(4))  # after failing: counted, not queued
        await out.close()
    d = out.describe()
    assert d["state"] == "failed" and d["delivered"] == 0 and d["dropped"] == 4 and d["queued"] == 0
    assert "HTTP 403" in d["last_error"] and d["host"] == "127.0.0.1"
    assert "TOPSECRET" not in json.dumps(d) and "/hook" not in json.dumps(d)


async def test_captions_past_max_age_are_dropped_and_counted():
    async with ZoomStandin() as zoom:
        out = OutputSender("zoom", zoom.url(), allowed_hosts=LOCAL, settings=FAST)
        out.offer(caption(1, age=20.0))  # stale when its turn comes
        out.offer(caption(2))
        await out.start()
        got = await zoom.accepted_count(1)
        zoom.fail_next(503, times=1000)  # stale while retrying
        out2 = await sender("zoom", zoom.url(), OutputSettings(timeout_s=0.5, backoff_s=0.02, max_age_s=0.3))
        out2.offer(caption(3))
        await until(lambda: out2.describe()["dropped"] == 1, timeout=5)
        await out.close()
        await out2.close()
    assert [a["text"] for a in got] == ["caption number 2"] and out.describe()["dropped"] == 1
    assert out2.describe()["delivered"] == 0 and out2.describe()["state"] == "retrying"


async def test_a_dead_output_never_slows_offer():
    async with ZoomStandin() as zoom:
        zoom.hang_next(times=100)
        out = await sender("zoom", zoom.url(), OutputSettings(timeout_s=5, queue=100))
        out.offer(caption(0))
        await until(lambda: zoom.calls >= 2, timeout=5)  # resumed, and its first post hangs
        began = time.perf_counter()
        for n in range(5000):
            out.offer(caption(n))
        took = time.perf_counter() - began
        d = out.describe()
        await out.close()
    assert took < 0.25, took
    assert d["queued"] == 100 and d["dropped"] == 5000 - 100


@pytest.mark.parametrize("url, kind, why", [
    ("http://169.254.169.254/latest/meta-data/?token=x", "webhook", "not an allowed"),
    ("http://10.1.2.3/closedcaption?id=1&signature=s", "zoom", "not an allowed"),
    ("http://localhost/hook?key=abc", "webhook", "not an allowed"),
    ("file:///etc/passwd", "webhook", "only http and https"),
    ("https://hooks.example.com/a b?key=abc", "webhook", "spaces"),
    ("https://user:pw@wmcapi.zoom.us/closedcaption?id=1", "zoom", "user information"),
    ("https://wmcapi.zoom.us.evil.example/closedcaption?signature=s", "zoom", "not an allowed"),
])
def test_guard_refuses(url, kind, why):
    with pytest.raises(RefusedURL) as refused:
        check_url(url, kind, None if kind == "zoom" else ("hooks.example.com",))
    assert why in str(refused.value)
    query = url.partition("?")[2]
    assert not query or query not in str(refused.value)


def test_guard_allows_the_documented_hosts():
    for kind, url in (("zoom", "https://wmcapi.zoom.us/closedcaption?id=1&signature=s"),
                      ("youtube", "http://upload.youtube.com/closedcaption?cid=K"),
                      ("teams", "https://api.captions.office.microsoft.com/cartcaption?meetingid=m&token=t")):
        assert check_url(url, kind).host == urlhost(url)
    assert redact("https://wmcapi.zoom.us/closedcaption?id=1&signature=s") == "https://wmcapi.zoom.us/closedcaption?…"


def urlhost(url: str) -> str:
    return url.split("/")[2]


async def fake_resolver(host: str, port: int) -> list[str]:
    return {"example.internal": ["10.0.0.5"], "sneaky.example.com": ["93.184.215.14", "127.0.0.1"],
            "hooks.example.com": ["93.184.215.14"], "mapped.example.com": ["::ffff:169.254.169.254"]}[host]


@pytest.mark.parametrize("host, ok", [("example.internal", False), ("sneaky.example.com", False),
                                      ("mapped.example.com", False), ("hooks.example.com", True)])
async def test_guard_checks_the_resolved_addresses(host, ok):
    target = check_url(f"https://{host}/hook?secret=abc", "webhook", (host,))
    if ok:
        assert await check_resolved(target, (host,), fake_resolver) == ["93.184.215.14"]
        return
    with pytest.raises(RefusedURL) as refused:
        await check_resolved(target, (host,), fake_resolver)
    assert "secret=abc" not in str(refused.value)


async def test_loopback_is_refused_unless_that_address_is_allowed():
    target = check_url("http://localhost:9/hook", "webhook", ("localhost",))
    with pytest.raises(RefusedURL, match="loopback"):
        await check_resolved(target, ("localhost",))
    assert await check_resolved(target, ("localhost", "127.0.0.1", "::1"))


async def test_an_allowed_name_resolving_privately_sends_nothing():
    async with WebhookStandin() as hook:
        url = f"http://example.internal:{hook.port}/hook?key=abc"
        out = OutputSender("webhook", url, secret="x", allowed_hosts=("example.internal",), settings=FAST,
                           resolve=fake_resolver)
        await out.start()
        out.offer(caption(1))
        await asyncio.wait_for(out.wait_stopped(), 5)
        await out.close()
    d = out.describe()
    assert hook.calls == 0 and d["state"] == "failed" and "10.0.0.5 is a private address" in d["last_error"]
    assert "key=abc" not in json.dumps(d)


def test_spoken_text_without_names_is_the_text_on_one_line():
    assert spoken_text(caption(1, "two\nlines  here")) == "two lines here"
    assert spoken_text(caption(1, "hello there", speaker="Ana")) == "Ana: hello there"  # the room's label
    assert spoken_text(caption(1, "hello there", speaker="s1")) == "hello there"  # the session id: no name


# -- with replicas: the shared journal (server/outputs/shared.py) ---------------------------------------------------

class Journal:
    """Keeps what a sender records, as the shared store would; `hang_after(n)`: the n-th write and later never
    return (the replica died there); `lose()`: every write answers that the lease is gone."""

    def __init__(self) -> None:
        self.records: list = []
        self._hang_at: int | None = None
        self._lost = False

    def hang_after(self, n: int) -> None:
        self._hang_at = n

    def lose(self) -> None:
        self._lost = True

    async def __call__(self, progress) -> bool:
        if self._hang_at is not None and len(self.records) >= self._hang_at:
            await asyncio.Event().wait()
        if self._lost:
            return False
        self.records.append(progress)
        return True

    @property
    def last(self):
        return self.records[-1]


def tagged(n: int) -> tuple[OutgoingCaption, str]:
    return caption(n), f"{n}-0"


async def test_a_journalled_sender_records_pending_before_each_post_and_done_after():
    async with ZoomStandin() as zoom:
        journal = Journal()
        out = await sender("zoom", zoom.url(), journal=journal)
        for n in (1, 2):
            out.offer(*tagged(n))
        await zoom.accepted_count(2)
        await until(lambda: journal.records and journal.last.pending_seq is None and journal.last.last_seq == 2)
        await out.close()
    kinds = [(r.pending_seq, r.pending, r.cursor, r.delivered) for r in journal.records]
    assert kinds == [(1, ["1-0"], "0-0", 0), (None, [], "1-0", 1), (2, ["2-0"], "1-0", 1), (None, [], "2-0", 2)]
    assert journal.last.next_seq == 3


async def test_a_post_left_pending_that_landed_is_counted_not_sent_again():
    """The holder died after Zoom took seq 2 and before it recorded it: the next one asks Zoom, which has 2."""
    async with ZoomStandin() as zoom:
        journal = Journal()
        first = await sender("zoom", zoom.url(), journal=journal)
        first.offer(*tagged(1))
        await zoom.accepted_count(1)
        await until(lambda: journal.records and journal.last.delivered == 1)
        journal.hang_after(len(journal.records) + 1)  # the pending write goes through, the done write never returns
        first.offer(*tagged(2))
        await zoom.accepted_count(2)
        await first.close()  # killed
        left = journal.last
        assert (left.pending_seq, left.pending, left.cursor) == (2, ["2-0"], "1-0")
        second_journal = Journal()
        second = await sender("zoom", zoom.url(), journal=second_journal, resume=left)
        for n in (2, 3):  # the new holder reads the room's transcript after the cursor
            second.offer(*tagged(n))
        await zoom.accepted_count(3)
        await until(lambda: second_journal.records and second_journal.last.last_seq == 3)
        await second.close()
    assert [a["seq"] for a in zoom.accepted] == [1, 2, 3] and zoom.repeats == 0 and zoom.violations == []
    assert (second_journal.last.delivered, second_journal.last.cursor) == (3, "3-0")


async def test_a_post_left_pending_that_did_not_land_is_sent_with_its_seq():
    async with ZoomStandin() as zoom:
        journal = Journal()
        first = await sender("zoom", zoom.url(), journal=journal)
        first.offer(*tagged(1))
        await zoom.accepted_count(1)
        zoom.hang_next()  # the next post never gets an answer: the replica is killed meanwhile
        calls = zoom.calls
        first.offer(*tagged(2))
        await until(lambda: zoom.calls > calls)
        await first.close()
        left = journal.last
        assert (left.pending_seq, left.pending) == (2, ["2-0"])
        second = await sender("zoom", zoom.url(), journal=Journal(), resume=left)
        for n in (2, 3):
            second.offer(*tagged(n))
        got = await zoom.accepted_count(3)
        await second.close()
    assert [(a["seq"], a["text"]) for a in got] == [(1, "caption number 1"), (2, "caption number 2"),
                                                    (3, "caption number 3")]
    assert zoom.violations == []


async def test_a_webhook_post_left_pending_is_sent_again_with_its_seq_and_dropped_as_a_repeat():
    async with WebhookStandin() as hook:
        journal = Journal()
        first = await sender("webhook", hook.url(), secret=hook.secret, journal=journal)
        first.offer(*tagged(1))
        await hook.accepted_count(1)
        await until(lambda: journal.records and journal.last.delivered == 1)
        journal.hang_after(len(journal.records) + 1)
        first.offer(*tagged(2))
        await hook.accepted_count(2)
        await first.close()
        second = await sender("webhook", hook.url(), secret=hook.secret, journal=Journal(), resume=journal.last)
        for n in (2, 3):
            second.offer(*tagged(n))
        got = await hook.accepted_count(3)
        await until(lambda: hook.repeats == 1)
        await second.close()
    assert [(a["seq"], a["segment"]) for a in got] == [(1, 1), (2, 2), (3, 3)] and hook.violations == []


async def test_a_sender_whose_lease_is_gone_stops_before_posting():
    async with ZoomStandin() as zoom:
        journal = Journal()
        out = await sender("zoom", zoom.url(), journal=journal)
        out.offer(*tagged(1))
        await zoom.accepted_count(1)
        await until(lambda: not out.running or journal.last.delivered == 1)
        journal.lose()
        posts = zoom.calls
        out.offer(*tagged(2))
        await until(lambda: not out.running)
        await out.close()
    assert out.lost and zoom.calls == posts and [a["seq"] for a in zoom.accepted] == [1]
