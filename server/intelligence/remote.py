"""A generative LLM behind an OpenAI-compatible chat server that the user runs: vLLM, llama.cpp's llama-server,
Ollama, or anything else that speaks `POST {base}/chat/completions` with `"stream": true` server-sent events.

`intelligence.llm_url` is the API base (`http://127.0.0.1:8000/v1`); a URL that already ends in
`/chat/completions` is used as it is. Everything is asyncio on one aiohttp ClientSession, created lazily on the
running loop. Every failure -- unreachable, refused, rate-limited, timed out, malformed -- comes out as LLMError,
whose message is written for the client to read.
"""
from __future__ import annotations

import asyncio
import codecs
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any
from urllib.parse import urlsplit

import aiohttp

__all__ = ["LLMError", "RemoteLLM"]

_SUFFIX = "/chat/completions"
_OPEN, _CLOSE = "<think>", "</think>"
_LINE_BREAK = re.compile(r"\r\n|\n|\r")  # SSE lines end in any of the three


class LLMError(Exception):
    """The LLM could not answer: unreachable, refused, timed out, malformed. Message says why, for the client."""


class _ThinkStripper:
    """Drops a leading `<think>...</think>` block, and the whitespace around it, from streamed text.

    We ask for `enable_thinking: false` (Qwen3's chat-template switch), but a server may not pass it to the
    template (llama.cpp without --jinja, Ollama, an older vLLM) or the model may not honour it, and then a
    reasoning model streams its private chain of thought first. That is not the answer: shown to a meeting it is
    noise, and it would eat the client's screen and the summary's budget. Only a block at the very start is
    dropped (that is where reasoning models put it), so a transcript that merely mentions the tag is left alone.
    Text is held back only while it could still be the start of a tag."""

    def __init__(self) -> None:
        self.state = "start"  # start -> (thinking -> after ->) text
        self.buf = ""

    def feed(self, piece: str) -> str:
        self.buf += piece
        while True:
            if self.state == "start":
                head = self.buf.lstrip()
                if head.startswith(_OPEN):
                    self.state, self.buf = "thinking", head[len(_OPEN):]
                    continue
                if not head or _OPEN.startswith(head):
                    return ""  # only whitespace so far, or perhaps the first characters of "<think>"
                self.state, self.buf = "text", ""
                return head
            if self.state == "thinking":
                end = self.buf.find(_CLOSE)
                if end < 0:
                    self.buf = self.buf[-(len(_CLOSE) - 1):]  # what might be the start of "</think>"
                    return ""
                self.state, self.buf = "after", self.buf[end + len(_CLOSE):]
                continue
            if self.state == "after":
                head = self.buf.lstrip()
                self.buf = ""
                if head:
                    self.state = "text"
                return head
            out, self.buf = self.buf, ""
            return out

    def finish(self) -> str:
        """What was held back when the stream ended; raises LLMError if it ended inside the thinking block."""
        if self.state == "thinking":
            raise LLMError("the model spent its whole reply thinking (its <think> block never closed): raise the "
                           "token budget or turn thinking off on the LLM server")
        out, self.buf = (self.buf.strip() if self.state == "start" else self.buf), ""
        return out


def _error_text(raw: bytes) -> str:
    """The useful part of an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the text."""
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            text = err if isinstance(err, str) else json.dumps(err)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


class RemoteLLM:
    """An OpenAI-compatible chat server as this server's generative LLM. Deterministic (`temperature: 0`)."""

    def __init__(self, url: str, model: str = "", api_key: str = "", timeout_s: float = 60.0,
                 connect_timeout_s: float = 5.0, idle_timeout_s: float | None = None):
        """`timeout_s` bounds a whole request, `connect_timeout_s` the TCP connect, `idle_timeout_s` (default:
        `timeout_s`) the silence between two reads of the reply, the time to the first token included. An empty
        `model` means the server's first model from `GET {base}/models`; an empty `api_key` sends no
        Authorization header."""
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"intelligence.llm_url must be an http(s) URL like http://127.0.0.1:8000/v1, not {url!r}")
        if timeout_s <= 0 or connect_timeout_s <= 0 or (idle_timeout_s is not None and idle_timeout_s <= 0):
            raise ValueError("the LLM timeouts must be positive")
        self.url = url.rstrip("/")
        self._endpoint = self.url if self.url.endswith(_SUFFIX) else self.url + _SUFFIX
        self._base = self._endpoint.removesuffix(_SUFFIX)
        self.model = model
        self._model_known = bool(model)
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s or timeout_s
        # Qwen3's switch, passed by vLLM (and llama-server with --jinja) to the chat template, where templates
        # that don't use it ignore it; Ollama ignores unknown fields. A strict server that rejects it with 400/422
        # gets the request again without it, and never again after that (see _open).
        self._template_kwargs = True
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def name(self) -> str:
        return f"remote:{self.model or 'default'}@{self.url}"

    def __repr__(self) -> str:  # never the key
        return f"RemoteLLM({self.name!r})"

    # -- the API ---------------------------------------------------------------------------------------------

    async def stream(self, messages: list[dict], max_tokens: int) -> AsyncGenerator[str, None]:
        """The reply as text deltas, as the server streams them (stream=true SSE). Raises LLMError."""
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        try:
            async for piece in self._stream(messages, int(max_tokens)):
                yield piece
        except LLMError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            raise self._failure(e) from e

    async def complete(self, messages: list[dict], max_tokens: int) -> str:
        """The whole reply. Raises LLMError."""
        async with aclosing(self.stream(messages, max_tokens)) as pieces:
            return "".join([piece async for piece in pieces])

    async def models(self) -> list[str]:
        """The model ids the server offers (`GET {base}/models`). Raises LLMError."""
        try:
            async with self._http().get(self._base + "/models", headers=self._headers(),
                                        timeout=self._timeout()) as resp:
                if resp.status != 200:
                    raise self._status_error(resp.status, resp.headers, await resp.content.read(4096))
                data = await resp.json(content_type=None)
            return [m["id"] for m in data["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except LLMError:
            raise
        except (KeyError, TypeError) as e:
            raise LLMError(f"malformed model list from the LLM server at {self.url}") from e
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            raise self._failure(e) from e

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self._loop:  # a session can only be closed on the loop it was made on
                await session.close()

    # -- the work --------------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # trust_env=False: an HTTP(S)_PROXY meant for the internet must not capture a loopback LLM server
            self._session = aiohttp.ClientSession(trust_env=False)
            self._loop = loop
        return self._session

    def _headers(self, stream: bool = False) -> dict[str, str]:
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.timeout_s, connect=self.connect_timeout_s,
                                     sock_connect=self.connect_timeout_s, sock_read=self.idle_timeout_s)

    async def _resolve_model(self) -> None:
        """No model configured: use the server's first. A server without /models gets no `model` field."""
        if self._model_known:
            return
        try:
            ids = await self.models()
        except LLMError as e:
            if not isinstance(e.__cause__, (aiohttp.ClientConnectionError, TimeoutError)):
                ids = []  # it answered, just not with a model list: let the chat request speak for itself
            else:
                raise
        if ids and not self.model:
            self.model = ids[0]
        self._model_known = True

    async def _open(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """POST the request; the 200 response, whose release is the caller's. Other statuses become LLMError."""
        while True:
            payload = dict(body)
            if self._template_kwargs:
                payload["chat_template_kwargs"] = {"enable_thinking": False}
            resp = await self._http().post(self._endpoint, json=payload, headers=self._headers(stream=True),
                                           timeout=self._timeout())
            if resp.status == 200:
                return resp
            try:
                raw = await resp.content.read(8192)
            finally:
                resp.release()
            if resp.status in (400, 422) and self._template_kwargs and b"chat_template_kwargs" in raw:
                self._template_kwargs = False
                continue
            raise self._status_error(resp.status, resp.headers, raw)

    async def _stream(self, messages: list[dict], max_tokens: int) -> AsyncIterator[str]:
        await self._resolve_model()
        body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        if self.model:
            body = {"model": self.model, **body}
        think = _ThinkStripper()
        resp = await self._open(body)
        async with resp:
            if "text/event-stream" not in resp.headers.get("Content-Type", ""):
                # a server that ignored stream=true and sent the whole completion as one JSON body
                data = await resp.json(content_type=None)
                text = self._content(data, "message")
                if text is None:
                    raise LLMError(f"malformed reply from the LLM server at {self.url}: no choices[0].message")
                if out := think.feed(text):
                    yield out
            else:
                ended = False
                async for data in self._events(resp):
                    if data.strip() == "[DONE]":
                        ended = True
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise LLMError(f"malformed reply from the LLM server at {self.url}: an event that is not "
                                       f"JSON: {data[:80]!r}") from None
                    if isinstance(chunk, dict) and "error" in chunk:
                        raise LLMError(f"the LLM server failed mid-reply: "
                                       f"{_error_text(json.dumps(chunk).encode())}")
                    text = self._content(chunk, "delta")
                    if text and (out := think.feed(text)):
                        yield out
                    if self._finished(chunk):
                        ended = True  # some servers close after the finish_reason without a [DONE]
                if not ended:
                    raise LLMError(f"the LLM server at {self.url} closed the stream before the reply was finished")
        if out := think.finish():
            yield out

    @staticmethod
    async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
        """The `data` of each server-sent event: lines may end in CRLF, LF or CR and arrive split anywhere (even
        inside a UTF-8 character); `:` comments (keep-alives) and other fields are skipped; several `data:` lines
        make one event. For servers that leave out the blank line between events, a `data:` line that follows
        a complete JSON value (or [DONE]) starts a new event: a JSON value split over lines can't be complete
        before its last line."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        buf, data = "", list[str]()

        def complete(lines: list[str]) -> bool:
            joined = "\n".join(lines)
            if joined.strip() == "[DONE]":
                return True
            try:
                json.loads(joined)
                return True
            except ValueError:
                return False

        async for raw in resp.content.iter_any():
            buf += decoder.decode(raw)
            # a CR at the end may be the first half of a CRLF: keep it until the next read says
            work, tail = (buf[:-1], "\r") if buf.endswith("\r") else (buf, "")
            *lines, rest = _LINE_BREAK.split(work)
            buf = rest + tail
            for line in lines:
                if not line:
                    if data:
                        yield "\n".join(data)
                        data = []
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                if field != "data":
                    continue  # event:, id:, retry:
                if data and complete(data):
                    yield "\n".join(data)
                    data = []
                data.append(value[1:] if value.startswith(" ") else value)
        buf += decoder.decode(b"", final=True)
        for line in _LINE_BREAK.split(buf):
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
        if data:
            yield "\n".join(data)

    def _content(self, chunk: Any, key: str) -> str | None:
        """choices[0][key].content; None where there is none (a usage-only chunk, a role-only delta)."""
        if not isinstance(chunk, dict):
            raise LLMError(f"malformed reply from the LLM server at {self.url}: {str(chunk)[:80]!r}")
        choices = chunk.get("choices") or []
        if not isinstance(choices, list) or (choices and not isinstance(choices[0], dict)):
            raise LLMError(f"malformed reply from the LLM server at {self.url}: choices is not a list of objects")
        part = choices[0].get(key) if choices else None
        text = part.get("content") if isinstance(part, dict) else None
        return text if isinstance(text, str) else None

    @staticmethod
    def _finished(chunk: dict) -> bool:
        choices = chunk.get("choices") or []
        return bool(choices) and bool(choices[0].get("finish_reason"))

    # -- errors, for the client ------------------------------------------------------------------------------

    def _status_error(self, status: int, headers: Any, raw: bytes) -> LLMError:
        said = _error_text(raw)
        if status in (401, 403):
            sent = "" if self._api_key else "; no key was sent"
            return LLMError(f"the LLM server refused the key (HTTP {status}{sent}): {said}".removesuffix(": "))
        if status == 429:
            after = (headers.get("Retry-After") or "").strip()
            when = (f"retry after {after}s" if after.isdigit() else f"retry after {after}") if after \
                else "it gave no Retry-After"
            return LLMError(f"the LLM server is rate-limiting requests (HTTP 429), {when}: {said}".removesuffix(": "))
        hint = " (is intelligence.llm_url the API base, like http://127.0.0.1:8000/v1, and the model served?)" \
            if status == 404 else ""
        return LLMError(f"the LLM server answered HTTP {status}: {said or '(no body)'}{hint}")

    def _failure(self, e: BaseException) -> LLMError:
        if isinstance(e, aiohttp.ConnectionTimeoutError):
            return LLMError(f"the LLM server at {self.url} did not accept a connection within "
                            f"{self.connect_timeout_s:g}s")
        if isinstance(e, aiohttp.SocketTimeoutError):
            return LLMError(f"the LLM server at {self.url} sent nothing for {self.idle_timeout_s:g}s")
        if isinstance(e, TimeoutError):
            return LLMError(f"the LLM server at {self.url} did not finish its reply within {self.timeout_s:g}s")
        if isinstance(e, aiohttp.ClientConnectorError):
            err = e.os_error
            if isinstance(err, ConnectionRefusedError):
                why = "connection refused (is it running, on that port?)"
            elif err is not None and err.errno:
                why = os.strerror(err.errno).lower()  # asyncio's own strerror is "Connect call failed (...)"
            else:
                why = str(err or e)
            return LLMError(f"cannot reach the LLM server at {self.url}: {why}")
        if isinstance(e, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
            return LLMError(f"the connection to the LLM server at {self.url} broke: {e or type(e).__name__}")
        if isinstance(e, aiohttp.ContentTypeError) or (isinstance(e, ValueError)
                                                        and not isinstance(e, aiohttp.ClientError)):
            return LLMError(f"malformed reply from the LLM server at {self.url}: {e}")
        return LLMError(f"the request to the LLM server at {self.url} failed: {type(e).__name__}: {e}")
