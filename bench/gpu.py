"""`python -m bench.gpu`: the inference engine's speed on a full-size random-weight Canary-Qwen-2.5B (issue 7).

    python -m bench.gpu [--tiny] [--device cuda|cpu] [--json OUT] [--streams 1,50,100,200,500,1000] [--seconds S]

One run, with fixed output lengths (EOS never chosen, about 3 tokens per second of audio, since
random weights never end a transcript on their own), reports:
1. NeMo's plain `SALM.generate` on a batch of 10 s clips: RTFx (audio seconds / wall seconds).
2. Our engine (server.engine.Engine around SalmBackend, same model object) on the same clips, LoRA unmerged and
   merged, for a few max_batch values: RTFx and the ratio to 1.
3. Live load: N simulated streams at real-time pace (a partial every 0.5 s of a growing window, a final at the
   10 s cap, as continuous speech gives; each partial and final carries the window's previous partial as a
   draft, as sessions send them): partial/final latency, partial cadence, decode steps per batch, draft
   acceptance, memory, event-loop lag; the largest N whose p95 final latency stays within --slo-s.
   Before the ramp, one level (--ablate-n) runs with length bucketing off, drafts off and 4x max_batch.
4. NeMo's buffered SALM pipeline (nemo.collections.asr.inference) offline on the same clips, if it runs.
5. Drafts on one batch of growing windows: none / the previous partial's output / the window's own (ceiling).

The full-size model is built on the GPU directly from the shapes in ../shared/notes/salm.md (no hub, no
checkpoint). `--tiny` runs the tiny checkpoint of server/tiny_model.py on the CPU so that CI checks the benchmark
works: its numbers are sanity checks, never performance results.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from server.config import EngineConfig, load_config
from server.core.engine import Engine
from server.httpapi.looplag import LoopLag

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT.parent / "shared" / "audio"
RATE = 16000

# Canary-Qwen-2.5B: Qwen3-1.7B + FastConformer (../shared/notes/salm.md). Everything else as server/tiny_model.py.
FULL_SHAPES = dict(vocab=151936, hidden=2048, intermediate=6144, layers=28, heads=16, kv_heads=8, head_dim=128,
                   tied=True, enc_layers=32, enc_d=1024, enc_heads=8, enc_channels=256, enc_ff=4,
                   lora_r=128, lora_alpha=256)


# -- model --------------------------------------------------------------------------------------------------------

def build_random_salm(shapes: dict, workdir: Path, device: str):
    """A random-weight SALM of these shapes, built on `device` directly: a full-size one would take 11 GB and a
    minute on a CPU. The tokenizer is the tiny model's small BPE: ids past it decode to "" (fine for timing)."""
    import torch
    from nemo.collections.speechlm2.models import SALM
    from transformers import Qwen3Config

    from server.backends.tiny_model import _build_tokenizer, _salm_config

    s = shapes
    tok = _build_tokenizer(workdir)
    Qwen3Config(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        head_dim=s["head_dim"], tie_word_embeddings=s["tied"], max_position_embeddings=40960, rope_theta=1e6,
        rms_norm_eps=1e-6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    ).save_pretrained(workdir / "llm_backbone")
    cfg = _salm_config(s["hidden"])
    cfg.update(pretrained_llm=str(workdir / "llm_backbone"), tokenizer_path=str(workdir))
    cfg["lora"].update(r=s["lora_r"], lora_alpha=s["lora_alpha"])
    cfg["perception"]["encoder"].update(n_layers=s["enc_layers"], d_model=s["enc_d"], n_heads=s["enc_heads"],
                                        subsampling_conv_channels=s["enc_channels"], ff_expansion_factor=s["enc_ff"])
    cfg["perception"]["modality_adapter"]["d_model"] = s["enc_d"]
    torch.manual_seed(0)
    with torch.device(device):  # every parameter is created where it will run
        model = SALM(cfg).eval()
    with torch.no_grad():  # peft starts LoRA B at zero: make the adapter (and merging it) change the weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return model


def load_tiny_salm(workdir: Path):
    from nemo.collections.speechlm2.models import SALM

    from server.backends.tiny_model import write_tiny_checkpoint

    return SALM.from_pretrained(str(write_tiny_checkpoint(workdir / "tiny-salm"))).eval()


def make_backend(model, device: str, tokens_per_s: float, merge: bool, static_len: int = 0):
    """Our backend around `model` (merged in place when `merge`), forced to fixed output lengths. static_len > 0:
    preallocated KV caches, and on CUDA the decode step as a CUDA graph."""
    from server.backends.salm import SalmBackend

    backend = SalmBackend.from_model(model, model="random-weight SALM", device=device,
                                     max_tokens_per_second=tokens_per_s, min_new_tokens_cap=1, merge_lora=merge,
                                     static_cache_len=static_len, cuda_graphs=static_len > 0)
    backend.ignore_eos = True  # random weights give no meaningful EOS: each row decodes exactly to its cap
    return backend


class Shared:
    """Engine.close() closes its backend; the levels of one run share a model, so closing is left to the end."""

    def __init__(self, backend):
        self.backend, self.name, self.model, self.reason = backend, backend.name, backend.model, backend.reason
        self.uses_drafts, self.costly_batches = backend.uses_drafts, backend.costly_batches

    def transcribe(self, audios, drafts=None, contexts=None):
        return self.backend.transcribe(audios, drafts, contexts)

    def decode_stats(self):
        return self.backend.decode_stats()

    def close(self) -> None:
        pass


# -- audio --------------------------------------------------------------------------------------------------------

def speech_source(seconds: float) -> tuple[np.ndarray, str]:
    """`seconds` of audio: the shared clips joined and repeated, or seeded noise where they are absent (the GPU
    machine gets the repository only; for random weights the content changes nothing)."""
    manifest = AUDIO / "MANIFEST.tsv"
    if manifest.exists():
        import csv

        from .clips import load_16k

        with open(manifest, newline="") as f:
            names = [row["name"] for row in csv.DictReader(f, delimiter="\t")]
        joined = np.concatenate([load_16k(AUDIO / n) for n in names])
        what = f"{len(names)} shared clips, joined and repeated"
    else:
        joined = (np.random.default_rng(0).standard_normal(60 * RATE) * 0.05).astype(np.float32)
        what = "seeded noise (../shared/audio not found)"
    reps = math.ceil(seconds * RATE / len(joined))
    return np.tile(joined, reps)[: int(seconds * RATE)].astype(np.float32), what


def cut_clips(source: np.ndarray, count: int, clip_s: float) -> list[np.ndarray]:
    n = int(clip_s * RATE)
    starts = [int((i * 3.7 * RATE) % (len(source) - n)) for i in range(count)]
    return [source[s:s + n].copy() for s in starts]


# -- timing helpers -----------------------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def memory(device: str) -> dict:
    if device.startswith("cuda"):
        import torch

        return {"allocated_gb": torch.cuda.memory_allocated() / 2**30,
                "peak_gb": torch.cuda.max_memory_allocated() / 2**30}
    with open("/proc/self/statm") as f:
        return {"rss_gb": int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30}


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


# -- 1. NeMo's plain generate ---------------------------------------------------------------------------------------

def nemo_generate(model, clips, new_tokens: int, device: str, repeats: int) -> dict:
    import torch
    from transformers import GenerationConfig

    prompt = [{"role": "user", "content": f"Transcribe the following: {model.audio_locator_tag}"}]
    gen_cfg = GenerationConfig(bos_token_id=model.text_bos_id, eos_token_id=model.text_eos_id,
                               pad_token_id=model.text_pad_id, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    batch = np.stack(clips)
    lens = torch.full((len(clips),), batch.shape[1], dtype=torch.int64)

    def once():  # from host audio to host ids, as our engine is timed
        with torch.inference_mode():
            out = model.generate(prompts=[[dict(t) for t in prompt] for _ in clips],
                                 audios=torch.from_numpy(batch).to(device), audio_lens=lens.to(device),
                                 generation_config=gen_cfg)
        return out.cpu()

    out = once()  # warm-up: kernels, allocator, autotuning
    if out.shape != (len(clips), new_tokens):
        raise RuntimeError(f"generate returned {tuple(out.shape)}, expected {(len(clips), new_tokens)}")
    walls = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        once()
        walls.append(time.perf_counter() - t)
    wall = float(np.median(walls))
    return {"batch": len(clips), "clip_s": len(clips[0]) / RATE, "new_tokens": new_tokens, "wall_s": walls,
            "rtfx": len(clips) * len(clips[0]) / RATE / wall}


# -- 2. our engine, offline ---------------------------------------------------------------------------------------

async def _engine_pass(backend, clips, max_batch: int, max_wait_ms: float) -> tuple[float, dict]:
    engine = Engine(Shared(backend), EngineConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, batch_timeout_s=600))
    engine.start()
    t = time.perf_counter()
    texts = await asyncio.gather(*(engine.submit(f"clip{i}", c, final=True) for i, c in enumerate(clips)))
    wall = time.perf_counter() - t
    await engine.close()
    if len(texts) != len(clips) or not all(isinstance(x, str) for x in texts):
        raise RuntimeError("the engine did not return one text per clip")
    return wall, {"batches": engine.stats.batches}


def engine_offline(backend, clips, max_batch: int, max_wait_ms: float, repeats: int, merged: bool,
                   decoder: str) -> dict:
    asyncio.run(_engine_pass(backend, clips, max_batch, max_wait_ms))  # warm-up
    runs = [asyncio.run(_engine_pass(backend, clips, max_batch, max_wait_ms)) for _ in range(repeats)]
    walls = [w for w, _ in runs]
    wall = float(np.median(walls))
    return {"lora_merged": merged, "decoder": decoder, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
            "batches": runs[0][1]["batches"], "wall_s": walls, "rtfx": len(clips) * len(clips[0]) / RATE / wall}


# -- 3. live load ---------------------------------------------------------------------------------------------------

@dataclass
class Event:
    t: float  # seconds after the level's start at which the window's last sample was captured
    stream: int
    final: bool
    start: int  # the window's samples in the source
    end: int


def schedule(streams: int, seconds: float, window_s: float, interval_s: float, offset_room_s: float) -> list[Event]:
    """Windows as the segmenter cuts continuous speech: a partial every `interval_s` of new audio (the whole
    window so far), a final at the `window_s` cap. Streams are out of phase, as people start talking at
    different times, so that finals arrive evenly; each stream reads its own stretch of the source."""
    steps = round(window_s / interval_s)
    events = []
    for i in range(streams):
        phase = (i + 0.5) / streams * window_s  # the first window started this long before the level did
        offset = int((i * 7.3) % offset_room_s * RATE)
        k = 0
        while (w0 := k * window_s - phase) < seconds:
            for m in range(1, steps + 1):
                t = w0 + m * interval_s
                if 0 < t <= seconds:
                    start = offset + int(k * window_s * RATE)
                    events.append(Event(t, i, m == steps, start, start + int(m * interval_s * RATE)))
            k += 1
    return sorted(events, key=lambda e: e.t)


# -- ask the meeting: Canary-Qwen's Qwen3 with the LoRA off, beside the captions -----------------------------------

ASK_QUESTION = "What did the speakers decide, and who will do what next?"
ASK_TOKENS = 64  # tokens an answer decodes (random weights never stop early at full size: 3 stop ids of 151,936)


def ask_messages(backend) -> list[dict]:
    """An ask over a long meeting: the manifest's transcripts as lines, in turn, cut to the server's default prompt
    budget (intelligence.context_tokens), as the server builds it."""
    from server.config import IntelligenceConfig
    from server.intelligence import prompt

    from .clips import read_manifest

    texts = [c.reference for c in read_manifest(AUDIO / "MANIFEST.tsv")]
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


async def live_level(backend, streams: int, args, source: np.ndarray, device: str, bucket: bool = True,
                     drafts: bool = True, max_batch: int | None = None, askers: int = 0) -> dict:
    """`askers`: that many asks running back to back beside the streams (the engine's lowest-priority lane)."""
    loop = asyncio.get_running_loop()
    max_batch = max_batch or args.live_max_batch
    engine = Engine(Shared(backend), EngineConfig(max_batch=max_batch, max_wait_ms=args.max_wait_ms,
                                                  batch_timeout_s=120, bucket_by_length=bucket, drafts=drafts))
    engine.start()
    decode_before = dataclasses.replace(backend.stats)
    last_text: dict[tuple[int, int], str] = {}  # (stream, window start) -> its latest partial: the next draft
    events = schedule(streams, args.seconds, args.window_s, args.partial_interval_s,
                      len(source) / RATE - args.seconds - 2 * args.window_s)
    outcomes: list[tuple[Event, str, float, float]] = []  # event, outcome, latency, delivery time

    def record(ev: Event, due: float, fut: asyncio.Future) -> None:
        now = loop.time()
        if fut.cancelled():
            outcome = "cancelled"
        elif fut.exception() is not None:
            outcome = "error"
        else:
            outcome = "superseded" if fut.result() is None else "ok"
            if outcome == "ok" and not ev.final:
                last_text[ev.stream, ev.start] = fut.result()
        outcomes.append((ev, outcome, now - due, now))

    lag = LoopLag(period_s=0.01, keep=1_000_000)  # a blocked event loop shows here
    lag.start()
    mem_start = memory(device)  # flat memory: allocated at the end of each level matches its start
    asks = {"seconds": [], "slices": [], "errors": []}
    stop_asking = asyncio.Event()
    messages = ask_messages(backend) if askers else None
    ask_tasks = [asyncio.create_task(asker(engine, backend, messages, stop_asking, asks)) for _ in range(askers)]
    skipped, late, finals = 0, 0.0, []
    t0 = loop.time() + 0.05
    for ev in events:
        due = t0 + ev.t
        if (wait := due - loop.time()) > 0.0005:
            await asyncio.sleep(wait)
        late = max(late, loop.time() - due)
        if not ev.final and engine.busy:
            skipped += 1  # what a session does: partials are thinned first when the engine falls behind
            continue
        fut = engine.submit(f"s{ev.stream}", source[ev.start:ev.end], ev.final,
                            draft=last_text.pop((ev.stream, ev.start), None) if ev.final else
                            last_text.get((ev.stream, ev.start)))
        fut.add_done_callback(partial(record, ev, due))
        if ev.final:
            finals.append(fut)
    t_end = loop.time()
    if finals:
        await asyncio.wait(finals, timeout=args.drain_s)
    drain = loop.time() - t_end
    stop_asking.set()
    await asyncio.gather(*ask_tasks)
    stats = engine.stats
    lag.stop()
    lag_ms = lag.snapshot()
    await engine.close()  # cancels what is still queued; those finals count as missing
    mem_end = memory(device)

    def lat(kind: bool) -> list[float]:
        return [lt for ev, o, lt, _ in outcomes if ev.final == kind and o == "ok"]

    final_lat, partial_lat = lat(True), lat(False)
    count = lambda kind, o: sum(ev.final == kind and oc == o for ev, oc, _, _ in outcomes)  # noqa: E731
    # Gaps between successive captions (partial or final) a viewer of one stream sees.
    seen: dict[int, list[float]] = {}
    for ev, o, _, at in outcomes:
        if o == "ok":
            seen.setdefault(ev.stream, []).append(at)
    gaps = [b - a for ts in seen.values() for a, b in zip(sorted(ts), sorted(ts)[1:])]
    n_final = sum(e.final for e in events)
    decode = {k: getattr(backend.stats, k) - getattr(decode_before, k) for k in ("steps", "draft_tokens",
                                                                                 "accepted_tokens")}
    return {
        "streams": streams, "seconds": args.seconds, "bucket_by_length": bucket, "drafts": drafts,
        "max_batch": max_batch,
        "decode": {**decode, "steps_per_batch": decode["steps"] / stats.batches if stats.batches else None,
                   "draft_acceptance": decode["accepted_tokens"] / decode["draft_tokens"]
                   if decode["draft_tokens"] else None},
        "finals": {"submitted": n_final, "delivered": len(final_lat), "missing": n_final - len(final_lat),
                   "errors": count(True, "error")},
        "partials": {"due": len(events) - n_final, "skipped_busy": skipped, "superseded": count(False, "superseded"),
                     "delivered": len(partial_lat), "errors": count(False, "error")},
        "final_latency_s": {"p50": pct(final_lat, 50), "p95": pct(final_lat, 95), "max": max(final_lat, default=None)},
        "partial_latency_s": {"p50": pct(partial_lat, 50), "p95": pct(partial_lat, 95)},
        "partials_per_stream_s": len(partial_lat) / (streams * args.seconds),
        "caption_gap_s": {"p50": pct(gaps, 50), "p95": pct(gaps, 95)},
        "batches": stats.batches, "mean_batch": stats.windows / stats.batches if stats.batches else None,
        "compute_busy": stats.compute_seconds / (args.seconds + drain),
        "loop_lag_ms": {"p99": lag_ms["recent_p99_ms"] or 0, "max": lag_ms["max_ms"]},
        "driver_late_ms_max": late * 1000,
        "drain_s": drain,
        "memory_start": mem_start, "memory_end": mem_end,
        **({"asks": {"askers": askers, "done": len(asks["seconds"]), "ask_s": {"p50": pct(asks["seconds"], 50),
                                                                           "p95": pct(asks["seconds"], 95)},
                     "slices": len(asks["slices"]),
                     "slice_s": {"p50": pct(asks["slices"], 50), "max": max(asks["slices"], default=None)},
                     "errors": asks["errors"][:3]}} if askers else {}),
    }


def live_load(backend, args, device: str, deadline: float, save) -> dict:
    source, _ = speech_source(args.seconds + 2 * args.window_s + 120)
    levels, best, stopped = [], None, "all levels ran"
    for n in args.streams:
        if time.monotonic() + args.seconds + args.drain_s + 15 > deadline:
            stopped = f"time budget: no room for N={n}"
            break
        level = asyncio.run(live_level(backend, n, args, source, device))
        levels.append(level)
        p95 = level["final_latency_s"]["p95"]
        ok = level["finals"]["missing"] == 0 and p95 is not None and p95 <= args.slo_s
        level["within_slo"] = ok
        best = n if ok else best
        print_live_row(level)
        save({"levels": levels, "max_streams_within_slo": best, "stopped": "running"})
        if level["finals"]["missing"] or (p95 is not None and p95 > args.break_s):
            stopped = f"broke at N={n} (finals missing or p95 final > {args.break_s} s)"
            break
    return {"slo_s": args.slo_s, "levels": levels, "max_streams_within_slo": best, "stopped": stopped,
            "max_batch": args.live_max_batch, "max_wait_ms": args.max_wait_ms,
            "partial_interval_s": args.partial_interval_s, "window_s": args.window_s}


def ablation(backend, args, device: str) -> list[dict]:
    """One live level run four times: as configured, without length bucketing, without drafts, with 4x the
    max_batch. The engine keeps each feature only where this says it pays (issue 7)."""
    source, _ = speech_source(args.seconds + 2 * args.window_s + 120)
    rows = []
    for label, bucket, drafts, max_batch in [("bucketing + drafts", True, True, args.live_max_batch),
                                             ("no bucketing", False, True, args.live_max_batch),
                                             ("no drafts", True, False, args.live_max_batch),
                                             (f"max_batch {4 * args.live_max_batch}", True, True,
                                              4 * args.live_max_batch)]:
        level = asyncio.run(live_level(backend, args.ablate_n, args, source, device, bucket=bucket, drafts=drafts,
                                       max_batch=max_batch))
        level["label"] = label
        print_live_row(level)
        rows.append(level)
    return rows


def draft_decoding(backend, source: np.ndarray, args, device: str) -> dict:
    """Growing windows decoded as one batch three ways: no draft, the previous partial's output as the draft (as
    live), and the window's own output (every draft token right: the ceiling). Random weights make the middle
    row's acceptance unlike a real model's, which lies between the other two rows."""
    rows = 32 if not args.tiny else 4
    step = int(args.partial_interval_s * RATE)
    # window i ends (2 + 8 * i / rows) s in, as a partial of a window opened at offset i * 3.7 s
    ends = [int((2.0 + 8.0 * i / rows) * RATE) // step * step for i in range(rows)]
    starts = [int(i * 3.7 * RATE) for i in range(rows)]
    now = [source[s:s + e] for s, e in zip(starts, ends)]
    before = [source[s:s + e - step] for s, e in zip(starts, ends)]
    prev_ids = backend.transcribe_ids(before)
    own_ids = backend.transcribe_ids(now)
    result = {"batch": rows, "window_s": [ends[0] / RATE, ends[-1] / RATE]}
    for label, drafts in [("none", None), ("previous partial", prev_ids), ("own output (ceiling)", own_ids)]:
        walls, st = [], None
        for _ in range(1 + args.repeats):  # the first is a warm-up
            s0 = dataclasses.replace(backend.stats)
            sync(device)
            t = time.perf_counter()
            out = backend.transcribe_ids(now, drafts)
            sync(device)
            walls.append(time.perf_counter() - t)
            st = {k: getattr(backend.stats, k) - getattr(s0, k) for k in ("steps", "draft_tokens", "accepted_tokens")}
        if out != own_ids:
            raise RuntimeError(f"drafts ({label}) changed the output: the decoder is not exact")
        result[label] = {"wall_s": float(np.median(walls[1:])), **st}
    base = result["none"]["wall_s"]
    print("\n| draft | wall s | vs none | decode steps | draft tokens accepted |")
    print("|---|---|---|---|---|")
    for label in ("none", "previous partial", "own output (ceiling)"):
        r = result[label]
        print(f"| {label} | {fmt(r['wall_s'], 3)} | {fmt(base / r['wall_s'])}x | {r['steps']} "
              f"| {r['accepted_tokens']}/{r['draft_tokens']} |", flush=True)
    return result


# -- 4. NeMo's buffered SALM pipeline -------------------------------------------------------------------------------

def nemo_pipeline(model, clips, device: str, tokens_per_s: float, workdir: Path) -> dict:
    """NeMo's own multi-stream pipeline (4 s buffer, 2 s chunk, LCS merge) on our model object, run offline."""
    try:
        import soundfile as sf
        import torch
        from nemo.collections.asr.inference.model_wrappers.salm_asr_inference_wrapper import SALMASRInferenceWrapper
        from nemo.collections.asr.inference.pipelines.buffered_salm_pipeline import BufferedSALMPipeline
        from omegaconf import OmegaConf

        class Wrapper(SALMASRInferenceWrapper):
            @staticmethod
            def load_model(model_name, device):  # NeMo loads by hub name; hand it the model we built
                return model

            def generate(self, prompts, audios, audio_lens, max_new_tokens=128):
                # NeMo's own call plus min_new_tokens: fixed lengths, as in every other run here
                with torch.amp.autocast(device_type=self.device.type, dtype=self.compute_dtype, enabled=self.use_amp), \
                        torch.inference_mode():
                    return self.salm_model.generate(prompts=prompts, audios=audios, audio_lens=audio_lens,
                                                    max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)

        chunk_s, buffer_s = 2.0, 4.0
        new_tokens = math.ceil(buffer_s * tokens_per_s)
        cfg = OmegaConf.create({
            "asr_output_granularity": "segment",
            "streaming": {"sample_rate": RATE, "batch_size": len(clips), "max_new_tokens": new_tokens,
                          "chunk_size": chunk_s, "buffer_size": buffer_s, "overlap_size": buffer_s - chunk_s,
                          "merging_strategy": "lcs", "request_type": "frame"},
            "endpointing": {"stop_history_eou": 800},
        })
        cuda = device.startswith("cuda")
        wrapper = Wrapper("in-memory", device="cuda" if cuda else "cpu", compute_dtype="bfloat16", use_amp=cuda)
        pipeline = BufferedSALMPipeline(cfg, wrapper)
        paths = []
        for i, clip in enumerate(clips):
            paths.append(str(workdir / f"clip{i}.wav"))
            sf.write(paths[-1], clip, RATE)
        steps: list[float] = []
        step = pipeline.transcribe_step

        def timed_step(requests):
            sync(device)
            t = time.perf_counter()
            out = step(requests)
            sync(device)
            steps.append(time.perf_counter() - t)
            return out

        pipeline.run(paths)  # warm-up: its own shapes (4 s buffers)
        pipeline.transcribe_step = timed_step
        t = time.perf_counter()
        out = pipeline.run(paths)
        wall = time.perf_counter() - t
        if len(out) != len(clips):
            raise RuntimeError(f"the pipeline returned {len(out)} transcripts for {len(clips)} streams")
        return {"chunk_s": chunk_s, "buffer_s": buffer_s, "new_tokens_per_step": new_tokens,
                "batch_size": len(clips), "steps": len(steps), "wall_s": wall,
                "rtfx": len(clips) * len(clips[0]) / RATE / wall,
                "step_s": {"p50": pct(steps, 50), "p95": pct(steps, 95)},
                "note": "offline, as fast as it goes; live, an update comes every chunk_s of audio, one step after "
                        "its chunk is complete (step_s, plus queueing when streams exceed the batch)"}
    except Exception as exc:  # noqa: BLE001 - report why rather than lose the other results
        return {"error": f"{type(exc).__name__}: {exc}"}


# -- report ---------------------------------------------------------------------------------------------------------

def fmt(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_live_row(level: dict, header: bool = False) -> None:
    if header:
        print("| N | finals ok/due | final p50 / p95 s | partial p50 / p95 s | partials/stream/s | caption gap p50 s "
              "| mean batch | busy | steps/batch | draft accepted | loop lag max ms | memory GB end |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        return
    f, fl, pl, mem = level["finals"], level["final_latency_s"], level["partial_latency_s"], level["memory_end"]
    d = level["decode"]
    n = f"{level['streams']}" + (f" ({level['label']})" if "label" in level else "")
    print(f"| {n} | {f['delivered']}/{f['submitted']} | {fmt(fl['p50'])} / {fmt(fl['p95'])} "
          f"| {fmt(pl['p50'])} / {fmt(pl['p95'])} | {fmt(level['partials_per_stream_s'])} "
          f"| {fmt(level['caption_gap_s']['p50'])} | {fmt(level['mean_batch'], 1)} | {fmt(level['compute_busy'])} "
          f"| {fmt(d['steps_per_batch'], 1)} | {fmt(d['draft_acceptance'])} | {fmt(level['loop_lag_ms']['max'], 1)} | {fmt(next(iter(mem.values())))} |", flush=True)


def print_offline(report: dict) -> None:
    ng = report["nemo_generate"]
    print("\n| run | LoRA | max_batch | batches | wall s (median) | RTFx | vs NeMo generate |")
    print("|---|---|---|---|---|---|---|")
    print(f"| NeMo SALM.generate | adapter | {ng['batch']} | 1 | {fmt(float(np.median(ng['wall_s'])), 3)} "
          f"| {fmt(ng['rtfx'], 1)} | 1.00 |")
    for e in report["engine"]:
        print(f"| our engine, {e['decoder']} | {'merged' if e['lora_merged'] else 'adapter'} | {e['max_batch']} "
              f"| {e['batches']} "
              f"| {fmt(float(np.median(e['wall_s'])), 3)} | {fmt(e['rtfx'], 1)} | {fmt(e['ratio_to_nemo'])} |")
    p = report.get("nemo_pipeline", {})
    if "error" in p:
        print(f"\nNeMo buffered SALM pipeline: not run ({p['error']})")
    elif p:
        print(f"\nNeMo buffered SALM pipeline ({p['buffer_s']} s buffer, {p['chunk_s']} s chunk, batch "
              f"{p['batch_size']}): RTFx {fmt(p['rtfx'], 1)}, {p['steps']} steps, step p50/p95 "
              f"{fmt(p['step_s']['p50'], 3)}/{fmt(p['step_s']['p95'], 3)} s")


def environment(device: str) -> dict:
    import nemo
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "nemo": nemo.__version__, "device": device, "cpu_count": os.cpu_count()}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return env


# -- main -----------------------------------------------------------------------------------------------------------

def parse_args(argv):
    default_engine = load_config().engine
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the tiny checkpoint on the CPU, for CI (numbers mean nothing)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda, or cpu with --tiny")
    p.add_argument("--json", type=Path, help="write the report here (rewritten after each section)")
    p.add_argument("--streams", help="live-load levels, e.g. 1,50,100 (default 1,50,100,200,500,1000; tiny 1,4)")
    p.add_argument("--seconds", type=float, help="live-load length of each level (default 20; tiny 5)")
    p.add_argument("--batch", type=int, help="clips in the offline batch (default 64; tiny 8)")
    p.add_argument("--clip-s", type=float, default=10.0)
    p.add_argument("--tokens-per-s", type=float, default=3.0, help="fixed output length per second of audio")
    p.add_argument("--repeats", type=int, help="timed repeats of each offline run (default 3; tiny 1)")
    p.add_argument("--max-batch", help="engine max_batch values for the offline runs (default 16,64; tiny 2,8)")
    p.add_argument("--live-max-batch", type=int, default=default_engine.max_batch,
                   help="engine max_batch under live load (default: configs/default.yaml)")
    p.add_argument("--max-wait-ms", type=float, default=default_engine.max_wait_ms)
    p.add_argument("--window-s", type=float, default=10.0, help="window cap (segmenter max_window_s)")
    p.add_argument("--partial-interval-s", type=float, default=0.5)
    p.add_argument("--slo-s", type=float, default=1.0, help="p95 final latency a level must stay within")
    p.add_argument("--break-s", type=float, default=5.0, help="p95 final latency past which levels stop")
    p.add_argument("--drain-s", type=float, help="wait for outstanding finals after a level (default 20; tiny 6)")
    p.add_argument("--budget-s", type=float, help="stop adding live levels past this (default 390; tiny 150)")
    p.add_argument("--no-nemo-pipeline", action="store_true")
    p.add_argument("--static-len", type=int, default=256,
                   help="KV positions of the static-cache decoder (prompt + 10 s of audio + draft + output fit)")
    p.add_argument("--askers", type=int, default=10, help="asks beside the captions in the ask section")
    p.add_argument("--ablate-n", type=int, help="streams in the bucketing/drafts ablation (default 100; tiny 4)")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.device = args.device or ("cpu" if tiny else "cuda")
    args.streams = [int(x) for x in (args.streams or ("1,4" if tiny else "1,50,100,200,500,1000")).split(",")]
    args.max_batch = [int(x) for x in (args.max_batch or ("2,8" if tiny else "16,64")).split(",")]
    args.seconds = args.seconds or (5.0 if tiny else 20.0)
    args.batch = args.batch or (8 if tiny else 64)
    args.repeats = args.repeats or (1 if tiny else 3)
    args.drain_s = args.drain_s or (6.0 if tiny else 20.0)
    args.budget_s = args.budget_s or (150.0 if tiny else 390.0)
    args.ablate_n = args.ablate_n or (4 if tiny else 100)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a hub
    import torch

    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(logging.WARNING)  # NeMo logs every LoRA config it installs, at length, on stdout
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: use --tiny (CPU, tiny model) or run on a GPU machine", file=sys.stderr)
        return 2
    if device == "cpu":
        # A CI machine's cores are shared; one thread also makes the main thread (NeMo's runs) and the engine's
        # worker thread (ours) comparable: with several, OpenMP settings differ between them.
        torch.set_num_threads(1)

    report: dict = {"bench": "gpu", "mode": "tiny" if args.tiny else "full", "environment": environment(device),
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}

    def save(section: str | None = None, value=None) -> None:
        if section:
            report[section] = value
        report["wall_s"] = time.monotonic() - started
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))

    print(f"# bench.gpu ({report['mode']}): {json.dumps(report['environment'])}", flush=True)
    if args.tiny:
        print("CPU + tiny model: a CI check that the benchmark works; these numbers are not performance results.")

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        workdir = Path(tmp)
        t = time.monotonic()
        model = load_tiny_salm(workdir) if args.tiny else build_random_salm(FULL_SHAPES, workdir, device)
        if device == "cuda":
            model.to(torch.bfloat16)  # as SalmBackend runs on CUDA; NeMo's generate gets the same model
            torch.cuda.empty_cache()
        reset_peak(device)
        save("model", {"kind": "tiny checkpoint" if args.tiny else "random weights, Canary-Qwen-2.5B shapes",
                       "shapes": None if args.tiny else FULL_SHAPES,
                       "parameters": sum(p.numel() for p in model.parameters()),
                       "dtype": str(next(model.parameters()).dtype), "build_s": time.monotonic() - t,
                       "memory": memory(device)})
        print(f"model: {report['model']['parameters'] / 1e6:,.1f} M parameters, {report['model']['dtype']}, "
              f"built in {report['model']['build_s']:.1f} s", flush=True)

        source, audio_what = speech_source(max(120.0, args.batch * 3.7 + args.clip_s))
        clips = cut_clips(source, args.batch, args.clip_s)
        new_tokens = math.ceil(args.clip_s * args.tokens_per_s)
        report["settings"]["audio"] = audio_what

        # 1. NeMo's plain generate, on the model as NeMo builds it (LoRA as a peft adapter).
        save("nemo_generate", nemo_generate(model, clips, new_tokens, device, args.repeats))

        # 2. our engine on the same clips: adapter first, NeMo's pipeline (4) on that same model, then merged.
        runs = []

        def engine_runs(backend, merged: bool, decoder: str = "dynamic KV cache") -> None:
            for mb in args.max_batch:
                run = engine_offline(backend, clips, mb, args.max_wait_ms, args.repeats, merged=merged,
                                     decoder=decoder)
                run["ratio_to_nemo"] = run["rtfx"] / report["nemo_generate"]["rtfx"]
                runs.append(run)
                save("engine", runs)

        plain = make_backend(model, device, args.tokens_per_s, merge=False)
        if plain.max_new_tokens(clips[0]) != new_tokens:
            raise RuntimeError("our backend would decode another number of tokens than NeMo's run")
        engine_runs(plain, merged=False)
        if not args.no_nemo_pipeline:
            save("nemo_pipeline", nemo_pipeline(model, clips, device, args.tokens_per_s, workdir))
        merged = make_backend(model, device, args.tokens_per_s, merge=True)
        engine_runs(merged, merged=True)
        # The same merged model again, decoding over preallocated KV caches (CUDA graphs on CUDA). It is new
        # code that only a GPU runs in full: a failure is reported and the rest goes on without it.
        graphs = "static KV cache + CUDA graphs" if device == "cuda" else "static KV cache"
        fastest = merged
        try:
            static = make_backend(model, device, args.tokens_per_s, merge=False, static_len=args.static_len)
            engine_runs(static, merged=True, decoder=graphs)
            best = lambda kind: max(e["rtfx"] for e in runs if e["decoder"] == kind and e["lora_merged"])  # noqa
            if best(graphs) > best("dynamic KV cache"):
                fastest = static
        except Exception as exc:  # noqa: BLE001
            report["static_decoder_error"] = f"{type(exc).__name__}: {exc}"
            print(f"{graphs}: failed ({report['static_decoder_error']}); live load uses the dynamic cache")
        report["live_decoder"] = graphs if fastest is not merged else "dynamic KV cache"
        print_offline(report)

        # partials: what drafts save on one batch of growing windows
        save("draft_decoding", draft_decoding(fastest, source, args, device))

        # 3. live load on the merged model, with the faster decoder of the two: bucketing and drafts on and off
        # at one level, then the ramp.
        print(f"\nlive load decodes with: {report['live_decoder']}")
        print(f"\nAblation at N={args.ablate_n}: {args.seconds} s each")
        print_live_row({}, header=True)
        save("ablation", ablation(fastest, args, device))
        print(f"\nLive load: max_batch {args.live_max_batch}, max_wait {args.max_wait_ms} ms, partial every "
              f"{args.partial_interval_s} s, {args.window_s} s windows, {args.seconds} s per level")
        print_live_row({}, header=True)
        live = live_load(fastest, args, device, started + args.budget_s,
                         lambda partial_live: save("live", partial_live))
        save("live", live)
        print(f"\nlargest N with p95 final latency <= {args.slo_s} s: {live['max_streams_within_slo']} "
              f"({live['stopped']})")

        # 4. ask the meeting (LLM mode): one ask alone, then N streams with and without 10 asks beside them. On the
        # merged backend, the one that kept the base weights (the static one shares its model, merged already,
        # under a lock of its own: swapping weights under one while the other captions would be wrong).
        try:
            save("ask_alone", ask_alone(merged, device))
            a = report["ask_alone"]
            print(f"\nask alone: {a['prompt_tokens']} prompt tokens, prefill {a['prefill_s']:.3f} s, "
                  f"{fmt(a['decode_tokens_per_s'], 1)} tokens/s, {a['new_tokens']} tokens in {a['total_s']:.2f} s, "
                  f"slices p50/max {fmt(a['slice_s']['p50'], 4)}/{fmt(a['slice_s']['max'], 4)} s, kept base weights "
                  f"{a['kept_base_weights_mb']:.0f} MiB")
            pair = []
            # (--tiny: the asks' level only, a CI check of its code; the pair's comparison means nothing there)
            for askers in ((args.askers,) if args.tiny else (0, args.askers)):
                level = asyncio.run(live_level(merged, args.ablate_n, args, source, device, askers=askers))
                pair.append(level)
                asks = level.get("asks", {})
                print(f"N={args.ablate_n}, {askers} asks beside: final p50/p95 "
                      f"{fmt(level['final_latency_s']['p50'], 3)}/{fmt(level['final_latency_s']['p95'], 3)} s, "
                      f"partial p95 {fmt(level['partial_latency_s']['p95'], 3)} s"
                      + (f"; {asks['done']} asks, p50/p95 {fmt(asks['ask_s']['p50'])}/{fmt(asks['ask_s']['p95'])} s,"
                         f" slice max {fmt(asks['slice_s']['max'], 4)} s {asks['errors'] or ''}" if asks else ""))
            save("ask_beside_captions", pair)
        except Exception as exc:  # noqa: BLE001 - new code first run on a GPU: report, keep the rest
            report["ask_error"] = f"{type(exc).__name__}: {exc}"
            print(f"ask the meeting: failed ({report['ask_error']})")
        fastest.close()

    save("memory", memory(device))
    if device == "cuda":
        print(f"GPU memory: {report['memory']['allocated_gb']:.2f} GB allocated at the end, "
              f"{report['memory']['peak_gb']:.2f} GB peak (torch.cuda.max_memory_allocated, after the build)")
    print(f"total wall {report['wall_s']:.1f} s" + (f"; report in {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
