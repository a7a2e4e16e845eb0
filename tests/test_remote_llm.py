"""server.intelligence.remote.RemoteLLM against tests.support.llm_standin, a stand-in OpenAI-compatible server (not a
model) on loopback: streaming, what is sent, keys, errors, timeouts, <think> stripping, SSE parsing."""
import asyncio
import time

import aiohttp
import pytest

from server.intelligence.remote import LLMError, RemoteLLM, _ThinkStripper

from .support.llm_standin import standin, standin_in_thread
from .support.servers import free_port

TRANSCRIPT = "[0.0s S1#1] Good morning, everyone — café first.\n[12.3s S2#2] Let's ship the release on Friday."
QUESTION = "What did they decide?"


def messages() -> list[dict]:
    return [{"role": "system", "content": "Answer from the transcript only."},
            {"role": "user", "content": f"Transcript:\n{TRANSCRIPT}\n\nQuestion: {QUESTION}"}]


async def collect(llm: RemoteLLM, max_tokens: int = 64) -> list[str]:
    return [piece async for piece in llm.stream(messages(), max_tokens)]


async def test_stream_matches_the_non_streamed_reply_and_sends_the_request():
    async with standin(chunks=5) as s:
        llm = RemoteLLM(s.url, "standin-echo", timeout_s=5)
        try:
            pieces = await collect(llm, 64)
            async with aiohttp.ClientSession() as http:  # the stand-in's own non-streamed answer
                async with http.post(s.url + "/chat/completions",
                                     json={"messages": messages(), "max_tokens": 64}) as r:
                    whole = (await r.json())["choices"][0]["message"]["content"]
            assert len(pieces) >= 3
            assert "".join(pieces) == whole == "Stand-in reply: [0.0s S1#1] Good morning, everyone — café first."
            assert await llm.complete(messages(), 64) == whole

            sent = s.requests[0]
            assert sent["messages"] == messages() and TRANSCRIPT in sent["messages"][-1]["content"]
            assert QUESTION in sent["messages"][-1]["content"]
            assert sent["model"] == "standin-echo" and sent["max_tokens"] == 64 and sent["stream"] is True
            assert sent["temperature"] == 0 and sent["chat_template_kwargs"] == {"enable_thinking": False}
            assert "Authorization" not in s.calls[0]["headers"]  # no key, no header
            assert llm.name == f"remote:standin-echo@{s.url}"
        finally:
            await llm.close()


async def test_max_tokens_is_the_budget():
    async with standin() as s:
        llm = RemoteLLM(s.url, "standin-echo", timeout_s=5)
        try:
            assert await llm.complete(messages(), 3) == "Stand-in reply: [0.0s"
            assert s.requests[-1]["max_tokens"] == 3
        finally:
            await llm.close()


async def test_the_key_is_a_bearer_header_and_a_wrong_key_is_refused():
    async with standin(api_key="sekrit") as s:
        good = RemoteLLM(s.url, "standin-echo", api_key="sekrit", timeout_s=5)
        bad = RemoteLLM(s.url, "standin-echo", api_key="wrong", timeout_s=5)
        none = RemoteLLM(s.url, "standin-echo", timeout_s=5)
        try:
            assert (await good.complete(messages(), 64)).startswith("Stand-in reply:")
            assert s.calls[-1]["headers"]["Authorization"] == "Bearer sekrit"
            with pytest.raises(LLMError, match="refused the key"):
                await bad.complete(messages(), 64)
            with pytest.raises(LLMError, match="refused the key.*no key was sent"):
                await none.complete(messages(), 64)
            assert "sekrit" not in repr(good) and "sekrit" not in good.name
        finally:
            for llm in (good, bad, none):
                await llm.close()


async def test_429_carries_retry_after_and_500_its_status_and_message():
    async with standin(fail_status=429, retry_after="7") as s:
        llm = RemoteLLM(s.url, "standin-echo", timeout_s=5)
        try:
            with pytest.raises(LLMError, match=r"429.*retry after 7s") as caught:
                await llm.complete(messages(), 64)
            assert "told to answer 429" in str(caught.value)
            s.fail_status, s.retry_after = 500, None
            with pytest.raises(LLMError, match=r"HTTP 500: stand-in: told to answer 500"):
                async for _ in llm.stream(messages(), 64):
                    pass
            s.fail_status = None  # and it recovers
            assert (await llm.complete(messages(), 64)).startswith("Stand-in reply:")
        finally:
            await llm.close()


@pytest.mark.parametrize("where", ["headers", "stream"])
async def test_a_stalled_server_times_out(where):
    async with standin(stall=where) as s:
        llm = RemoteLLM(s.url, "standin-echo", timeout_s=0.6, idle_timeout_s=0.3)
        try:
            start, got = time.monotonic(), []
            with pytest.raises(LLMError, match="sent nothing for 0.3s|within 0.6s"):
                async for piece in llm.stream(messages(), 64):
                    got.append(piece)
            assert time.monotonic() - start < 6  # the time is the point: bounded 10x the 0.6 s timeout
            assert bool(got) == (where == "stream")  # the first delta came before the stall
        finally:
            await llm.close()


async def test_a_total_timeout_bounds_a_trickling_reply():
    async with standin(chunks=40, chunk_delay_s=0.05) as s:  # 2 s in all, never 0.3 s silent
        llm = RemoteLLM(s.url, "standin-echo", timeout_s=0.4, idle_timeout_s=0.3)
        try:
            got = []
            with pytest.raises(LLMError, match=r"did not finish its reply within 0.4s"):
                async for piece in llm.stream(messages(), 64):
                    got.append(piece)
            assert 1 < len(got) < 40  # cut short by the bound, before the 2 s reply's end
        finally:
            await llm.close()


async def test_an_unreachable_url_is_a_clear_error():
    port = free_port()  # free a moment ago, no listener now
    llm = RemoteLLM(f"http://127.0.0.1:{port}/v1", "m", timeout_s=2, connect_timeout_s=1)
    try:
        with pytest.raises(LLMError, match=rf"cannot reach the LLM server at {llm.url}: connection refused"):
            await llm.complete(messages(), 64)
    finally:
        await llm.close()
    with pytest.raises(ValueError, match="llm_url"):
        RemoteLLM("127.0.0.1:8000/v1")


async def test_a_think_block_is_stripped():
    async with standin(think=True, chunks=9) as s:
        llm = RemoteLLM(s.url, "standin-echo", timeout_s=5)
        try:
            pieces = await collect(llm)
            assert "".join(pieces) == s.reply_for(s.requests[-1])
            assert not any("think" in p for p in pieces)
            assert await llm.complete(messages(), 64) == s.reply_for(s.requests[-1])
        finally:
            await llm.close()


def test_the_think_stripper_one_character_at_a_time():
    for text, want in [("<think>\nhmm </thi</think>\n\nThe answer.", "The answer."),
                       ("  The <think> answer.", "The <think> answer."),
                       ("<thinking aloud", "<thinking aloud"), ("<thi", "<thi"), ("", "")]:
        strip = _ThinkStripper()
        assert "".join(strip.feed(c) for c in text) + strip.finish() == want
    strip = _ThinkStripper()
    strip.feed("<think> and the budget ran out")
    with pytest.raises(LLMError, match="thinking"):
        strip.finish()


async def test_no_model_means_the_servers_first_and_a_strict_server_gets_no_template_kwargs():
    async with standin(model="served-model", reject_fields=("chat_template_kwargs",)) as s:
        llm = RemoteLLM(s.url + "/", timeout_s=5)  # a trailing slash is fine
        try:
            assert (await llm.complete(messages(), 64)).startswith("Stand-in reply:")
            assert llm.model == "served-model" and llm.name == f"remote:served-model@{s.url}"
            assert "chat_template_kwargs" in s.requests[0] and "chat_template_kwargs" not in s.requests[1]
            assert s.requests[1]["model"] == "served-model"
            await llm.complete(messages(), 64)
            assert len(s.requests) == 3  # remembered: no second rejected try
        finally:
            await llm.close()


async def _raw_server(body: bytes, content_type: str = "text/event-stream"):
    """A one-answer HTTP server that writes `body` as it is, in small pieces: SSE as other servers write it."""
    from aiohttp import web

    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        for i in range(0, len(body), 7):
            await resp.write(body[i:i + 7])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


def _chunk(text: str | None = None, finish: str | None = None) -> str:
    import json
    delta = {} if text is None else {"content": text}
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


@pytest.mark.parametrize("name,body,want", [
    ("crlf, comments, other fields, multi-line data",
     f": ping\r\nevent: message\r\nid: 1\r\ndata: {_chunk('Hé')}\r\n\r\nretry: 10\r\n"
     f"data: {{\"choices\": [{{\"index\": 0,\r\ndata:  \"delta\": {{\"content\": \"llo\"}}}}]}}\r\n\r\n"
     "data: [DONE]\r\n\r\n", "Héllo"),
    ("no blank lines between events, usage chunk, no [DONE] after finish_reason",
     f"data: {_chunk('a')}\ndata: {_chunk('b')}\ndata: {{\"choices\": [], \"usage\": {{}}}}\n"
     f"data:{_chunk(None, 'stop')}\n", "ab"),
    ("bare CR line ends", f"data: {_chunk('x')}\r\rdata: {_chunk('y')}\r\rdata: [DONE]\r\r", "xy"),
])
async def test_sse_parsing(name, body, want):
    runner, url = await _raw_server(body.encode())
    llm = RemoteLLM(url, "m", timeout_s=5)
    try:
        assert await llm.complete(messages(), 64) == want, name
    finally:
        await llm.close()
        await runner.cleanup()


@pytest.mark.parametrize("body,match", [
    (f"data: {_chunk('half')}\n\n", "closed the stream before the reply was finished"),
    ("data: {not json\n\n", "malformed reply"),
    ('data: {"error": {"message": "CUDA out of memory"}}\n\n', "failed mid-reply: CUDA out of memory"),
])
async def test_broken_streams_are_llm_errors(body, match):
    runner, url = await _raw_server(body.encode())
    llm = RemoteLLM(url, "m", timeout_s=5)
    try:
        with pytest.raises(LLMError, match=match):
            await llm.complete(messages(), 64)
    finally:
        await llm.close()
        await runner.cleanup()


async def test_a_server_that_ignores_stream_true():
    import json
    body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"},
                                    "finish_reason": "stop"}]})
    runner, url = await _raw_server(body.encode(), "application/json")
    llm = RemoteLLM(url, "m", timeout_s=5)
    try:
        assert [p async for p in llm.stream(messages(), 64)] == ["whole"]
    finally:
        await llm.close()
        await runner.cleanup()


def test_the_threaded_standin_for_sync_tests():
    with standin_in_thread() as s:
        async def ask() -> str:
            llm = RemoteLLM(s.url, timeout_s=5)
            try:
                return await llm.complete(messages(), 64)
            finally:
                await llm.close()

        assert asyncio.run(ask()).startswith("Stand-in reply: [0.0s S1#1]")
        assert [r["model"] for r in s.requests] == ["standin-echo"]  # one request, recorded from its own thread
