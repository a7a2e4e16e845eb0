"""Stand-ins for the other side: a websocket peer of a test's own on a loop of its own (ThreadedPeer: the scripted,
stalled and recording servers subclass it), and the real Whisper backend with injected faults (FaultyBackend)."""
from __future__ import annotations

import asyncio
import threading
import time


class ThreadedPeer:
    """A websocket server on a free 127.0.0.1 port, run on an event loop of its own in a daemon thread, so that it
    answers whatever the test's own loop or thread is doing. A subclass writes `handler(ws)`, and may answer plain
    HTTP in `process_request` (websockets' hook; None goes on with the handshake). `url` is its /v1/listen,
    `http_url` its HTTP base; close() (or leaving a `with`) stops it."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._up = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)
        self.thread.start()
        assert self._up.wait(10), f"{type(self).__name__} did not start"

    async def handler(self, ws) -> None:
        raise NotImplementedError

    def process_request(self, connection, request):
        return None

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stop = asyncio.Event()
        async with serve(self.handler, "127.0.0.1", 0, process_request=self.process_request, max_size=None) as s:
            port = s.sockets[0].getsockname()[1]
            self.url, self.http_url = f"ws://127.0.0.1:{port}/v1/listen", f"http://127.0.0.1:{port}"
            self._up.set()
            await self._stop.wait()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FaultyBackend:
    """The real embedded backend with injected faults: batches number `fail` raise, number `hang` stall."""

    def __init__(self, fail=(), hang=(), hang_s=3.0):
        from server.backends.whisper import WhisperBackend

        self.inner = WhisperBackend()
        self.name, self.model, self.reason = "whisper", self.inner.model, "test: fault injection"
        self.uses_drafts, self.costly_batches = False, self.inner.costly_batches
        self.chat = None  # no LLM mode: "ask the meeting" is extractive
        self.calls = 0
        self.fail, self.hang, self.hang_s = set(fail), set(hang), hang_s

    def transcribe(self, audios, drafts=None, contexts=None, timed=None):
        self.calls += 1
        if self.calls in self.fail:
            raise RuntimeError("injected fault")
        if self.calls in self.hang:
            time.sleep(self.hang_s)  # the stall under test: a backend call that does not return
        return self.inner.transcribe(audios, drafts, contexts, timed)

    def decode_stats(self):
        return None

    def close(self):
        self.inner.close()
