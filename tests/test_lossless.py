"""Nothing said is lost: a dropped speaker's open window, resumed sessions, shutdowns that always exit, viewers that
join while captions flow, and a stalled backend. Each against a real server on loopback with real speech."""
import asyncio
import json
import os
import random
import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client.stream import encode, stream_audio
from server.app import CaptionServer
from server.config import load_config
from server.core.engine import Engine
from server.core.events import Final
from server.httpapi.health import health

from .support.audio import RATE, join_with_silence, load_16k, wer
from .support.peers import FaultyBackend
from .support.servers import health as health_of
from .support.servers import server_process
from .support.v1 import collect_until, read_all_sent, recv
from .support.waits import until

FRAME = RATE // 10  # 100 ms


async def send_audio(ws, audio: np.ndarray, pace: float = 0.0) -> None:
    for i in range(0, len(audio), FRAME):
        await ws.send(encode(audio[i:i + FRAME], "pcm_s16le"))
        if pace:
            await asyncio.sleep(FRAME / RATE / pace)  # real time (times `pace`), as a live speaker sends


def transcript_lines(data, session: str) -> list[dict]:
    return [json.loads(line) for line in (data / "sessions" / f"{session}.jsonl").read_text().splitlines()]


async def test_a_dropped_speaker_loses_no_words(tmp_path):
    """jfk's first 4 s, 2 s of silence, the next 4 s into room R; then the TCP connection drops (no stop, no close
    handshake). The viewer and the transcript get both windows, the open one flushed at the drop."""
    data = tmp_path / "data"
    jfk = load_16k("jfk_16k.wav")
    # --set for a key that also has a flag (--data-dir): it must win over the flag's absence.
    with server_process("--backend", "whisper", "--set", f"server.data_dir={data}", log_path=tmp_path / "s.log") \
            as (url, _):
        async with connect(url.replace("/v1/listen", "/v1/watch?room=R")) as viewer:
            assert (await recv(viewer))["type"] == "watching"
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "start", "room": "R"}))
                session = (await recv(ws))["session"]
                await send_audio(ws, np.concatenate([jfk[:4 * RATE], np.zeros(2 * RATE, np.float32),
                                                     jfk[4 * RATE:8 * RATE]]))
                seen: list = []
                await read_all_sent(ws, seen)
                ws.transport.abort()
            finals: list = []
            await collect_until(viewer, lambda m: len([x for x in m if x["type"] == "final"]) >= 2, finals)
    finals = [m for m in finals if m["type"] == "final"]
    assert [f["segment"] for f in finals] == [0, 1] and finals[1]["end"] == pytest.approx(10.0)
    # jfk[4 s:] begins inside "ask", so the first word comes out as anything
    assert "what your country can do for you" in finals[1]["text"].lower(), finals[1]["text"]
    stored = transcript_lines(data, session)
    assert [(s["segment"], s["text"]) for s in stored] == [(f["segment"], f["text"]) for f in finals]


def quiet_point(audio: np.ndarray, after_s: float) -> int:
    """A sample in the quietest 50 ms after `after_s` (a pause between words, shorter than the VAD's hangover)."""
    start = int(after_s * RATE)
    frames = np.square(audio[start:start + 2 * RATE].reshape(-1, 800)).mean(axis=1)  # the next 2 s
    return start + int(np.argmin(frames)) * 800 + 400


async def test_a_resumed_session_equals_an_uninterrupted_one(cpu_url):
    """20 s streamed, cut off mid-window, resumed from the last final's end: the joined finals are the
    uninterrupted run's: same words, every segment once, no gap."""
    audio, spans = join_with_silence(["lj001_0005.wav", "jfk_16k.wav", "ldc93s1.wav"], [1.5, 1.5, 1.0])
    whole = await stream_audio(audio, RATE, cpu_url, speed=0)
    cut = quiet_point(audio, spans[1][0] + 2.0)  # inside jfk: a window is open there
    first: list = []
    async with connect(cpu_url) as ws:
        await ws.send(json.dumps({"type": "start"}))
        ready = await recv(ws)
        await send_audio(ws, audio[:cut])
        await read_all_sent(ws, first)
        await collect_until(ws, lambda m: any(x["type"] == "final" for x in m), first)  # the first clip's
        ws.transport.abort()
    got = [m for m in first if m["type"] == "final"]
    offset = round(got[-1]["end"] * RATE)  # where the client's backlog begins: the end of its last final
    async with connect(cpu_url) as ws:
        await ws.send(json.dumps({"type": "start", "resume": ready["session"], "resume_token": ready["resume_token"],
                                  "offset": offset}))
        again = await recv(ws)
        assert again["type"] == "ready" and again["session"] == ready["session"] and again["resumed"] is True
        await send_audio(ws, audio[offset:])
        await ws.send(json.dumps({"type": "stop"}))
        rest: list = []
        await collect_until(ws, lambda m: m and m[-1]["type"] == "end", rest)
    resent = [m for m in rest if m["type"] == "final" and m.get("resent")]
    assert resent and resent[0]["segment"] == got[-1]["segment"] + 1  # the window flushed at the drop
    joined = got + [m for m in rest if m["type"] == "final"]
    assert [f["segment"] for f in joined] == list(range(len(joined)))  # each once, in order
    assert all(a["end"] == b["start"] or a["end"] < b["start"] for a, b in zip(joined, joined[1:]))
    assert joined[-1]["end"] == pytest.approx(whole.finals[-1]["end"], abs=0.05)  # VAD frames start anew
    text = lambda fs: " ".join(f["text"] for f in fs)  # noqa: E731
    assert wer(text(whole.finals), text(joined)) == 0.0, (text(whole.finals), text(joined))


async def test_resume_needs_the_right_token_and_a_dropped_session(cpu_url):
    held = health_of(cpu_url)["resumable"]
    async with connect(cpu_url) as ws:
        await ws.send(json.dumps({"type": "start"}))
        ready = await recv(ws)
        await send_audio(ws, load_16k("ldc93s1.wav"))
        await read_all_sent(ws, [])
        ws.transport.abort()
    await until(lambda: health_of(cpu_url)["resumable"] > held, timeout=30, what="the dropped session to be held")
    async with connect(cpu_url) as ws:
        for start, code in [({"resume_token": "nope", "offset": 0}, "resume_refused"),
                            ({"offset": 0}, "resume_refused"),
                            ({"resume_token": ready["resume_token"], "offset": -1}, "bad_message")]:
            await ws.send(json.dumps({"type": "start", "resume": ready["session"], **start}))
            err = await recv(ws)
            assert err["type"] == "error" and err["code"] == code and err["message"], err
        await ws.send(json.dumps({"type": "start", "resume": "0123456789ab", "resume_token": "x", "offset": 0}))
        assert (await recv(ws))["code"] == "resume_unknown"
        # the right token still works after wrong ones, once
        await ws.send(json.dumps({"type": "start", "resume": ready["session"],
                                  "resume_token": ready["resume_token"], "offset": 0}))
        assert (await recv(ws))["session"] == ready["session"]
        resent = await recv(ws)
        assert resent["type"] == "final" and resent["resent"] and resent["text"]
        await ws.send(json.dumps({"type": "stop"}))
        assert (await recv(ws))["type"] == "end"
    async with connect(cpu_url) as ws:  # a session that ended with stop is not resumable
        await ws.send(json.dumps({"type": "start", "resume": ready["session"],
                                  "resume_token": ready["resume_token"], "offset": 0}))
        assert (await recv(ws))["code"] == "resume_unknown"


# Repetitions of a shutdown race that once failed about one run in ten (issue 13, fixed): 20 whisper runs passed
# when it was fixed; the suite repeats 3 (WHISPER_SIGTERM_RUNS=20 for the full check) to stay within CI's time.
SIGTERM_RUNS = {"whisper": int(os.environ.get("WHISPER_SIGTERM_RUNS", "3")),
                "salm": int(os.environ.get("SALM_SIGTERM_RUNS", "2"))}


@pytest.mark.parametrize("backend", ["whisper", "salm"])
async def test_sigterm_after_sessions_always_exits_0_within_the_deadline(tmp_path, backend, tiny_salm_dir):
    args = ["--backend", backend, "--data-dir", str(tmp_path), "--set", "limits.shutdown_deadline_s=10"]
    if backend == "salm":
        args += ["--model", str(tiny_salm_dir), "--device", "cpu"]
    clip = load_16k("jfk_16k.wav")
    for run in range(SIGTERM_RUNS[backend]):
        with server_process(*args, log_path=tmp_path / f"{run}.log") as (url, proc):
            await stream_audio(clip, RATE, url, speed=0)
            async with connect(url) as ws:  # and one still open, mid-window
                await ws.send(json.dumps({"type": "start"}))
                await recv(ws)
                await send_audio(ws, clip[:3 * RATE])
                await read_all_sent(ws, [])  # the server holds an open window now
                proc.send_signal(signal.SIGTERM)
                # within the deadline: 0 is the status of a shutdown that finished; past it the server exits 3
                code = await asyncio.to_thread(proc.wait, 60)
        assert code == 0, (run, code, (tmp_path / f"{run}.log").read_text()[-2000:])


async def test_a_second_signal_exits_a_stuck_shutdown_at_once(tmp_path):
    log = tmp_path / "s.log"
    with server_process("--backend", "stuck", "--data-dir", str(tmp_path), module="tests.support.stuck_server",
                        log_path=log) as (url, proc):
        await stream_audio(load_16k("ldc93s1.wav"), RATE, url, speed=0)
        proc.send_signal(signal.SIGTERM)
        await until(lambda: "in close(), which never returns" in log.read_text(), timeout=30,
                    what="the flush done and close() stuck")
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        # at once: status 1 is the second signal's; the time is the point, bounded far below the shutdown deadline
        assert code == 1 and time.monotonic() - t0 < 10
    assert "second signal: exiting now, while closing the engine and the backend" in log.read_text()


async def test_a_stuck_shutdown_exits_non_zero_at_its_deadline_saying_what_hung(tmp_path):
    with server_process("--backend", "stuck", "--data-dir", str(tmp_path), "--set", "limits.shutdown_deadline_s=2",
                        module="tests.support.stuck_server", log_path=tmp_path / "s.log") as (url, proc):
        result = await stream_audio(load_16k("ldc93s1.wav"), RATE, url, speed=0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        # the time is the point: not before the 2 s deadline, and then soon (bounded 10x: the machine may be busy)
        assert code == 3 and 1.5 < time.monotonic() - t0 < 20
    log = (tmp_path / "s.log").read_text()
    assert "shutdown passed its deadline of 2 s while closing the engine and the backend" in log
    assert result.finals and result.finals[0]["text"]  # what was said was out before


async def test_viewers_joining_while_finals_are_published_miss_none(tmp_path):
    """200 viewers join a room at random moments while finals are published into it every few milliseconds (as a
    busy room's speakers would). A join that awaited the backlog's sends before registering (the old code) lost
    the finals published meanwhile. Each viewer must get every final, in order, none missing, from the backlog
    and then live, up to when it leaves."""
    cfg = load_config(None, {"server.port": 0, "server.data_dir": str(tmp_path), "rooms.backlog": 10_000,
                             "limits.max_connections_per_ip": 300})
    server = CaptionServer(cfg, Engine(FaultyBackend(), cfg.engine))
    await server.start()
    watch = f"ws://127.0.0.1:{server.port}/v1/watch?room=race"
    room = server.streams.rooms.get("race")
    published: list[int] = []
    rng = random.Random(7)
    joined = 0

    async def publisher() -> None:
        n = 0
        while joined < 200:
            room.publish(Final(n, 0.0, 1.0, "ask not", speaker="s", session="0123456789ab"))
            published.append(n)
            n += 1
            await asyncio.sleep(0.002)

    async def viewer(delay: float) -> tuple[int, list[int]]:
        nonlocal joined
        await asyncio.sleep(delay)
        before = len(published)
        got = []
        async with connect(watch, max_size=None) as ws:
            await recv(ws)  # watching
            while len(got) < before + 50:  # the backlog, then 50 live finals
                got.append((await recv(ws, timeout=30))["segment"])
        joined += 1
        return before, got

    try:
        _, *views = await asyncio.gather(publisher(), *(viewer(rng.uniform(0, 4)) for _ in range(200)))
    finally:
        await server.shutdown()
    for before, got in views:
        assert got == published[:len(got)], (before, [n for n in published[:len(got)] if n not in got][:5])


class SlowViewerSocket:
    """Just enough of a server-side websocket for watch(): every send yields to the event loop, as a send to a slow
    network does once its buffers are full. (On loopback they never fill, so the real test above cannot force the
    interleaving; this one does.)"""

    def __init__(self):
        self.sent: list[dict] = []
        self.closed = asyncio.Event()

    async def send(self, text: str) -> None:
        await asyncio.sleep(0)
        self.sent.append(json.loads(text))

    async def close(self, *args) -> None:
        self.closed.set()

    def __aiter__(self):
        return self

    async def __anext__(self):
        await self.closed.wait()
        raise StopAsyncIteration


async def test_a_joining_viewer_misses_no_final_even_when_its_sends_yield():
    from server.delivery.rooms import Rooms
    from server.streams.context import Live
    from server.streams.watch import watch

    ctx = SimpleNamespace(rooms=Rooms(backlog=10_000), cluster=None, live=Live())  # what watch() uses of it
    rng = random.Random(11)
    room = ctx.rooms.get("race")
    published: list[int] = []
    for n in range(50):
        room.publish(Final(n, 0.0, 1.0, "x"))
        published.append(n)
    for _ in range(200):  # 200 joins, each racing a random number of finals published while it joins
        ws = SlowViewerSocket()
        task = asyncio.create_task(watch(ctx, ws, "race"))
        for _ in range(rng.randint(0, 20)):
            await asyncio.sleep(0)
            n = len(published)
            room.publish(Final(n, 0.0, 1.0, "x"))
            published.append(n)
        for _ in range(10_000):  # let the viewer's sends drain (bounded: a missed final would never come)
            if len(ws.sent) >= 1 + len(published):
                break
            await asyncio.sleep(0)
        await ws.close()
        await task
        assert [m["segment"] for m in ws.sent[1:]] == published


async def test_a_stalled_backend_turns_unhealthy_fails_fast_and_piles_up_no_threads(tmp_path):
    backend = FaultyBackend(hang=[1], hang_s=12)
    cfg = load_config(None, {"server.port": 0, "server.data_dir": str(tmp_path), "engine.batch_timeout_s": 2,
                             "segmenter.partial_interval_s": 1000})
    server = CaptionServer(cfg, Engine(backend, cfg.engine))
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/v1/listen"
    try:
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "start"}))
            await recv(ws)
            clip = load_16k("ldc93s1.wav")
            await send_audio(ws, np.concatenate([clip, np.zeros(RATE, np.float32)]))  # one final: it hangs
            err = await recv(ws, timeout=10)
            assert err["code"] == "backend_error"
            report, status = health(server)
            assert status == 503 and report["status"] == "stalled" and "stuck" in report["reason"]
            threads = threading.active_count()
            for _ in range(3):  # later windows fail at once, not after the 2 s timeout each
                await send_audio(ws, np.concatenate([clip, np.zeros(RATE, np.float32)]))
            errors = []
            await collect_until(ws, lambda m: len([x for x in m if x["type"] == "error"]) >= 3, errors)
            # failed by the stall, without a call to the backend: not each after a timeout of its own
            stalled = [x for x in errors if x["type"] == "error"]
            assert all("stuck in one batch" in e["message"] for e in stalled), stalled
            assert backend.calls == 1
            assert threading.active_count() <= threads  # no thread per stalled batch
        async with connect(url) as ws:  # new streams are refused with a reason
            err = await recv(ws)
            assert err["code"] == "backend_stalled"
        with pytest.raises(ConnectionClosed) as closed:
            async with connect(url) as ws:
                await recv(ws)
                await recv(ws)
        assert closed.value.rcvd.code == 1013
        # the stuck call returns after 12 s: the server serves again
        await until(lambda: health(server)[1] == 200, timeout=60, what="the stuck call to return")
        after = await stream_audio(load_16k("ldc93s1.wav"), RATE, url, speed=0)
        assert after.finals[0]["text"] and not [m for m in after.messages if m["type"] == "error"]
    finally:
        await server.shutdown()
