"""One soak: every client at once against a server (or a cluster's balancer), with a bystander pinging and the
servers' memory sampled meanwhile; the clients' results summed into one report, with each replica's share of the
sessions and Redis's commands per final for a cluster."""
from __future__ import annotations

import asyncio
import random
import re
import time
from pathlib import Path

import numpy as np

from server.config import SegmenterConfig, load_config
from server.core.vad import make_vad

from ..redis_server import redis_ops_between, redis_usage
from ..server import engine_counters, health
from .audio import UTTERANCES, reference_windows, speech_and_pauses
from .clients import one_client, ping_while


async def soak(url: str, clients: int, seconds: float, drop_share: float = 0.0, seed: int = 0,
               segmenter: SegmenterConfig | None = None, replicas: list | None = None,
               redis_url: str | None = None) -> dict:
    """`segmenter`: the server's settings (default: configs/default.yaml's), for the windows its finals must cover.
    `replicas` (bench.cluster.Replica: name, direct url, log_path): the servers behind `url` when it is a
    balancer, each watched and reported on its own; `redis_url`: the Redis they share, its commands counted."""
    cfg = segmenter or load_config().segmenter
    for first in range(min(clients, len(UTTERANCES))):
        stream = speech_and_pauses(seconds, first)
        stream.windows, stream.vad_frame = reference_windows(stream.audio, cfg), make_vad(cfg).frame_samples
    # Memory is a process's: behind a balancer, each replica is asked at its own address.
    watched = {r.name: r.url for r in replicas} if replicas else {"server": url}
    rss: dict[str, list[float | None]] = {name: [] for name in watched}
    rtts: list[float] = []
    before = cluster_counters(replicas, redis_url) if replicas else None
    done = asyncio.Event()
    pinger = asyncio.create_task(ping_while(url, rtts, done))
    t0 = time.monotonic()

    async def sample_memory() -> None:
        while True:
            for name, server_url in watched.items():
                rss[name].append((await asyncio.to_thread(health, server_url))["rss_mb"])
            await asyncio.sleep(2.0)

    sampler = asyncio.create_task(sample_memory())
    rng = random.Random(seed)
    delays = [rng.uniform(0, 2.0) for _ in range(clients)]
    droppers = set(random.Random(seed + 1).sample(range(clients), round(drop_share * clients)))
    results = await asyncio.gather(*[one_client(url, n, seconds, delays[n],
                                                random.Random(seed * 100_003 + n) if n in droppers else None)
                                     for n in range(clients)], return_exceptions=True)
    sampler.cancel()
    done.set()
    await pinger
    wall = time.monotonic() - t0
    crashed = [repr(r) for r in results if isinstance(r, BaseException)]
    ok = [r for r in results if isinstance(r, dict)]
    lat = np.array([x for r in ok for x in r["final_latencies"]] or [np.nan])
    total = lambda key: sum(r[key] for r in ok)  # noqa: E731
    report = {
        "clients": clients, "seconds": seconds, "wall_s": round(wall, 1), "drop_share": drop_share,
        "utterances": total("utterances"), "finals_expected": total("finals_expected"), "finals": total("finals"),
        "final_messages": total("final_messages"), "resent_finals": total("resent"),
        "lost_finals": total("lost"), "lost_speech_s": round(total("lost_speech_s"), 3),
        "clipped_finals": total("clipped"), "clipped_speech_s": round(total("clipped_speech_s"), 3),
        "jitter_speech_s": round(total("jitter_speech_s"), 3), "split_finals": total("split"),
        "speech_outside_windows_s": round(total("speech_outside_windows_s"), 3),
        "missing_segments": total("missing_segments"), "doubled_finals": total("doubled"),
        "redelivered_finals": total("redelivered"), "stray_finals": total("stray"),
        "finals_ahead_of_audio": total("finals_ahead_of_audio"),
        "drops": total("dropped"), "resumes": total("resumed"),
        "resume_failures": [r["resume_failure"] for r in ok if r["dropped"] and not r["resumed"]],
        "errors": sum(len(r["errors"]) for r in ok), "error_codes": sorted({m.get("code") for r in ok
                                                                            for m in r["errors"]}),
        "unended_streams": sum(not r["ended"] for r in ok), "crashed_clients": crashed,
        # Every client with something wrong or clipped, in full: where its speech went uncovered, its finals.
        "flagged_clients": [{k: v for k, v in r.items() if k not in ("errors", "final_latencies")}
                            for r in ok if r["lost"] or r["clipped"] or r["missing_segments"] or r["doubled"]
                            or r["errors"] or r["finals_ahead_of_audio"]
                            or r["finals"] != r["finals_expected"] or (r["dropped"] and not r["resumed"])
                            or not r["ended"]],
        "final_latency_min": round(float(np.nanmin(lat)), 3),
        "final_latency_p50": round(float(np.nanpercentile(lat, 50)), 3),
        "final_latency_p95": round(float(np.nanpercentile(lat, 95)), 3),
        "ping_rtt_ms_p50": round(float(np.percentile(rtts, 50)), 1),
        "ping_rtt_ms_p95": round(float(np.percentile(rtts, 95)), 1), "ping_rtt_ms_max": round(max(rtts), 1),
    }
    if not replicas:
        # The server's own measure of a blocked loop, apart from what the bystander's ping picks up on this side.
        return {**report, **memory_report(rss["server"]), "server": server_summary(url)}
    # A cluster: memory summed over the replicas at each sample (each replica's own in its server block).
    summed = [round(sum(tick), 1) if None not in tick else None for tick in zip(*rss.values())]
    return {**report, **memory_report(summed),
            "server": {r.name: {**server_summary(r.url), **memory_report(rss[r.name])} for r in replicas},
            **cluster_report(replicas, redis_url, before, report["finals"])}


def server_summary(url: str) -> dict:
    return {k: v for k, v in health(url).items() if k in ("backend", "model", "engine", "loop_lag")}


def memory_report(samples: list[float | None]) -> dict:
    """Flat memory: the mean of the last third of the run against the mean of its middle third (MB)."""
    mem = [m for m in samples if m is not None]
    third = max(1, len(mem) // 3)
    return {"rss_mb_warm": round(float(np.mean(mem[third:2 * third])), 1) if mem else None,
            "rss_mb_end": round(float(np.mean(mem[-third:])), 1) if mem else None, "rss_mb_samples": mem}


# Each replica logs one of these lines for every stream it starts: its share of the sessions.
SESSION_LINE = re.compile(r"session \w+ (opened|resumed) from")


def cluster_counters(replicas: list, redis_url: str | None) -> dict:
    """What the cluster has counted before the soak (a cluster given to soak() may have served before)."""
    return {"engine": {r.name: engine_counters(r.url) for r in replicas},
            "log_size": {r.name: r.log_path.stat().st_size for r in replicas},
            "redis": redis_usage(redis_url) if redis_url else None}


def sessions_in_log(log_path: Path, since: int) -> dict:
    """Streams a replica started after byte `since` of its log: {"opened": n, "resumed": n}."""
    with open(log_path, "rb") as f:
        f.seek(since)
        kinds = [m.group(1) for m in SESSION_LINE.finditer(f.read().decode(errors="replace"))]
    return {"opened": kinds.count("opened"), "resumed": kinds.count("resumed")}


def cluster_report(replicas: list, redis_url: str | None, before: dict, finals: int) -> dict:
    """Where the sessions went (each replica's log: sessions opened and resumed there; its engine: windows and
    audio seconds), and how many Redis commands the cluster ran per final (heartbeats included: Redis's own
    count, not the replicas' idea of it)."""
    sessions = {r.name: sessions_in_log(r.log_path, before["log_size"][r.name]) for r in replicas}
    started = sum(s["opened"] + s["resumed"] for s in sessions.values())
    share = {}
    for r in replicas:
        engine, was = engine_counters(r.url), before["engine"][r.name]
        n = sessions[r.name]["opened"] + sessions[r.name]["resumed"]
        share[r.name] = {**sessions[r.name], "share": round(n / started, 3) if started else None,
                         "windows": engine["windows"] - was["windows"],
                         "audio_s": round(engine["audio_seconds"] - was["audio_seconds"], 1)}
    report = {"replicas": len(replicas), "replica_sessions": share}
    if redis_url:
        ops, by_command = redis_ops_between(before["redis"], redis_usage(redis_url))
        per_final = lambda n: round(n / finals, 2) if finals else None  # noqa: E731
        report.update(redis_ops=ops, redis_ops_per_final=per_final(ops),
                      redis_ops_per_final_by_command={k: per_final(n) for k, n in by_command.items()})
    return report

