"""bench.gpu's printed tables: the offline runs and a row per live level (the JSON report is the full record)."""
from __future__ import annotations

import numpy as np



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
          f"| {fmt(d['steps_per_batch'], 1)} | {fmt(d['draft_acceptance'])} | {fmt(level['loop_lag_ms']['max'], 1)} "
          f"| {fmt(next(iter(mem.values())))} |", flush=True)


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
