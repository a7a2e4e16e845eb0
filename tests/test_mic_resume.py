"""client.mic's link resumes its session after a drop: a real server, and a TCP proxy of this test's own between
the two that cuts the connection mid-window without the server noticing anything but a dropped client. The
joined transcript must be an uninterrupted run's, with every segment once; a session the server will not resume
(a wrong token here; a restarted server in test_mic.py) gives a new session instead, with nothing lost."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from client.link import Backlog, CaptionLink

from .support.audio import RATE, heard, join_with_silence, wer
from .support.link import CLIPS, CUT, FRAME, PAUSES, run_link
from .support.peers import ThreadedPeer
from .support.servers import server_process
from .support.v1 import text
from .support.waits import until


class Proxy:
    """Forwards TCP connections from a free port on 127.0.0.1 to `port`, on the test's own event loop.

    cut() drops every connection at once: the client's side is aborted (a reset: its link sees a dead connection);
    the server's side gets a plain FIN after the bytes already forwarded, with no websocket close, so the server
    sees a client that vanished mid-stream and has read exactly the audio up to the chosen cut."""

    def __init__(self, port: int):
        self.upstream = port
        self.connections = 0
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[asyncio.Task]]] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1/listen"

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        pipes = [asyncio.create_task(self._pipe(client_r, server_w)),
                 asyncio.create_task(self._pipe(server_r, client_w))]
        self._pairs.append((client_w, server_w, pipes))
        await asyncio.gather(*pipes, return_exceptions=True)
        for w in (client_w, server_w):
            w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def cut(self) -> None:
        for client_w, server_w, pipes in self._pairs:
            for task in pipes:
                task.cancel()
            client_w.transport.abort()
            server_w.close()
        self._pairs.clear()

    async def close(self) -> None:
        await self.cut()
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server (Whisper tiny.en) with its transcripts in a data dir of the test's: (ws URL, data dir)."""
    data = tmp_path_factory.mktemp("data")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with server_process("--backend", "whisper", "--data-dir", str(data), log_path=log) as (url, _):
        yield url, data


def port_of(url: str) -> int:
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def stored(data: Path, session: str) -> list[dict]:
    return [json.loads(line) for line in (data / "sessions" / f"{session}.jsonl").read_text().splitlines()]


def proxy_cut(proxy: "Proxy", spoil_token: bool = False):
    """An interrupt for run_link: the proxy drops the connection (after spoiling the link's token, if asked)."""
    async def cut(link: CaptionLink) -> None:
        if spoil_token:
            link.ready["resume_token"] = "not-the-token"
        await proxy.cut()
    return cut


async def test_mic_link_resumes_after_a_drop_mid_window_and_equals_an_uninterrupted_run(server):
    """26 s (three clips, pauses between them) streamed, cut off inside jfk at a short pause between words while
    that window is open. The link resumes the session and resends from its last final's end: the joined
    transcript is the uninterrupted run's words, each segment once, no window overlapping the next, one session."""
    url, data = server
    audio, spans = join_with_silence(CLIPS, PAUSES)
    cut = CUT
    assert cut % FRAME == 0 and np.sqrt(np.mean(np.square(audio[cut - 1600:cut + 1600]))) < 0.02  # a pause
    whole, _, _, _ = await run_link(url, audio)
    proxy = Proxy(port_of(url))
    try:
        link, first_ready, shown, statuses = await run_link(await proxy.start(), audio, cut, proxy_cut(proxy))
    finally:
        await proxy.close()

    # one session, resumed once, over two connections
    assert proxy.connections == 2 and link.sessions == 1 and link.resumes == 1, statuses
    assert link.ready["session"] == first_ready["session"] and link.ready["resumed"] is True
    assert any(s.startswith("reconnected (session resumed)") for s in statuses), statuses
    # the window open at the cut was flushed by the server and sent again: shown once, kept once
    resent = [m for m in shown if m["type"] == "final" and m.get("resent")]
    assert [f["segment"] for f in resent] == [1], resent
    assert resent[0]["end"] == pytest.approx(cut / RATE) and resent[0]["text"].strip()
    assert [m["segment"] for m in shown if m["type"] == "final"] == [f["segment"] for f in link.finals]

    finals = link.finals
    assert [f["segment"] for f in finals] == list(range(len(finals)))  # each once, in order
    assert all(a["end"] <= b["start"] for a, b in zip(finals, finals[1:])), finals  # no overlap
    assert finals[0]["start"] < spans[0][0] + 0.5 and finals[-1]["end"] > spans[2][1] - 0.6  # no gap at the ends
    assert finals[-1]["end"] == pytest.approx(whole.finals[-1]["end"], abs=0.05)  # one clock: the stream's
    assert wer(text(whole.finals), text(finals)) == 0.0, (text(whole.finals), text(finals))
    assert heard("jfk_16k.wav", text([f for f in finals if spans[1][0] - 0.5 < f["start"] < spans[1][1]]), 0.25)
    # the server's transcript of the session: each segment once, as the client has them
    on_disk = stored(data, first_ready["session"])
    assert [(f["segment"], f["text"]) for f in on_disk] == [(f["segment"], f["text"]) for f in finals]
    print(f"\nuninterrupted: {len(whole.finals)} finals; resumed: {len(finals)} finals "
          f"(segment 1 flushed at the cut at {cut / RATE:.3f} s, resent), WER between them 0.0")


async def test_mic_link_starts_a_new_session_when_the_server_refuses_the_resume(server):
    """A resume the server refuses (a wrong token here; an unknown session after a restart in test_mic.py): the
    link starts a new session on the same connection, resends its backlog and shifts that session's captions onto
    the stream's clock and numbering, so nothing is lost or doubled on the client's side."""
    url, data = server
    audio, spans = join_with_silence(CLIPS, PAUSES)
    cut = CUT
    proxy = Proxy(port_of(url))
    try:
        link, first_ready, shown, statuses = await run_link(await proxy.start(), audio, cut,
                                                            proxy_cut(proxy, spoil_token=True))
    finally:
        await proxy.close()

    assert proxy.connections == 2 and link.sessions == 2 and link.resumes == 0, statuses
    assert link.ready["session"] != first_ready["session"] and not link.ready.get("resumed")
    assert any("not resumed (resume_refused: wrong resume_token" in s for s in statuses), statuses
    assert any(s.startswith("reconnected (new session)") for s in statuses), statuses
    finals = link.finals
    assert link.base == round(finals[0]["end"] * RATE)  # the new session began at the first final's end
    assert [f["segment"] for f in finals] == list(range(len(finals)))
    assert all(a["end"] <= b["start"] for a, b in zip(finals, finals[1:])), finals
    assert heard("lj001_0005.wav", finals[0]["text"], 0.25), finals[0]
    assert heard("jfk_16k.wav", text([f for f in finals if f["start"] < spans[1][1]][1:]), 0.25), finals
    assert heard("ldc93s1.wav", finals[-1]["text"], 0.5) and finals[-1]["end"] > spans[2][1] - 0.6, finals
    # the old session's transcript ends with the window flushed at the cut; the new one holds jfk from its start
    old, new = stored(data, first_ready["session"]), stored(data, link.ready["session"])
    assert [f["segment"] for f in old] == [0, 1] and old[1]["end"] == pytest.approx(cut / RATE)
    assert [f["text"] for f in new] == [f["text"] for f in finals[1:]]


# --- the dedupe, against a scripted peer: finals sent again after a resume are kept once ------------------------

class ScriptedServer(ThreadedPeer):
    """A websocket peer: the first connection gets `ready` (with a resume token) and final 0 (0-1 s), and is cut once
    2 s of audio have come and `cut_when()` holds; a resume gets `ready` and finals 0 and 1 again (`resent`), then on
    `stop` final 2 and `end`. Keeps each connection's `start`. `busy_once`: the first resume is refused as a busy
    server refuses (`overloaded`, close 1013)."""

    def __init__(self, busy_once: bool = False):
        self.starts: list[dict] = []
        self.busy_once = busy_once
        # The cut is an abort (RST), which may discard a final the client has not read yet; the test says when
        # the client has read final 0, so what it checks (the resume offset) is not left to timing.
        self.cut_when: Callable[[], bool] = lambda: True
        super().__init__()

    @staticmethod
    def final(segment: int, start: float, end: float, **extra) -> str:
        return json.dumps({"type": "final", "segment": segment, "start": start, "end": end,
                           "text": f"words {segment}", **extra})

    async def handler(self, ws) -> None:
        start = json.loads(await ws.recv())
        self.starts.append(start)
        ready = {"type": "ready", "session": "0123456789ab", "resume_token": "secret", "backend": "scripted",
                 "model": "none"}
        if "resume" not in start:
            await ws.send(json.dumps(ready))
            await ws.send(self.final(0, 0.0, 1.0))
            audio = 0
            async for msg in ws:
                audio += len(msg) // 2 if isinstance(msg, bytes) else 0
                if audio >= 2 * RATE:
                    await until(self.cut_when, timeout=20, what="the client to read final 0")
                    ws.transport.abort()
                    return
        if self.busy_once:
            self.busy_once = False
            await ws.send(json.dumps({"type": "error", "code": "overloaded", "message": "try later"}))
            await ws.close(1013, "overloaded")
            return
        await ws.send(json.dumps({**ready, "resumed": True, "position": start["offset"] / RATE}))
        await ws.send(self.final(0, 0.0, 1.0, resent=True))  # one the client holds
        await ws.send(self.final(1, 1.0, 2.0, resent=True))  # one it never got
        async for msg in ws:
            if isinstance(msg, str) and json.loads(msg)["type"] == "stop":
                await ws.send(self.final(2, 2.0, 3.0))
                await ws.send(json.dumps({"type": "end"}))
                return


async def stream_3s_through(link: CaptionLink, peer: ScriptedServer) -> None:
    """3 s of audio through the link to the scripted peer (which cuts it after 2 s), until it has resumed and ended."""
    peer.cut_when = lambda: link.final_upto >= RATE  # read from the peer's thread: a plain int
    try:
        runner = asyncio.create_task(link.run(await link.connect()))
        link.backlog.append(np.zeros(3 * RATE, "<i2"))
        link.wake()
        await until(lambda: link.resumes == 1, timeout=20, what="the resume")
        link.finish()
        await asyncio.wait_for(runner, timeout=20)
    finally:
        peer.close()


async def test_mic_link_keeps_a_resent_final_once_and_resumes_from_its_last_final():
    peer = ScriptedServer()
    shown, statuses = [], []
    link = CaptionLink(peer.url, Backlog(max_s=30), shown.append, statuses.append, room="r1", context="Ada",
                       backoff=(0.1, 0.5))
    await stream_3s_through(link, peer)
    first, again = peer.starts
    assert first == {"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1,
                     "context": "Ada", "room": "r1"}
    # the resume keeps the room and the context, and resends from where final 0 ended
    assert again == {**first, "resume": "0123456789ab", "resume_token": "secret", "offset": RATE}
    assert [(f["segment"], f["text"]) for f in link.finals] == [(0, "words 0"), (1, "words 1"), (2, "words 2")]
    assert [m["segment"] for m in shown if m["type"] == "final"] == [0, 1, 2]  # final 0 shown once
    assert link.sessions == 1 and link.base == 0 and link.final_upto == 3 * RATE


async def test_mic_link_waits_out_a_busy_server_and_still_resumes():
    """A reconnect refused with "not now" (overloaded, backend_stalled, ...: close 1013) is retried with backoff,
    the audio held meanwhile; it is not the end of the stream."""
    peer = ScriptedServer(busy_once=True)
    shown, statuses = [], []
    link = CaptionLink(peer.url, Backlog(max_s=30), shown.append, statuses.append, backoff=(0.1, 0.5))
    await stream_3s_through(link, peer)
    assert len(peer.starts) == 3 and all("resume" in s for s in peer.starts[1:])
    assert any("cannot take the stream now (overloaded" in s for s in statuses), statuses
    assert [f["segment"] for f in link.finals] == [0, 1, 2] and link.sessions == 1
