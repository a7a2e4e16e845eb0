"""`python -m bench.soak --clients 200 --seconds 60`: many clients stream speech-and-pause audio at real time.

Checks what users judge us on over a long run: every utterance gets exactly one final (none lost, none
doubled), no client sees an error, and the server's memory stays flat after warm-up. Without `--url` it starts
its own server (tiny random-weight SALM by default, or the Whisper CPU backend) on a free loopback port.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from websockets.asyncio.client import connect

from client.stream import stream_audio
from .clips import load_16k
from .server import ROOT, health, run_server

RATE = 16000
# Short single utterances (no inner pause longer than the VAD hangover): each must give exactly one final.
UTTERANCES = ["ldc93s1.wav", "uberi_one_two_three.wav"]
PAUSE_S = 1.5


def speech_and_pauses(seconds: float, first: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """`seconds` of utterances separated by pauses, starting with utterance `first` of the cycle, and each
    utterance's (start, end) in seconds."""
    clips = [load_16k(ROOT.parent / "shared" / "audio" / name) for name in UTTERANCES]
    total = int(seconds * RATE)
    audio = np.zeros(total, np.float32)
    spans, pos, i = [], int(0.5 * RATE), first
    while pos + len(clips[i % len(clips)]) + RATE // 2 <= total:
        clip = clips[i % len(clips)]
        audio[pos:pos + len(clip)] = clip
        spans.append((pos / RATE, (pos + len(clip)) / RATE))
        pos += len(clip) + int(PAUSE_S * RATE)
        i += 1
    return audio, spans


async def one_client(url: str, n: int, seconds: float, delay: float) -> dict:
    await asyncio.sleep(delay)  # staggered starts, as real users arrive
    audio, spans = speech_and_pauses(seconds, first=n)
    t0 = time.monotonic()
    arrivals: list[tuple[float, dict]] = []
    result = await stream_audio(audio, RATE, url, speed=1.0, frame_ms=100,
                                on_message=lambda m: arrivals.append((time.monotonic() - t0, m)))
    finals = result.finals
    per_span = [sum(f["start"] < e and f["end"] > s for f in finals) for s, e in spans]
    latencies = [t - m["end"] for t, m in arrivals if m["type"] == "final" and m["end"] < seconds - 0.01]
    return {"utterances": len(spans), "lost": per_span.count(0), "doubled": sum(c > 1 for c in per_span),
            "stray": sum(not any(f["start"] < e and f["end"] > s for s, e in spans) for f in finals),
            "errors": [m for m in result.messages if m["type"] == "error"], "finals": len(finals),
            "final_latencies": latencies, "ended": result.messages[-1]["type"] == "end"}


async def ping_while(url: str, rtts: list[float], stop: asyncio.Event) -> None:
    """A bystander connection pinging every 100 ms: its round trips show whether the event loop ever stalls."""
    async with connect(url) as ws:
        while not stop.is_set():
            t = time.monotonic()
            await ws.send('{"type":"ping"}')
            assert json.loads(await ws.recv())["type"] == "pong"
            rtts.append((time.monotonic() - t) * 1000)
            await asyncio.sleep(0.1)


async def soak(url: str, clients: int, seconds: float) -> dict:
    rss: list[tuple[float, float]] = []
    rtts: list[float] = []
    done = asyncio.Event()
    pinger = asyncio.create_task(ping_while(url, rtts, done))
    t0 = time.monotonic()

    async def sample_memory() -> None:
        while True:
            rss.append((time.monotonic() - t0, (await asyncio.to_thread(health, url))["rss_mb"]))
            await asyncio.sleep(2.0)

    sampler = asyncio.create_task(sample_memory())
    rng = random.Random(0)
    results = await asyncio.gather(*[one_client(url, n, seconds, rng.uniform(0, 2.0)) for n in range(clients)],
                                   return_exceptions=True)
    sampler.cancel()
    done.set()
    await pinger
    wall = time.monotonic() - t0
    crashed = [repr(r) for r in results if isinstance(r, BaseException)]
    ok = [r for r in results if isinstance(r, dict)]
    lat = np.array([x for r in ok for x in r["final_latencies"]] or [np.nan])
    # Flat memory: compare the mean of the last third of the run with the mean of its middle third.
    mem = [m for t, m in rss if m is not None]
    third = max(1, len(mem) // 3)
    return {
        "clients": clients, "seconds": seconds, "wall_s": round(wall, 1),
        "utterances": sum(r["utterances"] for r in ok), "finals": sum(r["finals"] for r in ok),
        "lost_finals": sum(r["lost"] for r in ok), "doubled_finals": sum(r["doubled"] for r in ok),
        "stray_finals": sum(r["stray"] for r in ok), "errors": sum(len(r["errors"]) for r in ok),
        "unended_streams": sum(not r["ended"] for r in ok), "crashed_clients": crashed,
        "final_latency_p50": round(float(np.nanpercentile(lat, 50)), 3),
        "final_latency_p95": round(float(np.nanpercentile(lat, 95)), 3),
        "ping_rtt_ms_p50": round(float(np.percentile(rtts, 50)), 1),
        "ping_rtt_ms_p95": round(float(np.percentile(rtts, 95)), 1), "ping_rtt_ms_max": round(max(rtts), 1),
        "rss_mb_warm": round(float(np.mean(mem[third:2 * third])), 1) if mem else None,
        "rss_mb_end": round(float(np.mean(mem[-third:])), 1) if mem else None,
        "rss_mb_samples": mem,
        # The server's own measure of a blocked loop, apart from what the bystander's ping picks up on this side.
        "server": {k: v for k, v in health(url).items() if k in ("backend", "model", "engine", "loop_lag")},
    }


def passed(report: dict) -> bool:
    return not (report["lost_finals"] or report["doubled_finals"] or report["errors"]
                or report["unended_streams"] or report["crashed_clients"])


def markdown(r: dict) -> str:
    rows = [("clients", r["clients"]), ("seconds of audio per client", r["seconds"]), ("wall time (s)", r["wall_s"]),
            ("utterances sent", r["utterances"]), ("finals received", r["finals"]), ("lost finals", r["lost_finals"]),
            ("doubled finals", r["doubled_finals"]), ("errors", r["errors"]),
            ("final latency p50 / p95 (s)", f"{r['final_latency_p50']} / {r['final_latency_p95']}"),
            ("ping round trip p50 / p95 / max (ms)",
             f"{r['ping_rtt_ms_p50']} / {r['ping_rtt_ms_p95']} / {r['ping_rtt_ms_max']}"),
            ("server event-loop lag max / times over 250 ms",
             f"{r['server']['loop_lag']['max_ms']} ms / {r['server']['loop_lag']['over_250ms']}"),
            ("server RSS after warm-up / at end (MB)", f"{r['rss_mb_warm']} / {r['rss_mb_end']}"),
            ("backend", r["server"]["backend"])]
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--url", help="an already running server's /v1/listen (default: start one here)")
    p.add_argument("--backend", choices=["tiny-salm", "whisper"], default="tiny-salm")
    p.add_argument("--model", help="an existing tiny SALM checkpoint directory (default: write a fresh one)")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for the server started here, e.g. --set engine.drafts=false")
    args = p.parse_args(argv)

    async def run(url: str) -> dict:
        return await soak(url, args.clients, args.seconds)

    if args.url:
        report = asyncio.run(run(args.url))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            server_args = ["--data-dir", f"{tmp}/data", "--set", f"limits.max_connections_per_ip={args.clients + 10}"]
            if args.backend == "tiny-salm":
                from server.tiny_model import write_tiny_checkpoint

                model = args.model or write_tiny_checkpoint(Path(tmp) / "tiny-salm")
                server_args += ["--backend", "salm", "--model", str(model), "--device", "cpu"]
            else:
                server_args += ["--backend", "whisper"]
            for item in args.set:
                server_args += ["--set", item]
            with run_server(*server_args, log_path=Path(tmp) / "server.log") as url:
                report = asyncio.run(run(url))
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    ok = passed(report)
    print("PASS: every utterance got exactly one final, no errors" if ok else "FAIL: see the report")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
