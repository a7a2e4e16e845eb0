"""`python -m bench.soak --clients 200 --seconds 60 [--drop-share 0.1]`: many clients stream speech at real time.

Each client's audio is short utterances and pauses. Checks what users judge us on over a long run: all speech gets
its final (none lost, none doubled), no client sees an error, and the server's memory stays flat after warm-up. Without `--url` it starts its own server (tiny
random-weight SALM by default, or the Whisper CPU backend) on a free loopback port.

With `--replicas N` it starts a cluster instead (bench.cluster: Redis, N replicas of that server, nginx in front
balancing by least connections) and every client goes through nginx: a client that drops reconnects through nginx
and may land on another replica, so its resume must work across replicas. The report adds each replica's share of
the sessions, Redis commands per final (in all and per command), and the server block per replica.

With `--drop-share S`, that share of the clients drops its TCP connection abruptly (no close handshake) once, at a
random moment while it is sending speech (a window is open), reconnects after a short outage with `resume` from
the end of the last final it received, resends its audio from there (the backlog at once, then real time) and goes
on to the end.

Every client's finals (resent ones merged by segment) are checked against its own audio:
- the finals expected are the windows the server's segmenter cuts that audio into when nothing drops (computed
  here with the same VAD and settings: configs/default.yaml plus --set; with --url, the defaults), the window a drop
  cut counted as two: its part up to the drop (flushed then, resent on resume) and the rest;
- an expected final whose speech (the clips' 10 ms speech frames) no final covers is a lost final; one whose speech
  the finals miss in part, by more than one VAD frame, is a clipped final (the seconds missed are reported; less is
  frame jitter, summed apart: a resumed stream's VAD frames start at the resume point); finals beyond one for the
  same expected final, all its speech covered, are split finals (reported, not a failure). Speech that no window
  holds even without a drop is the VAD's own allowance, not a loss (reported apart: 0 for these clips);
- segment numbers must run 0..n-1 with none missing; the same segment twice with another text or span, or two
  finals whose spans overlap, are doubled finals; the same final twice (identical) is counted apart, as
  redelivered.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client.stream import encode, start_message, stream_audio
from server.config import SegmenterConfig, load_config
from server.core.segmenter import Segmenter
from server.core.vad import make_vad

from .cluster import backend_args, cluster
from .clips import FRAME as SPEECH_FRAME, load_16k, speech_mask
from .redis_server import redis_ops_between, redis_usage
from .server import ROOT, engine_counters, health, run_server

RATE = 16000
# Short single utterances (no inner pause longer than the VAD hangover): each gives one window, one final.
UTTERANCES = ["ldc93s1.wav", "uberi_one_two_three.wav"]
PAUSE_S = 1.5
SEND_FRAME = RATE // 10  # 100 ms frames, as a microphone client sends them
# Where in an utterance a drop may fall: on a speech frame at least DROP_AFTER_S past its first one (the VAD has
# opened its window by then) and at least DROP_BEFORE_S before its last (the rest is speech enough for a window of
# its own, so that the cut utterance is expected to give exactly two finals).
DROP_AFTER_S, DROP_BEFORE_S = 0.4, 0.3
OUTAGE_S = (0.2, 1.5)  # how long a dropped client waits before it reconnects
EPS = 1e-6  # seconds: finals' start/end are sample counts / 16000, compared exactly but for float rounding


@lru_cache(maxsize=None)
def clip(name: str) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """A clip at 16 kHz and its speech: runs of 10 ms speech frames as (start, end) samples of the clip."""
    audio = load_16k(ROOT.parent / "shared" / "audio" / name)
    mask = np.concatenate([[False], speech_mask(audio), [False]])
    edges = np.flatnonzero(mask[1:] != mask[:-1])  # starts and ends of the runs, alternating
    return audio, tuple((int(a) * SPEECH_FRAME, int(b) * SPEECH_FRAME) for a, b in zip(edges[::2], edges[1::2]))


@dataclass
class Stream:
    audio: np.ndarray
    spans: list[tuple[float, float]]  # each utterance's (start, end) in seconds, the whole clip
    speech: list[list[tuple[int, int]]]  # each utterance's speech runs, stream samples
    # The server's windows of this audio when nothing drops (samples): set by soak() for its segmenter settings.
    windows: list[tuple[int, int]] = field(default_factory=list)
    vad_frame: int = 0  # samples the VAD decides on at once


@lru_cache(maxsize=None)
def speech_and_pauses(seconds: float, first: int) -> Stream:
    """`seconds` of utterances separated by pauses, starting with utterance `first` of the cycle."""
    clips = [clip(name) for name in UTTERANCES]
    total = int(seconds * RATE)
    audio = np.zeros(total, np.float32)
    spans, speech, pos, i = [], [], int(0.5 * RATE), first
    while pos + len(clips[i % len(clips)][0]) + RATE // 2 <= total:
        samples, runs = clips[i % len(clips)]
        audio[pos:pos + len(samples)] = samples
        spans.append((pos / RATE, (pos + len(samples)) / RATE))
        speech.append([(pos + a, pos + b) for a, b in runs])
        pos += len(samples) + int(PAUSE_S * RATE)
        i += 1
    return Stream(audio, spans, speech)


def reference_windows(audio: np.ndarray, cfg: SegmenterConfig) -> list[tuple[int, int]]:
    """The windows the server's segmenter (same VAD, same settings) cuts this audio into when nothing drops: what
    its finals must cover. The audio goes through the same 16-bit PCM as on the wire."""
    pcm = np.frombuffer(encode(audio, "pcm_s16le"), "<i2").astype(np.float32) / 32768.0
    seg = Segmenter(cfg, make_vad(cfg))
    windows = [w for i in range(0, len(pcm), SEND_FRAME) for w in seg.push(pcm[i:i + SEND_FRAME])]
    return [(w.start, w.end) for w in windows + seg.finalize() if w.final]


def plan_drop(stream: Stream, rng: random.Random) -> int | None:
    """The sample (a frame boundary) at which to drop: on a speech frame of a random utterance but the last."""
    choices = []
    for runs in stream.speech[:-1] or stream.speech:
        lo, hi = runs[0][0] + int(DROP_AFTER_S * RATE), runs[-1][1] - int(DROP_BEFORE_S * RATE)
        choices += [f for a, b in runs for f in range(a - a % SEND_FRAME, b, SEND_FRAME) if lo <= f < hi and a <= f]
    return rng.choice(choices) if choices else None


def merged(intervals) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    """Samples two lists of disjoint intervals have in common."""
    return sum(max(0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


def account(finals: list[dict], stream: Stream, cut_at: float | None) -> dict:
    """Checks one client's finals (in arrival order, resent ones included) against its audio and the windows an
    uninterrupted stream of it gets. `cut_at`: the resumed `ready`'s position (where the server's finals ended at
    the drop); inside a window, the drop cut that window in two. An expected final may miss up to one VAD frame of
    speech without counting as clipped (those seconds are summed apart, as jitter)."""
    by_segment: dict[int, tuple] = {}
    doubled_segments = redelivered = 0
    for f in finals:
        key = (f["text"], f["start"], f["end"])
        if f["segment"] not in by_segment:
            by_segment[f["segment"]] = key
        elif by_segment[f["segment"]] == key:
            redelivered += 1  # the same final twice: harmless, but resume should not send what the client has
        else:
            doubled_segments += 1
    segments = sorted(by_segment)
    missing = (segments[-1] + 1 - len(segments)) if segments else 0  # numbers in 0..last never received
    ordered = [by_segment[s] for s in segments]
    overlaps = sum(b[1] < a[2] - EPS for a, b in zip(ordered, ordered[1:]))  # also: a later segment starting earlier
    spans = [(round(s * RATE), round(e * RATE)) for _, s, e in ordered]
    got = merged(spans)
    speech = merged(run for runs in stream.speech for run in runs)
    # The finals expected: one per window, the window a drop cut as two (the part flushed at the drop, the rest).
    cut = round(cut_at * RATE) if cut_at is not None else None
    expected = [piece for ws, we in stream.windows
                for piece in ([(ws, cut), (cut, we)] if cut is not None and ws < cut < we else [(ws, we)])]
    lost = clipped = 0
    lost_s = clipped_s = jitter_s = 0.0
    where = []
    for ps, pe in expected:
        said = merged((max(a, ps), min(b, pe)) for a, b in speech if a < pe and b > ps)
        total, heard = sum(b - a for a, b in said), overlap(said, got)
        if total and heard < total:
            where.append((ps / RATE, pe / RATE, (total - heard) / RATE))
            if heard == 0:
                lost, lost_s = lost + 1, lost_s + total / RATE
            elif total - heard > stream.vad_frame:
                clipped, clipped_s = clipped + 1, clipped_s + (total - heard) / RATE
            else:  # the VAD decides on whole frames, and a resumed stream's frames start at the resume point
                jitter_s += (total - heard) / RATE
    # Each final belongs to the expected final it overlaps most; more than one there is a split.
    owners = [max(range(len(expected)), key=lambda i: min(e, expected[i][1]) - max(s, expected[i][0]))
              for s, e in spans if any(s < pe and e > ps for ps, pe in expected)]
    splits = len(owners) - len(set(owners))
    return {"utterances": len(stream.spans), "finals_expected": len(expected), "finals": len(ordered),
            "final_messages": len(finals), "lost": lost, "lost_speech_s": lost_s, "clipped": clipped,
            "clipped_speech_s": clipped_s, "jitter_speech_s": jitter_s, "split": splits, "missing_segments": missing,
            "doubled": doubled_segments + overlaps, "redelivered": redelivered,
            "stray": sum(not any(s < ue and e > us for us, ue in stream.spans) for _, s, e in ordered),
            # Speech no window holds even without a drop: what the VAD itself leaves out (0 for these clips).
            "speech_outside_windows_s": (sum(b - a for a, b in speech) - overlap(speech, merged(stream.windows)))
            / RATE, "speech_missed_at": [tuple(round(x, 3) for x in w) for w in where]}


async def one_client(url: str, n: int, seconds: float, delay: float, drop_rng: random.Random | None) -> dict:
    """One client streaming at real time; with `drop_rng`, it drops once mid-speech and resumes."""
    await asyncio.sleep(delay)  # staggered starts, as real users arrive
    stream = speech_and_pauses(seconds, n % len(UTTERANCES))
    drop_at = plan_drop(stream, drop_rng) if drop_rng else None
    t0 = time.monotonic()
    arrivals: list[tuple[float, dict]] = []
    record = lambda m: arrivals.append((time.monotonic() - t0, m))  # noqa: E731
    if drop_at is None:
        result = await stream_audio(stream.audio, RATE, url, speed=1.0, frame_ms=100, on_message=record)
        messages, drop = result.messages, {}
    else:
        messages, drop = await dropping_stream(url, stream.audio, drop_at, record,
                                               outage_s=drop_rng.uniform(*OUTAGE_S))
    finals = [m for m in messages if m["type"] == "final"]
    report = account(finals, stream, drop.get("position"))
    latencies = [t - m["end"] for t, m in arrivals
                 if m["type"] == "final" and not m.get("resent") and m["end"] < seconds - 0.01]
    return {**report, "errors": [m for m in messages if m["type"] == "error"], "final_latencies": latencies,
            "ended": bool(messages) and messages[-1]["type"] == "end", "dropped": drop_at is not None,
            "resumed": drop.get("resumed", False), "resume_failure": drop.get("failure"),
            "resent": sum(bool(m.get("resent")) for m in finals), "client": n, "drop_at": drop_at and drop_at / RATE,
            **{k: drop[k] for k in ("offset", "position") if k in drop},
            "finals_seen": [(m["segment"], m["start"], m["end"], bool(m.get("resent"))) for m in finals]}


async def dropping_stream(url: str, audio: np.ndarray, drop_at: int, record, outage_s: float
                          ) -> tuple[list[dict], dict]:
    """Streams `audio` at real time until sample `drop_at`, aborts the TCP connection (no close handshake), waits
    `outage_s`, resumes from the end of the last final received and resends from there: the backlog at once,
    then real time on the first connection's clock. Returns the messages received on both connections, in order,
    and what happened at the drop."""
    messages: list[dict] = []
    info: dict = {"resumed": False}

    async def send_from(ws, first: int, last: int, t0: float) -> None:
        for i in range(first, last, SEND_FRAME):
            await ws.send(encode(audio[i:min(i + SEND_FRAME, last)], "pcm_s16le"))
            await asyncio.sleep(max(0.0, t0 + min(i + SEND_FRAME, last) / RATE - time.monotonic()))

    async with connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps(start_message(RATE)))
        ready = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        if ready.get("type") != "ready":
            raise RuntimeError(f"server refused the stream: {ready}")
        t0 = time.monotonic()
        live = True

        async def receive() -> None:
            try:
                async for raw in ws:
                    if not live:
                        return  # what arrives after the drop never reached this client
                    msg = json.loads(raw)
                    messages.append(msg)
                    record(msg)
            except ConnectionClosed:
                pass

        receiver = asyncio.create_task(receive())
        await send_from(ws, 0, drop_at, t0)
        live = False
        ws.transport.abort()
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
    finals = [m for m in messages if m["type"] == "final"]
    offset = round(finals[-1]["end"] * RATE) if finals else 0  # the client's backlog begins at its last final's end
    await asyncio.sleep(outage_s)
    async with connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps(start_message(RATE, resume=ready["session"], resume_token=ready["resume_token"],
                                               offset=offset)))
        again = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        if again.get("type") != "ready" or again.get("session") != ready["session"] or not again.get("resumed"):
            messages.append(again)
            info["failure"] = again
            return messages, info
        info.update(resumed=True, position=again["position"], offset=offset)

        async def receive_rest() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                messages.append(msg)
                record(msg)

        receiver = asyncio.create_task(receive_rest())
        await send_from(ws, offset, len(audio), t0)
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(receiver, timeout=300)
    return messages, info


async def ping_while(url: str, rtts: list[float], stop: asyncio.Event) -> None:
    """A bystander connection pinging every 100 ms: its round trips show whether the event loop ever stalls."""
    async with connect(url) as ws:
        while not stop.is_set():
            t = time.monotonic()
            await ws.send('{"type":"ping"}')
            assert json.loads(await ws.recv())["type"] == "pong"
            rtts.append((time.monotonic() - t) * 1000)
            await asyncio.sleep(0.1)


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
        "drops": total("dropped"), "resumes": total("resumed"),
        "resume_failures": [r["resume_failure"] for r in ok if r["dropped"] and not r["resumed"]],
        "errors": sum(len(r["errors"]) for r in ok), "error_codes": sorted({m.get("code") for r in ok
                                                                            for m in r["errors"]}),
        "unended_streams": sum(not r["ended"] for r in ok), "crashed_clients": crashed,
        # Every client with something wrong or clipped, in full: where its speech went uncovered, its finals.
        "flagged_clients": [{k: v for k, v in r.items() if k not in ("errors", "final_latencies")}
                            for r in ok if r["lost"] or r["clipped"] or r["missing_segments"] or r["doubled"]
                            or r["errors"]
                            or r["finals"] != r["finals_expected"] or (r["dropped"] and not r["resumed"])
                            or not r["ended"]],
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


# Each replica logs one of these lines for every stream it starts (server/listen.py): its share of the sessions.
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


def passed(report: dict) -> bool:
    """Nothing said lost (or clipped), nothing doubled, no error, every resume taken. Split finals (a window's speech
    in more finals than an uninterrupted stream gives, all of it there once) are reported, not failed."""
    return not (report["lost_finals"] or report["clipped_finals"] or report["missing_segments"]
                or report["doubled_finals"] or report["errors"] or report["resume_failures"]
                or report["unended_streams"] or report["crashed_clients"])


def markdown(r: dict) -> str:
    servers = list(r["server"].values()) if "replicas" in r else [r["server"]]  # a cluster's: one per replica
    rows = [("clients", r["clients"]), ("seconds of audio per client", r["seconds"]), ("wall time (s)", r["wall_s"]),
            ("clients dropped / resumed / resume failures",
             f"{r['drops']} / {r['resumes']} / {len(r['resume_failures'])}"),
            ("utterances sent", r["utterances"]),
            ("finals expected (1 per window of the undropped stream, +1 per window a drop cut)", r["finals_expected"]),
            ("finals received (distinct segments; resent after resume)", f"{r['finals']} ({r['resent_finals']})"),
            ("lost finals (an expected final's speech, none of it in any final)",
             f"{r['lost_finals']} ({r['lost_speech_s']} s of speech)"),
            ("clipped finals (speech partly outside every final, by more than a VAD frame)",
             f"{r['clipped_finals']} ({r['clipped_speech_s']} s of speech"
             + (f"; {r['jitter_speech_s']} s more within a frame" if r["jitter_speech_s"] else "") + ")"),
            ("split finals (more finals than expected for one window, none of its speech lost)", r["split_finals"]),
            ("segment numbers never received", r["missing_segments"]),
            ("doubled finals (a segment twice, different; spans overlapping)", r["doubled_finals"]),
            ("errors", f"{r['errors']}" + (f" ({', '.join(map(str, r['error_codes']))})" if r["errors"] else "")),
            ("final latency p50 / p95 (s)", f"{r['final_latency_p50']} / {r['final_latency_p95']}"),
            ("ping round trip p50 / p95 / max (ms)",
             f"{r['ping_rtt_ms_p50']} / {r['ping_rtt_ms_p95']} / {r['ping_rtt_ms_max']}"),
            ("server event-loop lag max / times over 250 ms" + (" (worst replica / all)" if "replicas" in r else ""),
             f"{max(s['loop_lag']['max_ms'] for s in servers)} ms / "
             f"{sum(s['loop_lag']['over_250ms'] for s in servers)}"),
            ("server RSS after warm-up / at end (MB)" + (", all replicas" if "replicas" in r else ""),
             f"{r['rss_mb_warm']} / {r['rss_mb_end']}"),
            ("backend", servers[0]["backend"])]
    if "replicas" in r:
        rows += cluster_rows(r)
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def cluster_rows(r: dict) -> list[tuple[str, object]]:
    rows = [("replicas", r["replicas"]),
            ("sessions per replica: opened + resumed (share; windows)",
             ", ".join(f"{name} {s['opened']} + {s['resumed']} ({s['share']}; {s['windows']})"
                       for name, s in r["replica_sessions"].items()))]
    if "redis_ops" in r:
        top = sorted(r["redis_ops_per_final_by_command"].items(), key=lambda kv: -kv[1])
        rows += [("Redis commands per final (heartbeats included)", f"{r['redis_ops_per_final']} "
                  f"({r['redis_ops']} in all" + "".join(f"; {k} {v}" for k, v in top) + ")")]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--drop-share", type=float, default=0.0,
                   help="share of the clients that drop their connection once mid-speech and resume (default 0)")
    p.add_argument("--seed", type=int, default=0, help="picks who drops, where, and the start delays")
    p.add_argument("--url", help="an already running server's /v1/listen (default: start one here)")
    p.add_argument("--replicas", type=int, help="start N replicas sharing a Redis behind nginx (bench.cluster) "
                                                "instead of one server, all clients through nginx")
    p.add_argument("--backend", choices=["tiny-salm", "whisper"], default="tiny-salm")
    p.add_argument("--model", help="an existing tiny SALM checkpoint directory (default: write a fresh one)")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for the server started here, e.g. --set engine.drafts=false")
    args = p.parse_args(argv)
    if not 0 <= args.drop_share <= 1:
        p.error("--drop-share must be between 0 and 1")
    if args.replicas is not None and (args.replicas < 1 or args.url):
        p.error("--replicas takes N >= 1, and starts its own cluster: not with --url")

    try:
        overrides = dict(item.split("=", 1) for item in args.set)
    except ValueError:
        p.error("--set takes KEY=VALUE")
    segmenter = load_config(None, overrides).segmenter  # what the server started here runs with (--url: defaults)

    async def run(url: str, replicas: list | None = None, redis_url: str | None = None) -> dict:
        return await soak(url, args.clients, args.seconds, args.drop_share, args.seed, segmenter, replicas,
                          redis_url)

    if args.url:
        report = asyncio.run(run(args.url))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            # All clients come from 127.0.0.1 (through nginx too: the replicas see nginx's address).
            server_args = ["--set", f"limits.max_connections_per_ip={args.clients + 10}",
                           *backend_args(args.backend, args.model, Path(tmp))]
            for item in args.set:
                server_args += ["--set", item]
            if args.replicas:
                # Each replica gets its own data dir there; clients go through nginx.
                with cluster(args.replicas, Path(tmp) / "cluster", tuple(server_args)) as c:
                    report = asyncio.run(run(c.url, c.replicas, c.redis_url))
            else:
                with run_server("--data-dir", f"{tmp}/data", *server_args, log_path=Path(tmp) / "server.log") as url:
                    report = asyncio.run(run(url))
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    ok = passed(report)
    split = f" ({report['split_finals']} more finals than expected: windows split)" if report["split_finals"] else ""
    print(f"PASS: all speech is in the finals{split}, none lost, clipped or doubled, no errors, every resume taken"
          if ok else "FAIL: see the report (its JSON lists each flagged client)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
