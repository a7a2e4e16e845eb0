"""`python -m bench.stream`: its flags, the clips, the server it starts unless given --url, and the order of it all:
stream, offline run, report (what it measures: the package's docstring, bench/stream/__init__.py)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

from server.backends import BACKENDS

from ..clips import Clip, add_noise, read_manifest
from ..meeting import meeting
from ..server import engine_counters, run_server
from . import __doc__ as ABOUT
from .clients import ClipRun, stream_all
from .offline import offline_transcripts
from .report import markdown, plot_cdfs, report


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=ABOUT,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, required=True, help="TSV with a header, columns name and transcript")
    p.add_argument("--url", help="an already running server (default: start one on a free loopback port)")
    p.add_argument("--backend", choices=["auto", *BACKENDS], help="backend of the server started here")
    p.add_argument("--model", help="the backend's model: hub id, model name or local directory")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"])
    p.add_argument("--vad", choices=["webrtc", "silero"], help="VAD of the server started here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the server started here, e.g. segmenter.partial_interval_s=1.0")
    p.add_argument("--streams", type=int, default=1, help="concurrent streams (default 1)")
    p.add_argument("--speed", type=float, default=1.0, help="pace of each stream, 1.0 = real time")
    p.add_argument("--clips", type=int, help="how many clips (default: every manifest row once; more cycles)")
    p.add_argument("--meeting", type=float, default=0.0, metavar="SECONDS",
                   help="add one meeting-like stream: the manifest's clips joined with pauses, at least this long")
    p.add_argument("--noise-snr", type=float, metavar="DB", help="mix white noise at this SNR into every clip")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--no-offline", action="store_true", help="skip the offline run (offline_wer: null)")
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--plot", type=Path, help="write the latency CDFs here (PNG)")
    args = p.parse_args(argv)
    if args.streams < 1 or args.speed <= 0:
        p.error("--streams must be >= 1 and --speed > 0")
    if args.url and (args.vad or args.set or args.backend):
        p.error("--backend, --vad and --set configure the server started here; they do not apply with --url")
    return args


def server_args(args: argparse.Namespace) -> list[str]:
    out = []
    for flag in ("backend", "model", "device", "vad"):
        if getattr(args, flag):
            out += [f"--{flag}", getattr(args, flag)]
    for item in args.set:
        out += ["--set", item]
    return out


def segmenter_settings(args: argparse.Namespace) -> dict:
    """The segmenter settings the server started here runs with (config file, then --vad and --set)."""
    import dataclasses

    from server.config import load_config

    overrides = dict(item.split("=", 1) for item in args.set)
    return dataclasses.asdict(load_config(None, {**overrides, "segmenter.vad": args.vad}).segmenter)


def load_clips(args: argparse.Namespace) -> list[Clip]:
    clips = read_manifest(args.manifest, args.clips)
    if args.meeting > 0:
        clips.append(meeting(read_manifest(args.manifest), args.meeting))
    if args.noise_snr is not None:
        # Seeded by name: a clip repeated by cycling gets the same noise, so it is the same audio offline.
        clips = [add_noise(c, args.noise_snr, args.seed + zlib.crc32(c.name.encode())) for c in clips]
    if not clips:
        raise SystemExit("no clips to stream")
    return clips


def measure(clips: list[Clip], url: str, args: argparse.Namespace) -> tuple[list[ClipRun], float, float]:
    """Streams everything; returns the runs and the server's compute and decoded-audio seconds meanwhile."""
    before = engine_counters(url)
    runs = asyncio.run(stream_all(clips, url, args.streams, args.speed))
    after = engine_counters(url)
    return runs, after["compute_seconds"] - before["compute_seconds"], after["audio_seconds"] - before["audio_seconds"]


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    clips = load_clips(args)
    print(f"streaming {len(clips)} clips ({sum(c.seconds for c in clips):.0f} s of audio) on {args.streams} "
          f"stream(s) at {args.speed}x", file=sys.stderr)
    if args.url:
        runs, compute_s, engine_audio_s = measure(clips, args.url, args)
        segmenter = None  # a server we did not start: its settings are its own
    else:
        log = Path(tempfile.gettempdir()) / f"bench-server-{time.time_ns()}.log"
        with run_server(*server_args(args), log_path=log) as url:
            runs, compute_s, engine_audio_s = measure(clips, url, args)
        segmenter = segmenter_settings(args)
    ready = runs[0].ready
    offline, note = None, "skipped (--no-offline)"
    if not args.no_offline:
        print(f"offline run of backend {ready['backend']} on {len(clips)} whole clips", file=sys.stderr)
        offline, note = offline_transcripts(clips, ready["backend"], args.model or ready["model"],
                                            args.device or "auto")
    rep = report(clips, runs, offline, note, compute_s, engine_audio_s, args, segmenter, time.monotonic() - t0)
    rep["load_average_1m"] = [load_before, os.getloadavg()[0]]  # other work on this machine skews latencies
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2) + "\n")
    if args.plot:
        vad = segmenter["vad"] if segmenter else "server's"
        noise = "clean" if args.noise_snr is None else f"white noise at {args.noise_snr:g} dB SNR"
        plot_cdfs(rep, args.plot, f"{rep['backend']}, {vad} VAD, {args.streams} stream(s) at {args.speed:g}x, {noise}")
    print(markdown(rep))
    if note:
        print(f"\noffline_wer: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
