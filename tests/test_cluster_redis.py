"""Taking over a shared session, against a real redis-server (no replicas): the owner's own record after a
restart under the same name, a dead owner's, a held one, a wrong token, and two takers racing for one record."""
from __future__ import annotations

import asyncio
import json

import pytest

from bench.redis_server import redis_server
from server.cluster.handover import HELD, LIVE, Handover, record
from server.cluster.keys import Keys
from server.cluster.link import Link
from server.core import errors as E
from server.core.state import ResumeState

KEYS = Keys("t")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as r:
        yield r.url


async def handover(url: str, replica: str) -> tuple[Link, Handover]:
    link = Link(url, 0.5)
    await link.start()
    assert link.up
    return link, Handover(link, KEYS, replica, hold_s=60, wait_s=2)


async def put(link: Link, owner: str, phase: str, session: str, **state) -> None:
    await link.client.set(KEYS.resume(session), record(owner, phase, ResumeState(session, "tok", **state)))


async def test_a_dead_owners_live_record_is_claimed_with_its_numbering(redis_url):
    link, taker = await handover(redis_url, "b")
    await put(link, "a", LIVE, "s1", next_segment=7, covered=16000 * 42, cut_open=True)  # "a" sends no heartbeat
    rec, state = await taker.take("s1", "tok", release=None, known_here=lambda s: False)
    assert rec["owner"] == "a" and (state.next_segment, state.covered, state.cut_open) == (7, 16000 * 42, True)
    assert json.loads(await link.client.get(KEYS.resume("s1")))["owner"] == "b"  # ours now
    with pytest.raises(E.ProtocolError) as refused:
        await taker.take("s1", "not-the-token", release=None, known_here=lambda s: False)
    assert refused.value.code == E.RESUME_REFUSED
    with pytest.raises(E.ProtocolError) as unknown:
        await taker.take("nope", "tok", release=None, known_here=lambda s: False)
    assert unknown.value.code == E.RESUME_UNKNOWN
    await link.close()


async def test_a_sessions_voices_and_names_go_with_its_record(redis_url):
    """Speaker labels survive a handover: the taker gets the voice profiles (exactly, as JSON floats) and the names
    given to them, so the same voice keeps its label on the new replica."""
    import numpy as np

    from server.speakers import SpeakerTracker

    rng = np.random.default_rng(7)
    voices = {"speakers": [{"label": f"Speaker {i}", "sum": rng.normal(size=256).tolist(), "count": 3 + i}
                           for i in (1, 2)], "next_number": 3, "pending": []}
    link, taker = await handover(redis_url, "b")
    await put(link, "a", HELD, "s5", diarize=True, voices=voices, names={"Speaker 2": "Priya"})
    _, state = await taker.take("s5", "tok", release=None, known_here=lambda s: False)
    assert state.diarize and state.names == {"Speaker 2": "Priya"} and state.voices == voices
    assert SpeakerTracker.from_dict(state.voices).to_dict() == voices  # what the new session goes on from
    await link.close()


async def test_its_own_record_after_a_restart_under_the_same_name_is_claimed_not_waited_for(redis_url):
    link, me = await handover(redis_url, "a")
    await link.client.set(KEYS.alive("a"), "1")  # alive: it is this very replica
    await put(link, "a", LIVE, "s2", next_segment=3)
    assert (await me.take("s2", "tok", None, known_here=lambda s: True))[1] is None  # had it: the local way
    rec, state = await me.take("s2", "tok", None, known_here=lambda s: False)
    assert state.next_segment == 3


async def test_a_live_owner_is_asked_to_let_go_and_disowns_what_it_does_not_have(redis_url):
    link, taker = await handover(redis_url, "b")
    owner_link, owner = await handover(redis_url, "a")
    await link.client.set(KEYS.alive("a"), "1")
    await put(link, "a", LIVE, "s3", next_segment=5)
    asked = []

    def release(replica, session, token):  # what the owner does on its control channel when it lacks the session
        asked.append((replica, session))
        pipe = owner_link.client.pipeline()
        owner.disown(pipe, session)
        asyncio.ensure_future(pipe.execute())

    rec, state = await taker.take("s3", "tok", release, known_here=lambda s: False)
    assert asked == [("a", "s3")] and rec["phase"] == HELD and state.next_segment == 5


async def test_two_takers_racing_for_one_record_one_wins(redis_url):
    link, b = await handover(redis_url, "b")
    _, c = await handover(redis_url, "c")
    for replica in ("b", "c"):
        await link.client.set(KEYS.alive(replica), "1")
    await put(link, "gone", HELD, "s4")
    ignore = lambda *args: None  # noqa: E731 - the winner keeps it: asking it to let go does nothing here
    results = await asyncio.gather(b.take("s4", "tok", ignore, lambda s: False),
                                   c.take("s4", "tok", ignore, lambda s: False), return_exceptions=True)
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(won) == 1 and len(lost) == 1, results
    assert isinstance(lost[0], E.ProtocolError) and lost[0].code == E.RESUME_UNKNOWN
    winner = "b" if results[0] is won[0] else "c"
    assert json.loads(await link.client.get(KEYS.resume("s4")))["owner"] == winner
