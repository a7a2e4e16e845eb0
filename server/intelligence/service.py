"""Ask the meeting: answers and rolling summaries over a transcript, in one of two modes.

- **generative**: an LLM writes the answer from the transcript (prompt.py): Canary-Qwen's own Qwen3 with its
  LoRA off (salm_llm.py, on the engine that captions), or an OpenAI-compatible server of the user's
  (`intelligence.llm_url`, remote.py). It cites the lines it used by their tags.
- **extractive** (no generative model: Whisper or sphinx on a CPU, offline): the answer is the transcript
  passages that best match the question, the summary the most central passages (extractive.py).

The policy: captions always come first. Every piece of model work here (embedding a slice of passages, a prefill,
a few decode steps) runs in the engine's lowest-priority lane (Engine.run_low): only when no caption window is
queued, one slice between caption batches. At most `max_concurrent_asks` asks and summary refreshes run at once;
past that, callers get Busy (HTTP 429, Retry-After). A remote LLM costs this machine nothing but the wait.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from ..backends import ChatModel
from ..config import IntelligenceConfig
from ..core.engine import Engine
from . import extractive, prompt
from .remote import LLMError, RemoteLLM

log = logging.getLogger(__name__)

EMBED_SLICE = 16  # passages embedded per low-priority slice (~30 ms of CPU for MiniLM)
DECODE_SLICE = 4  # LLM tokens decoded per low-priority slice: a final waits at most this many steps behind it
REMOTE_CHARS_PER_TOKEN = 4  # a remote model's tokenizer is unknown: its budget is counted at ~4 characters a token


class Busy(Exception):
    """Too many asks at once: try again after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"too many questions at once: retry after {retry_after} s")
        self.retry_after = retry_after


class Unavailable(Exception):
    """This server cannot answer (intelligence.mode off, or the model failed): the message says why."""


@dataclass
class Summary:
    mode: str
    text: str
    citations: list[dict]
    finals: int  # how many finals it covers
    updated_at: float  # time.time()
    refreshed: float = field(default=0.0, repr=False)  # time.monotonic() of its computation


def _cite(p: extractive.Passage, score: float | None = None) -> dict:
    c = {"session": p.session, "segment": p.segment, "start": round(p.start, 2), "end": round(p.end, 2),
         "text": p.text}
    if p.speaker:
        c["speaker"] = p.speaker
    if score is not None:
        c["score"] = round(float(score), 4)
    return c


class LocalLLM:
    """Canary-Qwen's Qwen3 with the adapter off, run slice by slice in the engine's lowest-priority lane."""

    def __init__(self, engine: Engine, chat: ChatModel):
        from .salm_llm import LlmJob  # imports torch: only servers with SALM get here

        self._engine, self._chat, self._job = engine, chat, LlmJob
        self.name = f"{chat.model} (LLM mode: LoRA off)"

    def count_tokens(self, text: str) -> int:
        return len(self._chat.tokenizer.encode(text, add_special_tokens=False))

    async def stream(self, messages: list[dict], max_tokens: int) -> AsyncIterator[str]:
        # Built in the lane too: it tokenizes the whole prompt (thousands of tokens), not work for the event loop.
        job = await self._engine.run_low(self._job, self._chat, messages, max_tokens)
        try:
            text = await self._engine.run_low(job.prefill)
            while True:
                if text:
                    yield text
                if job.done:
                    break
                text = await self._engine.run_low(job.step, DECODE_SLICE)
        finally:
            job.close()  # its KV cache (112 KiB a token at full size) goes now, also when the ask was given up

    async def close(self) -> None:
        pass


class Intelligence:
    def __init__(self, cfg: IntelligenceConfig, engine: Engine):
        self.cfg, self.engine = cfg, engine
        self.llm: RemoteLLM | LocalLLM | None = None
        mode = cfg.mode
        chat = engine.backend.chat  # declared by every backend (backends.Backend)
        if mode in ("auto", "generative") and cfg.llm_url:
            self.llm = RemoteLLM(cfg.llm_url, cfg.llm_model, os.environ.get(cfg.llm_api_key_env, ""),
                                 timeout_s=cfg.llm_timeout_s)
        elif mode in ("auto", "generative") and chat is not None:
            self.llm = LocalLLM(engine, chat)
        elif mode == "generative":
            raise ValueError("intelligence.mode generative needs intelligence.llm_url or the SALM backend "
                             f"(this server runs {engine.backend.name}, which has no LLM)")
        self.mode = "off" if mode == "off" else "generative" if self.llm is not None else "extractive"
        self._embedder: extractive.Embedder | None = None
        self._loading: asyncio.Task | None = None
        self._running = 0
        self._durations: list[float] = []  # recent asks' seconds, for Retry-After
        self._summaries: dict[str, Summary] = {}
        self._refreshing: dict[str, asyncio.Task] = {}

    @property
    def name(self) -> str:
        if self.llm is not None:  # generative
            return self.llm.name
        return self._embedder.name if self._embedder else "all-MiniLM-L6-v2 (not loaded yet)"

    def describe(self) -> dict:
        return {"mode": self.mode, "model": self.name, "asks_running": self._running,
                "max_concurrent_asks": self.cfg.max_concurrent_asks}

    async def start(self) -> None:
        """Nothing to load yet: extractive mode loads its embedding model (sentence-transformers and 91 MB of
        weights: ~5 s of CPU, ~150 MB) on the first ask or summary, in a thread, so that a server nobody asks never
        pays for it. `intelligence.preload` loads it at start instead (in the background: captions do not wait)."""
        if self.mode == "extractive" and self.cfg.preload:
            self._loading = asyncio.create_task(self._load_embedder())

    async def close(self) -> None:
        for task in [*self._refreshing.values(), *([self._loading] if self._loading else [])]:
            task.cancel()
        if self.llm is not None:
            await self.llm.close()

    # -- admission ------------------------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self._running >= self.cfg.max_concurrent_asks

    def busy(self) -> Busy:
        """Busy, with a Retry-After of the recent asks' median length (at least a second)."""
        recent = sorted(self._durations[-20:])
        return Busy(max(1, math.ceil(recent[len(recent) // 2] if recent else 1.0)))

    def check(self) -> None:
        """Raises what an ask started now would be refused with: Unavailable (mode off) or Busy."""
        if self.mode == "off":
            raise Unavailable("asking is switched off on this server (intelligence.mode: off)")
        if self.full:
            raise self.busy()

    def _admit(self) -> None:
        self.check()
        self._running += 1

    def _release(self, started: float) -> None:
        self._running -= 1
        self._durations = [*self._durations[-19:], time.monotonic() - started]

    # -- asking ---------------------------------------------------------------------------------------------

    async def ask(self, key: str, question: str, lines: list[dict],
                  on_token: Callable[[str], Awaitable[None]] | None = None) -> dict:
        """The answer to `question` over the transcript `lines` (the finals of transcript `key`: a room or a
        session), with its citations. `on_token`: each piece of a generative answer as it is decoded. Raises
        Busy, Unavailable."""
        self._admit()
        started = time.monotonic()
        try:
            work = self._ask_llm(key, question, lines, on_token) if self.mode == "generative" else \
                self._ask_passages(question, lines)
            answer = await asyncio.wait_for(work, self.cfg.ask_timeout_s)
        except asyncio.TimeoutError:
            # Captions come first: under a load that keeps the engine busy, asks wait, and past this they give up.
            raise Unavailable(f"no answer within {self.cfg.ask_timeout_s:g} s: the server is busy captioning "
                              "(captions come first); try again later") from None
        finally:
            self._release(started)
        return {"mode": self.mode, "question": question, **answer, "model": self.name,
                "lines": len(lines), "seconds": round(time.monotonic() - started, 3)}

    async def _ask_passages(self, question: str, lines: list[dict]) -> dict:
        embedder = await self._embedder_ready()
        items = extractive.passages(lines)
        await self._embed(embedder, [p.text for p in items] + [question])
        ranked = await self.engine.run_low(extractive.rank, embedder, question, items, self.cfg.top_k)
        citations = [_cite(p, score) for p, score in ranked]
        return {"answer": ranked[0][0].text if ranked else "", "citations": citations}

    async def _ask_llm(self, key: str, question: str, lines: list[dict], on_token) -> dict:
        summary = self._summaries.get(key)  # what the prompt's cut leaves out, as far as it is summarised
        # Counting the tokens of a long transcript takes milliseconds: not on the event loop.
        messages = await asyncio.to_thread(prompt.ask_messages, question, lines, self.cfg.context_tokens,
                                           self._count, summary=summary.text if summary else None)
        text = await self._generate(messages, on_token)
        return {"answer": text, "citations": self._cited(text, lines)}

    async def _generate(self, messages: list[dict], on_token=None) -> str:
        pieces = []
        assert self.llm is not None, "generative mode has a model"
        try:
            async for piece in self.llm.stream(messages, self.cfg.max_answer_tokens):
                pieces.append(piece)
                if on_token is not None:
                    await on_token(piece)
        except LLMError as exc:
            raise Unavailable(str(exc)) from exc
        return "".join(pieces).strip()

    def _count(self, text: str) -> int:
        if isinstance(self.llm, LocalLLM):
            return self.llm.count_tokens(text)
        return math.ceil(len(text) / REMOTE_CHARS_PER_TOKEN)

    @staticmethod
    def _cited(text: str, lines: list[dict]) -> list[dict]:
        """The transcript lines the answer cites by tag, in the order cited; tags naming no line are dropped."""
        by_tag = {(str(f.get("session")), int(f["segment"])): f for f in lines if "segment" in f}
        cited = [by_tag[t] for t in prompt.parse_citations(text) if t in by_tag]
        return [_cite(p) for p in extractive.passages(cited)]

    # -- summaries ------------------------------------------------------------------------------------------

    async def summary(self, key: str, lines: list[dict]) -> Summary:
        """The rolling summary of transcript `key` (a room or a session): recomputed at most every
        summary_interval_s, and only when finals arrived since; concurrent readers share one refresh."""
        current = self._summaries.get(key)
        if current is not None and (current.finals == len(lines) or
                                    time.monotonic() - current.refreshed < self.cfg.summary_interval_s):
            return current
        task = self._refreshing.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh(key, lines, current))
            self._refreshing[key] = task
            task.add_done_callback(lambda _: self._refreshing.pop(key, None))
        return await asyncio.shield(task)

    async def _refresh(self, key: str, lines: list[dict], previous: Summary | None) -> Summary:
        self._admit()
        started = time.monotonic()
        try:
            summary = await asyncio.wait_for(self._summarise(lines, previous), self.cfg.ask_timeout_s)
        except asyncio.TimeoutError:
            raise Unavailable(f"no summary within {self.cfg.ask_timeout_s:g} s: the server is busy captioning "
                              "(captions come first)") from None
        finally:
            self._release(started)
        summary.refreshed = time.monotonic()
        self._summaries[key] = summary
        return summary

    async def _summarise(self, lines: list[dict], previous: Summary | None) -> Summary:
        if self.mode == "generative":
            messages = await asyncio.to_thread(prompt.summary_messages, lines, self.cfg.context_tokens,
                                               self._count, previous_summary=previous.text if previous else None)
            text = await self._generate(messages)
            return Summary(self.mode, text, self._cited(text, lines), len(lines), time.time())
        embedder = await self._embedder_ready()
        items = extractive.passages(lines)
        await self._embed(embedder, [p.text for p in items])
        picked = await self.engine.run_low(extractive.central, embedder, items, self.cfg.summary_passages)
        return Summary(self.mode, " ".join(p.text for p in picked), [_cite(p) for p in picked], len(lines),
                       time.time())

    # -- the embedding model --------------------------------------------------------------------------------

    async def _load_embedder(self) -> extractive.Embedder:
        t0 = time.perf_counter()
        embedder = await asyncio.to_thread(extractive.Embedder, self.cfg.embedder)
        log.info("ask the meeting: extractive, %s loaded in %.1f s", embedder.name, time.perf_counter() - t0)
        self._embedder = embedder
        return embedder

    async def _embedder_ready(self) -> extractive.Embedder:
        if self._embedder is not None:
            return self._embedder
        if self._loading is None:
            self._loading = asyncio.create_task(self._load_embedder())
        try:
            return await asyncio.shield(self._loading)
        except Exception as exc:  # noqa: BLE001 - a model that cannot load is the client's 503, with the reason
            self._loading = None
            raise Unavailable(f"the embedding model could not be loaded: {type(exc).__name__}: {exc}") from exc

    async def _embed(self, embedder: extractive.Embedder, texts: list[str]) -> None:
        """Embeds what is not cached yet, a slice at a time in the engine's lowest-priority lane."""
        missing = embedder.missing(texts)  # distinct, in first-seen order
        for i in range(0, len(missing), EMBED_SLICE):
            await self.engine.run_low(embedder.embed, missing[i:i + EMBED_SLICE])
