"""The pieces of sharing that need no Redis: rooms letting each final through once (a final can arrive both from
the room's stream and live), the client's address behind a trusted proxy, and what /healthz and the logs show of
a Redis URL."""
from multidict import CIMultiDict as Headers  # aiohttp's request headers

from server.cluster.link import redact
from server.core.events import Caption, Final, Partial
from server.delivery.rooms import Room, Viewer
from server.streams.admission import client_ip


def final(segment: int, session: str = "s1", text: str = "x") -> Final:
    return Final(segment, 0.0, 1.0, text, session=session)


def watched(room: Room) -> list[Caption]:
    """What a viewer of `room` is offered from now on."""
    got = []
    viewer = Viewer(send=None)
    viewer.offer = got.append
    room.viewers.add(viewer)
    return got


def test_a_room_lets_each_final_through_once_and_drops_partials_of_finished_segments():
    room = Room("r", backlog=10)
    got = watched(room)
    room.publish(final(0))
    room.publish(final(0))  # the same final again (stream read + live message)
    room.publish(Partial(0, 0.0, 1.0, "late", session="s1"))  # its final is out
    room.publish(final(0, session="s2"))  # another session's segment 0 is another final
    room.publish(Partial(1, 1.0, 2.0, "live", session="s1"))
    assert [(type(m).__name__, m.session, m.segment) for m in got] == [
        ("Final", "s1", 0), ("Final", "s2", 0), ("Partial", "s1", 1)]
    assert len(room.backlog) == 2


def test_merging_the_shared_backlog_before_viewers_keeps_order_and_bound():
    room = Room("r", backlog=3)
    room.publish(final(5))  # this replica's own speaker, before the room's stream was read
    room.merge([final(2), final(3), final(4), final(5)])  # the stream's tail, oldest first; 5 is known
    assert [m.segment for m in room.backlog] == [3, 4, 5]  # the newest 3, in order, 5 once


def test_merging_after_viewers_joined_publishes_only_what_they_missed():
    room = Room("r", backlog=10)
    got = watched(room)
    room.publish(final(0))
    room.merge([final(0), final(1), final(2)])  # after Redis came back: 1 and 2 were missed meanwhile
    assert [m.segment for m in got] == [0, 1, 2]


def test_the_client_address_behind_a_trusted_proxy():
    headers = Headers([("X-Forwarded-For", "203.0.113.9, 198.51.100.7")])
    assert client_ip("127.0.0.1", headers, ["127.0.0.1"]) == "198.51.100.7"  # the hop nginx saw
    assert client_ip("127.0.0.1", headers, ["127.0.0.1", "198.51.100.7"]) == "203.0.113.9"
    assert client_ip("10.0.0.5", headers, ["127.0.0.1"]) == "10.0.0.5"  # not a proxy we trust: its own address
    assert client_ip("127.0.0.1", Headers(), ["127.0.0.1"]) == "127.0.0.1"


def test_a_redis_password_never_reaches_logs_or_healthz():
    assert redact("redis://:s3cret@redis.internal:6379/0") == "redis://:***@redis.internal:6379/0"
    assert redact("redis://app:s3cret@redis.internal:6379/0") == "redis://app:***@redis.internal:6379/0"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
