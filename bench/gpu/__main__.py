"""`python -m bench.gpu`: its flags, and its sections in order, each saved to the JSON report as it ends (the
sections and what they report: the package's docstring, bench/gpu/__init__.py)."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from server.config import load_config

from . import __doc__ as ABOUT
from .ask import ask_alone
from .audio import cut_clips, speech_source
from .live import ablation, live_level, live_load
from .measure import environment, memory, reset_peak
from .model import FULL_SHAPES, build_random_salm, load_tiny_salm, make_backend
from .offline import draft_decoding, engine_offline, nemo_generate, nemo_pipeline
from .report import fmt, print_live_row, print_offline


def parse_args(argv):
    default_engine = load_config().engine
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=ABOUT.split("\n\n")[0])
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
