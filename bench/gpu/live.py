"""bench.gpu's live load (3): N simulated streams at real-time pace through our engine, a level at a time, with
asks beside the captions where asked; the ramp of levels and the bucketing/drafts/max_batch ablation."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from server.config import EngineConfig
from server.core.engine import Engine
from server.httpapi.looplag import LoopLag

from .ask import ask_messages, asker
from .audio import RATE, speech_source
from .measure import memory, pct
from .model import Shared
from .report import print_live_row


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
                last_text[ev.stream, ev.start] = fut.result().text
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
