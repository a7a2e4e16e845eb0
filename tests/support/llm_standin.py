"""A STAND-IN for an OpenAI-compatible chat server, for tests. It is NOT a model and generates nothing.

It speaks just enough of the OpenAI chat API, on aiohttp on a free loopback port, for `server.intelligence.remote`
and the server's "ask the meeting" path to be tested with no GPU, no weights and no network:

- `POST /v1/chat/completions`: a JSON `chat.completion`, or with `"stream": true` server-sent events
  (`data: {chat.completion.chunk}` lines with `choices[0].delta.content`, then `data: [DONE]`);
- `GET /v1/models`: one model, `model` (default "standin-echo").

Its reply is deterministic and made from the request, so a test can tell what was sent: `phrase` ("Stand-in
reply:") then the first transcript line (`[12.3s S1#4] text`) found in the last user message, or "(no transcript
line)". Words count as tokens: a reply longer than `max_tokens` words is cut there, with finish_reason "length".
The stream is split into `chunks` deltas (cut mid-word on purpose), each event written in two pieces (mid-UTF-8
where the text allows) after a `: keep-alive` comment, so the client's SSE parser is exercised as a real server
would.

It records every chat request body in `requests` (and every call, with its headers, in `calls`), and its
behaviour can be changed between requests by setting attributes: `api_key` (demand `Authorization: Bearer
<key>`, else 401), `fail_status` / `retry_after` (answer that status, e.g. 429 with Retry-After, or 500),
`stall` ("headers": accept and never answer; "stream": send the first delta, then nothing), `think` (a
`<think>...</think>` block before the reply), `reject_fields` (answer 400 naming such a field, like a strict
server).

From an async test:

    async with standin(api_key="k") as s:
        llm = RemoteLLM(s.url, "standin-echo", "k")        # s.url == "http://127.0.0.1:<port>/v1"
        ...
        assert s.requests[-1]["max_tokens"] == 64

From a sync test (e.g. next to a server subprocess): `with standin_in_thread() as s: ...`, the same object run
on its own loop in a thread. By hand: `python -m tests.support.llm_standin --port 8000`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from aiohttp import web

LINE = re.compile(r"^\[\d+(?:\.\d+)?s [^\]]*\] .*$", re.MULTILINE)  # "[12.3s S1#4] text"


class LLMStandin:
    """See the module docstring. Start with `await s.start()` (or `standin()`), stop with `await s.stop()`."""

    def __init__(self, *, model: str = "standin-echo", phrase: str = "Stand-in reply:", chunks: int = 4,
                 api_key: str | None = None, fail_status: int | None = None, retry_after: str | None = None,
                 stall: str | None = None, think: bool = False, reject_fields: tuple[str, ...] = (),
                 chunk_delay_s: float = 0.0):
        self.model, self.phrase, self.chunks = model, phrase, chunks
        self.api_key, self.fail_status, self.retry_after = api_key, fail_status, retry_after
        self.stall, self.think, self.reject_fields = stall, think, set(reject_fields)
        self.chunk_delay_s = chunk_delay_s
        self.requests: list[dict] = []  # every POST /v1/chat/completions body, as parsed JSON, in order
        self.calls: list[dict] = []  # every request: {"method", "path", "headers", "body"}
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None  # set on stop: stalled handlers return

    @property
    def url(self) -> str:
        """The API base to give RemoteLLM / intelligence.llm_url."""
        return f"http://127.0.0.1:{self.port}/v1"

    def reply_for(self, body: dict) -> str:
        """The whole reply the stand-in gives to this request body, before any max_tokens cut: for assertions."""
        users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content", "") if users else ""
        if isinstance(content, list):  # OpenAI's content parts
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        found = LINE.search(content if isinstance(content, str) else "")
        return f"{self.phrase} {found.group(0) if found else '(no transcript line)'}"

    # -- life ------------------------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> LLMStandin:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._release is not None:
            self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers --------------------------------------------------------------------------------------------

    def _refusal(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "stand-in: invalid API key", "type": "invalid_request_error",
                                                "code": "invalid_api_key"}}, status=401)
        if self.fail_status is not None:
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return web.json_response({"error": {"message": f"stand-in: told to answer {self.fail_status}",
                                                "type": "standin", "code": self.fail_status}},
                                     status=self.fail_status, headers=headers)
        return None

    async def _models(self, request: web.Request) -> web.Response:
        self.calls.append({"method": "GET", "path": request.path, "headers": dict(request.headers), "body": None})
        if (refused := self._refusal(request)) is not None:
            return refused
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "llm-standin"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        self.calls.append({"method": "POST", "path": request.path, "headers": dict(request.headers), "body": body})
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return web.json_response({"error": {"message": "stand-in: the body needs a messages list"}}, status=400)
        self.requests.append(body)
        if (refused := self._refusal(request)) is not None:
            return refused
        for field in sorted(self.reject_fields & body.keys()):
            return web.json_response({"error": {"message": f"stand-in: unrecognized request argument: {field}"}},
                                     status=400)
        if self.stall == "headers":
            await self._release.wait()
            raise web.HTTPServiceUnavailable()

        words = self.reply_for(body).split(" ")
        budget = body.get("max_tokens")
        finish = "stop"
        if isinstance(budget, int) and 0 < budget < len(words):
            words, finish = words[:budget], "length"
        text = " ".join(words)
        if self.think:
            text = "<think>\nThe stand-in pretends to reason about the meeting.\n</think>\n\n" + text
        ident, created = f"chatcmpl-standin-{len(self.requests)}", int(time.time())
        model = body.get("model") or self.model

        if not body.get("stream"):
            return web.json_response({
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": 0, "completion_tokens": len(words), "total_tokens": len(words)}})

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def event(delta: dict, finish_reason: str | None = None) -> None:
            chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            raw = f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
            for piece in (raw[:len(raw) // 2], raw[len(raw) // 2:]):  # split anywhere, even mid-character
                await resp.write(piece)
                await asyncio.sleep(0)

        await resp.write(b": keep-alive\n\n")
        await event({"role": "assistant", "content": ""})
        n = max(1, min(self.chunks, len(text)))
        cuts = [round(i * len(text) / n) for i in range(n + 1)]
        for i in range(n):
            if i and self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            await event({"content": text[cuts[i]:cuts[i + 1]]})
            if self.stall == "stream":
                await self._release.wait()
                return resp
        await event({}, finish)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@asynccontextmanager
async def standin(**options: Any) -> AsyncIterator[LLMStandin]:
    """`async with standin(api_key="k", ...) as s:` a started stand-in on a free loopback port; `s.url`,
    `s.requests`. Options are LLMStandin's; its attributes can be changed inside the block."""
    s = LLMStandin(**options)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@contextmanager
def standin_in_thread(**options: Any) -> Iterator[LLMStandin]:
    """`with standin_in_thread() as s:` the same stand-in on its own event loop in a daemon thread, for sync tests
    (e.g. one driving a server subprocess). Read `s.requests` only after the request it records has finished."""
    s = LLMStandin(**options)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(s.start())
        except BaseException as e:  # noqa: BLE001 - reported to the starting thread
            failure.append(e)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="llm-standin", daemon=True)
    thread.start()
    started.wait(10)
    if failure or not s.port:
        raise RuntimeError(f"the LLM stand-in did not start: {failure[0] if failure else 'timeout'}")
    try:
        yield s
    finally:
        asyncio.run_coroutine_threadsafe(s.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A STAND-IN OpenAI-compatible chat server (not a model), for tests.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="standin-echo")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--think", action="store_true")
    args = parser.parse_args()

    async def serve() -> None:
        s = await LLMStandin(model=args.model, api_key=args.api_key, think=args.think).start(args.port)
        print(f"LLM stand-in (not a model) at {s.url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await s.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
