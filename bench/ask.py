"""`python -m bench.ask`: what asking the meeting costs the captions, and how long an ask takes, as numbers.

    python -m bench.ask [--streams 2] [--askers 10] [--seconds 60] [--backend whisper] [--set KEY=VALUE ...]

A server (started here on a free loopback port) gets a room transcript first (the manifest's clips, streamed as
fast as it takes them), then two phases of `--streams` live streams of meeting audio at real time into that room:
without asks, then with `--askers` clients asking questions about the room back to back
(tests/ask_questions.json in turn, numbered so that each is new; `intelligence.max_concurrent_asks` is raised to `--askers` so that none is
refused). Printed: p50/p95 final latency per phase (arrival minus the sending of the window's last speech, as in
bench.stream), and the asks' p50/p95 latency, count, refusals and mode.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from client.stream import stream_audio

from .clips import RATE, read_manifest
from .meeting import meeting
from .metrics import percentile
from .server import run_server
from .stream import final_latencies, stream_clip

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT.parent / "shared" / "audio" / "MANIFEST.tsv"
QUESTIONS = ROOT / "tests" / "ask_questions.json"
ROOM = "bench"


def pct(values: list[float], q: float) -> float | None:
    p = percentile(values, q)
    return None if p is None else round(p, 3)


async def asker(base: str, questions, stop: asyncio.Event, out: dict) -> None:
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            t0 = time.monotonic()
            async with http.post(f"{base}/v1/rooms/{ROOM}/ask", json={"question": next(questions)}) as r:
                body = await r.json()
            if r.status == 200:
                out["seconds"].append(time.monotonic() - t0)
                out["mode"] = body["mode"]
            else:
                out["refused"][r.status] = out["refused"].get(r.status, 0) + 1
                await asyncio.sleep(float(r.headers.get("Retry-After", 1)))


async def phase(url: str, clip, streams: int, askers: int) -> dict:
    """`streams` streams of `clip` at real time (each its own window of the room), with `askers` asking."""
    stop = asyncio.Event()
    asks = {"seconds": [], "refused": {}, "mode": None}
    # Numbered, so that each ask is new to the server (its question is embedded, as a new user's question is).
    asked = itertools.cycle([q["question"] for q in json.loads(QUESTIONS.read_text())])
    questions = (f"{q} ({n})" for n, q in enumerate(asked))
    base = url.split("/v1/")[0].replace("ws", "http", 1)
    room_url = f"{url}?room={ROOM}"
    tasks = [asyncio.create_task(asker(base, questions, stop, asks)) for _ in range(askers)]
    runs = await asyncio.gather(*(stream_clip(clip, room_url, 1.0, asyncio.Event()) for _ in range(streams)))
    stop.set()
    await asyncio.gather(*tasks)
    finals = [x for run in runs for x in final_latencies(run)]
    return {"streams": streams, "askers": askers, "finals": len(finals), "final_p50_s": pct(finals, 50),
            "final_p95_s": pct(finals, 95), "asks": len(asks["seconds"]), "ask_p50_s": pct(asks["seconds"], 50),
            "ask_p95_s": pct(asks["seconds"], 95), "refused": asks["refused"], "mode": asks["mode"]}


async def run(url: str, args) -> list[dict]:
    clips = read_manifest(MANIFEST)
    seed = np.concatenate([c.audio for c in clips])
    await stream_audio(seed, RATE, url, speed=0, start_extra={"room": ROOM})  # the transcript asked about
    live = meeting(clips, args.seconds)
    return [await phase(url, live, args.streams, 0), await phase(url, live, args.streams, args.askers)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--askers", type=int, default=10)
    p.add_argument("--seconds", type=float, default=60.0, help="length of each phase's meeting audio")
    p.add_argument("--backend", default="whisper")
    p.add_argument("--set", action="append", default=[], help="server config override KEY=VALUE")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    overrides = [f"intelligence.max_concurrent_asks={max(1, args.askers)}", *args.set]
    with tempfile.TemporaryDirectory() as tmp:
        server_args = ["--backend", args.backend, "--set", f"server.data_dir={tmp}/data",
                       *[a for kv in overrides for a in ("--set", kv)]]
        with run_server(*server_args, log_path=Path(tmp) / "server.log") as url:
            rows = asyncio.run(run(url, args))
    print("| askers | streams | finals | final p50 / p95 s | asks | ask p50 / p95 s | refused | mode |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['askers']} | {r['streams']} | {r['finals']} | {r['final_p50_s']} / {r['final_p95_s']} | "
              f"{r['asks']} | {r['ask_p50_s']} / {r['ask_p95_s']} | {r['refused'] or 0} | {r['mode'] or '-'} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
