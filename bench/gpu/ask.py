"""bench.gpu's ask the meeting (LLM mode): Canary-Qwen's Qwen3 with the LoRA off answering over a long meeting,
alone on an idle model, or back to back through the engine's lowest-priority lane beside the captions."""
from __future__ import annotations

import asyncio
import time

from .audio import AUDIO
from .measure import memory, pct, sync


ASK_QUESTION = "What did the speakers decide, and who will do what next?"
ASK_TOKENS = 64  # tokens an answer decodes (random weights never stop early at full size: 3 stop ids of 151,936)
MADE_UP_LINE = "We agreed to ship the release on Friday, and Dana will write the notes while Lee checks the tests."


def ask_messages(backend) -> list[dict]:
    """An ask over a long meeting: the manifest's transcripts as lines, in turn, cut to the server's default prompt
    budget (intelligence.context_tokens), as the server builds it. Where ../shared/audio is absent (the GPU machine
    gets the repository only), one made-up line over and over: for random weights only the token count matters."""
    from server.config import IntelligenceConfig
    from server.intelligence import prompt

    manifest = AUDIO / "MANIFEST.tsv"
    if manifest.exists():
        from ..clips import read_manifest

        texts = [c.reference for c in read_manifest(manifest)]
    else:
        texts = [MADE_UP_LINE]
    lines = [{"session": "s0", "segment": i, "start": 10.0 * i, "end": 10.0 * i + 9.5, "text": texts[i % len(texts)]}
             for i in range(400)]
    count = lambda t: len(backend.tokenizer.encode(t, add_special_tokens=False))  # noqa: E731
    return prompt.ask_messages(ASK_QUESTION, lines, IntelligenceConfig().context_tokens, count)


def ask_alone(backend, device: str) -> dict:
    """One ask on an idle model: prompt tokens, prefill time, decode rate, slice times, kept base weights."""
    from server.intelligence.salm_llm import LlmJob

    job = LlmJob(backend, ask_messages(backend), ASK_TOKENS)
    sync(device)
    t0 = time.perf_counter()
    prefills = []
    while not job.prefilled:  # in PREFILL_CHUNK slices, as the server runs it
        t = time.perf_counter()
        job.prefill()
        sync(device)
        prefills.append(time.perf_counter() - t)
    prefill = time.perf_counter() - t0
    slices = []
    while not job.done:
        t = time.perf_counter()
        job.step(4)
        sync(device)
        slices.append(time.perf_counter() - t)
    return {"prompt_tokens": len(job.prompt_ids), "new_tokens": job.tokens, "prefill_s": prefill,
            "decode_tokens_per_s": (job.tokens - 1) / sum(slices) if slices else None,
            "slice_s": {"p50": pct(slices, 50), "max": max(slices, default=None)},
            "prefill_slice_s_max": max(prefills, default=None),
            "total_s": prefill + sum(slices), "kept_base_weights_mb": backend.llm_base_bytes / 2**20,
            "memory": memory(device)}


async def asker(engine, backend, messages, stop: asyncio.Event, out: dict) -> None:
    """Asks back to back through the engine's lowest-priority lane, as the server's LocalLLM does."""
    from server.intelligence.salm_llm import LlmJob

    def timed(fn, *a):
        t = time.perf_counter()
        try:
            return fn(*a)
        finally:
            out["slices"].append(time.perf_counter() - t)

    while not stop.is_set():
        t0 = time.perf_counter()
        job = LlmJob(backend, messages, ASK_TOKENS)
        try:
            await engine.run_low(timed, job.prefill)
            while not job.done and not stop.is_set():
                await engine.run_low(timed, job.step, 4)
        except Exception as exc:  # noqa: BLE001 - counted, not fatal: the captions are what is measured
            out["errors"].append(f"{type(exc).__name__}: {exc}")
            return
        finally:
            job.close()
        if job.done:
            out["seconds"].append(time.perf_counter() - t0)
