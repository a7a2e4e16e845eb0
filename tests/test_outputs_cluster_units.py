"""Caption outputs shared by replicas (server/cluster/outputs.py) against a real redis-server, two "replicas" in
one process (each its own Link and name) and a Zoom STAND-IN (tests/support/caption_standins.py): the output
added on one is listed on the other and delivered by one at a time from the room's shared transcript; the
holder "killed" mid-post (its tasks cancelled, nothing released) is taken over by the other, which sends the
pending caption with its seq: each caption once, in order. Heartbeats are 0.2 s (a lease lasts 0.6 s)."""
from __future__ import annotations

import json
import time

import pytest

from bench.redis_server import redis_server
from server.cluster.keys import APPEND_FINAL, Keys
from server.cluster.link import Link
from server.cluster.outputs import SharedRoomOutputs
from server.config import OutputsConfig
from server.outputs.registry import RoomOutputs
from tests.support.caption_standins import ZoomStandin
from tests.support.waits import until

BEAT = 0.2


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as r:
        yield r.url


async def replica(url: str, name: str, prefix: str) -> tuple[Link, SharedRoomOutputs, RoomOutputs]:
    link = Link(url, 0.5)
    await link.start()
    assert link.up
    shared = SharedRoomOutputs(link, Keys(prefix), name, BEAT)
    outputs = RoomOutputs(OutputsConfig(allowed_hosts=["127.0.0.1"], timeout_s=5, backoff_s=0.01,
                                        backoff_max_s=0.05), shared=shared)
    await outputs.start()
    return link, shared, outputs


async def say(link: Link, prefix: str, room: str, segment: int, age: float = 0.0) -> None:
    """A final into the room's shared transcript, as Cluster.final writes it."""
    k = Keys(prefix)
    line = {"type": "final", "segment": segment, "start": segment, "end": segment + 0.5, "text": f"line {segment}",
            "words": [], "speaker": "Ann", "session": "s1", "time": time.time() - age}
    await link.client.eval(APPEND_FINAL, 2, k.finals("rooms", room), k.last_segments("rooms", room), "s1", segment,
                           1000, json.dumps(line), 0)


async def kill(shared: SharedRoomOutputs) -> None:
    """As SIGKILL leaves it: no more heartbeats or posts, nothing released."""
    shared._task.cancel()
    for holder in list(shared._held.values()):
        await holder.stop()


async def test_an_output_is_listed_everywhere_delivered_once_and_taken_over_mid_post(redis_url):
    link_a, shared_a, a = await replica(redis_url, "a", "t1")
    link_b, _, b = await replica(redis_url, "b", "t1")
    async with ZoomStandin() as zoom:
        await say(link_a, "t1", "hall", 0)  # before the output: not sent
        made = await a.add("hall", "zoom", zoom.url())
        await until(lambda: [o["id"] for o in b.list("hall")] == [made["id"]], timeout=5, what="B listing it")
        for segment in (1, 2):
            await say(link_b, "t1", "hall", segment)
        await zoom.accepted_count(2)
        await until(lambda: b.list("hall")[0]["delivered"] == 2, timeout=5)
        assert (b.list("hall")[0]["replica"], b.list("hall")[0]["last_seq"]) == ("a", 2)
        assert zoom.signature not in json.dumps(b.list("hall"))
        # A is killed while its post of line 3 hangs
        zoom.hang_next()
        calls = zoom.calls
        await say(link_b, "t1", "hall", 3)
        await until(lambda: zoom.calls > calls, timeout=5, what="the post of line 3")
        await kill(shared_a)
        for segment in (4, 5):
            await say(link_b, "t1", "hall", segment)
        got = await zoom.accepted_count(5, timeout=10)
        await until(lambda: b.list("hall")[0]["delivered"] == 5, timeout=5)
        shown = b.list("hall")[0]
        assert [(x["seq"], x["text"]) for x in got] == [(n, f"Ann: line {n}") for n in range(1, 6)]
        assert zoom.violations == [] and zoom.repeats == 0
        assert (shown["replica"], shown["state"], shown["last_seq"], shown["dropped"]) == ("b", "ok", 5, 0)
        assert await b.remove("hall", made["id"]) and b.list("hall") == []
        assert not await b.remove("hall", made["id"])
    await b.close()
    await link_a.close()
    await link_b.close()


async def test_captions_past_max_age_when_their_turn_comes_are_dropped_and_counted(redis_url):
    link_a, _, a = await replica(redis_url, "a", "t2")
    async with ZoomStandin() as zoom:
        made = await a.add("room", "zoom", zoom.url())
        await say(link_a, "t2", "room", 0, age=60)  # kept a minute ago (a new holder coming to it late)
        await say(link_a, "t2", "room", 1)
        got = await zoom.accepted_count(1)
        await until(lambda: a.list("room")[0]["delivered"] == 1, timeout=5)
        assert [x["text"] for x in got] == ["Ann: line 1"] and a.list("room")[0]["dropped"] == 1
        assert await a.remove("room", made["id"])
    await a.close()
    await link_a.close()


async def test_a_fixed_output_is_defined_once_by_every_replica_that_starts(redis_url):
    async with ZoomStandin() as zoom:
        fixed = [{"room": "fixed", "kind": "zoom", "url": zoom.url()}]
        links, outputs = [], []
        for name in ("a", "b"):
            link = Link(redis_url, 0.5)
            await link.start()
            out = RoomOutputs(OutputsConfig(allowed_hosts=["127.0.0.1"], fixed=fixed),
                              shared=SharedRoomOutputs(link, Keys("t3"), name, BEAT))
            await out.start()
            links.append(link)
            outputs.append(out)
        await until(lambda: all(len(o.list("fixed")) == 1 for o in outputs), timeout=5)
        assert outputs[0].list("fixed")[0]["id"] == outputs[1].list("fixed")[0]["id"]
        for out, link in zip(outputs, links):
            await out.close()
            await link.close()
