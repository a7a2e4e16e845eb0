"""Four replicas (Whisper tiny.en) sharing a real redis-server, behind a real nginx, all on loopback
(bench/cluster.py starts them; deploy/nginx.conf is nginx's config): a room's finals reach viewers on every
replica; Redis stopped for 10 s mid-stream and started again; a room's Zoom output (a STAND-IN enforcing Zoom's
caption contract) whose delivering replica is SIGKILLed mid-post, taken over by another; a replica SIGKILLed
mid-stream, its speaker's client (client.mic's link) resuming through nginx on another replica; one drained by
SIGTERM. The last three each take a replica away (four: one is left for the last), so they come last."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from http import HTTPStatus

import pytest
from websockets.asyncio.client import connect

from bench.cluster import cluster as start_cluster
from client.link import CaptionLink
from client.stream import stream_audio

from .support.audio import RATE, join_with_silence, wer
from .support.caption_standins import ZoomStandin
from .support.link import CLIPS, CUT, PAUSES, run_link
from .support.servers import http_base
from .support.v1 import text
from .support.waits import until

LONG_CLIPS = CLIPS + ["lj001_0001.wav", "lj050_0131.wav"]  # 46 s with the pauses: room for a 10 s outage
LONG_PAUSES = PAUSES + [1.5, 1.5]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    # heartbeat 1 s: a killed replica counts as dead (its sessions and outputs taken over) 3 s after its last beat;
    # outputs may call the caption stand-ins on loopback
    with start_cluster(4, work, ("--backend", "whisper", "--set", "redis.heartbeat_s=1",
                                 "--set", "outputs.allowed_hosts=127.0.0.1")) as c:
        yield c


def healthz(url: str) -> tuple[int, dict]:
    """(HTTP status, report) of /healthz, 503 included."""
    try:
        with urllib.request.urlopen(http_base(url) + "/healthz", timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def transcript(url: str, path: str) -> list[dict]:
    with urllib.request.urlopen(f"{http_base(url)}/v1/transcripts/{path}.json", timeout=10) as r:
        return json.load(r)["finals"]


def alive(c) -> list:
    return [r for r in c.replicas if r.proc.poll() is None]


def outputs_api(url: str, room: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    """The room's outputs API on one replica (or nginx); speaking is open here, so no token."""
    request = urllib.request.Request(f"{http_base(url)}/v1/rooms/{room}/outputs", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def where(c, key: str) -> list[str]:
    """Names of the replicas whose /healthz counts one or more of `key` (sessions, viewers)."""
    return [r.name for r in c.replicas if r.proc.poll() is None and healthz(r.url)[1][key] > 0]


class Watcher:
    """A viewer of a room: keeps every message after `watching`."""

    def __init__(self, url: str, room: str):
        self.url = url.replace("/v1/listen", "/v1/watch") + f"?room={room}"
        self.messages: list[dict] = []

    async def __aenter__(self):
        self._ws = await connect(self.url)
        self.watching = json.loads(await self._ws.recv())
        assert self.watching["type"] == "watching", self.watching
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for raw in self._ws:
            self.messages.append(json.loads(raw))

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await self._ws.close()

    @property
    def finals(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "final"]


def labelled(finals: list[dict]) -> list[tuple]:
    return [(f["segment"], f["text"], f.get("speaker"), f.get("session")) for f in finals]


async def test_a_speaker_on_one_replica_reaches_viewers_on_every_replica_exactly_once(cluster):
    audio, _ = join_with_silence(CLIPS, PAUSES)
    async with Watcher(cluster.url, "hall") as a, Watcher(cluster.url, "hall") as b:
        # viewers through nginx first, then one on each replica directly: whichever replica nginx gives the
        # speaker, the others have viewers of their own
        direct = [Watcher(r.url, "hall") for r in cluster.replicas]
        for w in direct:
            await w.__aenter__()
        try:
            shown: list[dict] = []
            streaming = asyncio.create_task(stream_audio(audio, RATE, cluster.url, speed=2.0, on_message=shown.append,
                                                         start_extra={"room": "hall", "speaker": "Ann"}))
            await until(lambda: shown, timeout=30, what="the first caption")
            [speaker_at] = where(cluster, "sessions")
            viewers_at = {r.name: healthz(r.url)[1]["viewers"] for r in cluster.replicas}
            result = await streaming
            await until(lambda: all(len(w.finals) >= len(result.finals) for w in [a, b, *direct]), timeout=30,
                        what="the last final's way through Redis to every viewer")
        finally:
            for w in direct:
                await w.__aexit__()
    session = result.ready["session"]
    sent = [(f["segment"], f["text"], "Ann", session) for f in result.finals]
    assert len(sent) >= 4 and [s[0] for s in sent] == list(range(len(sent)))
    for w in [a, b, *direct]:
        assert labelled(w.finals) == sent, w.url  # each final once, in order, labelled
        assert not any(m.get("backlog") for m in w.messages)
    assert sum(viewers_at.values()) == 2 + len(cluster.replicas) and all(n >= 1 for n in viewers_at.values()), viewers_at
    print(f"\nspeaker through nginx on {speaker_at}; viewers per replica {viewers_at}; {len(sent)} finals reached "
          f"all {sum(viewers_at.values())} exactly once, in order, labelled")
    # a late viewer on any replica gets the same backlog; the room's transcript is the same from every replica
    for r in cluster.replicas:
        async with Watcher(r.url, "hall") as late:
            await until(lambda: len(late.messages) >= len(sent), timeout=30, what=f"the backlog on {r.name}")
        assert [(m["segment"], m["text"]) for m in late.messages] == [s[:2] for s in sent]
        assert all(m["backlog"] for m in late.messages)
        assert [(f["segment"], f["text"]) for f in transcript(r.url, "rooms/hall")] == [s[:2] for s in sent]
        assert [f["segment"] for f in transcript(r.url, session)] == [s[0] for s in sent]


async def test_redis_stopped_for_10_s_mid_stream_captions_go_on_and_fan_out_comes_back(cluster):
    audio, _ = join_with_silence(LONG_CLIPS, LONG_PAUSES)
    speaker_at, viewer_at = cluster.replicas[0], cluster.replicas[1]
    shown: list[dict] = []
    async with Watcher(viewer_at.url, "outage") as viewer:
        streaming = asyncio.create_task(stream_audio(
            audio, RATE, speaker_at.url, speed=2.0, on_message=shown.append,
            start_extra={"room": "outage", "speaker": "Bo"}))
        await until(lambda: viewer.finals, timeout=60, what="the first final at the viewer")
        cluster.redis.stop()
        stopped = time.monotonic()
        try:
            before = len([m for m in shown if m["type"] == "final"])
            statuses = set()
            while time.monotonic() - stopped < 10:
                status, report = healthz(speaker_at.url)
                statuses.add((status, report["status"], report["redis"]["up"]))
                await asyncio.sleep(0.5)
            during = len([m for m in shown if m["type"] == "final"]) - before
            at_viewer_during = len(viewer.finals)
        finally:
            cluster.redis.start()
        restarted = time.monotonic()
        made = len([m for m in shown if m["type"] == "final"])  # the finals made until Redis came back
        await until(lambda: len(viewer.finals) >= made, timeout=30, what="the outage's finals at the viewer")
        back_after = time.monotonic() - restarted
        result = await streaming
        await until(lambda: len(viewer.finals) >= len(result.finals), timeout=30, what="fan-out back")
    # captions kept flowing to the speaker; /healthz said degraded (still 200: it takes streams) with Redis away
    assert during >= 1, shown
    assert (200, "degraded", False) in statuses, statuses
    assert all(s[1] in ("ok", "degraded") for s in statuses), statuses
    # fan-out came back without a restart: the viewer on the other replica has every final, once, in order
    # (those made during the outage were kept and published once Redis was back)
    session = result.ready["session"]
    sent = [(f["segment"], f["text"], "Bo", session) for f in result.finals]
    assert labelled(viewer.finals) == sent
    assert at_viewer_during < len(result.finals)
    assert healthz(speaker_at.url)[1]["status"] == "ok" and healthz(viewer_at.url)[1]["redis"]["up"]
    # nothing sent is missing: the replica's local transcript, and the shared one from a third replica
    assert [f["segment"] for f in transcript(cluster.replicas[2].url, session)] == [s[0] for s in sent]
    local = (cluster.replicas[0].log_path.parent / speaker_at.name / "sessions" / f"{session}.jsonl")
    assert [json.loads(line)["segment"] for line in local.read_text().splitlines()] == [s[0] for s in sent]
    print(f"\nRedis away 10 s: {during} final(s) reached the speaker meanwhile, {at_viewer_during} of "
          f"{len(sent)} at the other replica's viewer; the {made} made by then were there {back_after:.1f} s after "
          f"Redis came back, and every later one live")


async def test_a_rooms_zoom_output_is_taken_over_when_its_replica_is_killed_mid_post(cluster):
    """The output is added through nginx (the replica that takes the request delivers it: it holds the lease);
    the room's speaker streams to another replica. The holder is SIGKILLed while its post hangs at the stand-in;
    within ~3 heartbeats another replica takes the lease and goes on from the shared progress: the hung caption
    again with its seq, then the rest. Zoom gets each of the room's finals once, in order, seq 1..n."""
    audio, _ = join_with_silence(CLIPS, PAUSES)
    async with ZoomStandin() as zoom:
        status, made = outputs_api(cluster.url, "relay", "POST", {"kind": "zoom", "url": zoom.url()})
        assert status == HTTPStatus.CREATED and zoom.signature not in json.dumps(made), made
        holder = next(r for r in cluster.replicas if r.name == made["replica"])
        speaker_at = next(r for r in alive(cluster) if r is not holder)
        streaming = asyncio.create_task(stream_audio(audio, RATE, speaker_at.url, speed=1.0,
                                                     start_extra={"room": "relay", "speaker": "Ann"}))
        await zoom.accepted_count(1, timeout=60)
        zoom.hang_next()  # the holder's next post gets no answer: it is mid-post when killed
        calls = zoom.calls
        await until(lambda: zoom.calls > calls, timeout=30, what="the holder's next post")
        os.kill(holder.proc.pid, signal.SIGKILL)
        holder.proc.wait(10)
        killed_after = len(zoom.accepted)
        result = await streaming
        said = [f for f in transcript(speaker_at.url, "rooms/relay") if f["text"].strip()]
        expected = [f"Ann: {' '.join(f['text'].split())}" for f in said]

        def shown() -> dict:
            [output] = outputs_api(speaker_at.url, "relay")[1]["outputs"]
            return output
        def all_done() -> bool:
            output = shown()
            return output["delivered"] + output["dropped"] == len(expected)
        await until(all_done, timeout=30, what="every final of the room delivered or dropped after the takeover")
        output = shown()
        got = list(zoom.accepted)
    assert [f["segment"] for f in said] == [f["segment"] for f in result.finals if f["text"].strip()]
    assert killed_after < len(expected)  # the meeting went on after the kill
    texts = [a["text"] for a in got]
    # each final once, in order, seq 1..n; only those past max age may be missing, and they are counted
    assert [a["seq"] for a in got] == list(range(1, len(got) + 1)) and zoom.violations == [], zoom.violations
    assert zoom.repeats == 0 and len(got) + output["dropped"] == len(expected)
    remaining = iter(expected)
    assert all(t in remaining for t in texts), (texts, expected)  # a subsequence, in order
    assert output["state"] == "ok" and output["last_seq"] == len(got) and output["delivered"] == len(got)
    assert output["replica"] in {r.name for r in alive(cluster)} and output["replica"] != holder.name
    for r in alive(cluster):  # every survivor lists the same
        await until(lambda r=r: outputs_api(r.url, "relay")[1]["outputs"][0]["delivered"] == len(got), timeout=5)
    print(f"\nZoom output held by {holder.name}, SIGKILLed mid-post after {killed_after} caption(s); taken over by "
          f"{output['replica']}: {len(got)} of {len(expected)} finals accepted once each, seq 1..{len(got)}, "
          f"{output['dropped']} dropped past max age")


async def test_a_replica_killed_mid_stream_its_speaker_resumes_on_another_through_nginx(cluster):
    audio, spans = join_with_silence(CLIPS, PAUSES)
    whole, *_ = await run_link(cluster.url, audio, room="calm")
    killed, seen = [], {}

    async def kill(link: CaptionLink) -> None:
        [name] = where(cluster, "sessions")
        dead = next(r for r in cluster.replicas if r.name == name)
        # a second speaker in the room on the doomed replica, and the room's speaker list from another replica
        ghost = await connect(dead.url)
        await ghost.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le",
                                     "room": "storm", "speaker": "Ghost"}))
        assert json.loads(await ghost.recv())["type"] == "ready"
        other = next(r for r in alive(cluster) if r is not dead)
        async with Watcher(other.url, "storm") as w:
            seen["before"] = w.watching["speakers"]
        os.kill(dead.proc.pid, signal.SIGKILL)
        dead.proc.wait(10)
        killed.append((dead, ghost))

    link, _, _, statuses = await run_link(cluster.url, audio, CUT, kill, room="storm")
    dead, ghost = killed[0]
    survivors = [r for r in alive(cluster) if r is not dead]
    # one session, resumed once, on another replica
    assert link.sessions == 1 and link.resumes == 1, statuses
    assert any(s.startswith("reconnected (session resumed)") for s in statuses), statuses
    finals = link.finals
    assert [f["segment"] for f in finals] == list(range(len(finals)))  # none lost, none doubled
    assert all(a["end"] <= b["start"] for a, b in zip(finals, finals[1:])), finals
    # The bound: what the client had before the kill is exactly the uninterrupted run's; after it, only words the
    # dead replica had not decoded (the open window, from the last final's end to the kill) may differ, and the
    # client resent that audio, so a surviving replica decoded it again.
    assert (finals[0]["segment"], finals[0]["text"]) == (whole.finals[0]["segment"], whole.finals[0]["text"])
    undecoded = [f for f in whole.finals if f["end"] > finals[0]["end"] and f["start"] < CUT / RATE]
    bound = len(text(undecoded).split()) / len(text(whole.finals).split())
    error = wer(text(whole.finals), text(finals))
    assert error <= bound, (error, bound, text(whole.finals), text(finals))
    # the room's transcript, from every surviving replica, is what the client got
    for r in survivors:
        assert [(f["segment"], f["text"]) for f in transcript(r.url, "rooms/storm")] == \
            [(f["segment"], f["text"]) for f in finals], r.name
    # nginx goes on serving through the survivors; the room's speaker list spans replicas, and the speaker left on
    # the dead replica is gone from it (its replica's heartbeat expired)
    status, report = healthz(cluster.url)
    assert status == 200 and report["status"] == "ok"
    assert seen["before"] == sorted(["Ghost", link.ready["session"]]), seen
    async with Watcher(survivors[0].url, "storm") as w:
        assert w.watching["speakers"] == []
    await ghost.close()
    print(f"\nSIGKILL of {dead.name} {CUT / RATE:.2f} s in, inside an open window; resumed on another replica: "
          f"{len(finals)} finals, segments 0..{len(finals) - 1} once each; WER against the uninterrupted run "
          f"{error:.3f} (bound {bound:.3f}: the {len(text(undecoded).split())} words open at the kill)")


async def test_a_replica_sent_sigterm_drains_and_its_speaker_resumes_on_another(cluster):
    """SIGTERM: the replica stops taking streams, flushes the open window into a final (sent), closes with 1012
    and holds the session in Redis; the link resumes it through nginx on a surviving replica, nothing lost."""
    audio, _ = join_with_silence(CLIPS, PAUSES)
    whole, *_ = await run_link(cluster.url, audio, room="calm2")
    drained: list = []

    async def terminate(link: CaptionLink) -> None:
        [name] = where(cluster, "sessions")
        replica = next(r for r in cluster.replicas if r.name == name)
        replica.proc.terminate()
        assert await asyncio.to_thread(replica.proc.wait, 30) == 0  # the link reads meanwhile
        drained.append(replica)

    link, _, _, statuses = await run_link(cluster.url, audio, CUT, terminate, room="drain")
    assert link.sessions == 1 and link.resumes == 1, statuses
    assert any("received 1012 (service restart) replica draining" in s for s in statuses), statuses
    finals = link.finals
    assert [f["segment"] for f in finals] == list(range(len(finals)))
    # the window open at SIGTERM became a final on the draining replica, cut there; the rest is the same speech
    assert finals[1]["end"] == pytest.approx(CUT / RATE, abs=0.05), finals
    assert wer(text(whole.finals), text(finals)) <= 0.25, (text(whole.finals), text(finals))
    survivor = next(r for r in cluster.replicas if r.proc.poll() is None)
    assert [(f["segment"], f["text"]) for f in transcript(survivor.url, "rooms/drain")] == \
        [(f["segment"], f["text"]) for f in finals]
    print(f"\nSIGTERM to {drained[0].name}: drained (exit 0), the session resumed on {survivor.name}; "
          f"{len(finals)} finals, WER against the uninterrupted run "
          f"{wer(text(whole.finals), text(finals)):.3f}")
