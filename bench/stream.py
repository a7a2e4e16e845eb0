"""`python -m bench.stream`: streaming accuracy, latency and stability of the caption server, as numbers.

    python -m bench.stream --manifest FILE.tsv [--url URL | --backend whisper|salm --model M] [--streams N]
                           [--speed 1.0] [--noise-snr DB] [--meeting SECONDS] [--json OUT.json] [--plot OUT.png]

N streams run at once, each sending its share of the manifest's clips back to back (clip i goes to stream
i mod N), one websocket per clip, paced like a microphone. Every message is timestamped on arrival and every
audio frame on sending, so latencies are measured against the moment the audio left the client. Without --url
the benchmark starts its own server on a free loopback port. After streaming (and after that server has stopped,
so that the two do not share the CPU) the same backend transcribes each whole clip in this process:
`offline_wer`. What each number means, and the measured tables: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from client.stream import encode
from server.backends import BACKENDS

from . import metrics
from .clips import RATE, Clip, add_noise, read_manifest, speech_end
from .meeting import meeting
from .server import engine_counters, run_server

FRAME = RATE * 50 // 1000  # 50 ms frames, as the file client sends them
OFFLINE_PIECE = 30 * RATE
CAP_S, CUT_SEARCH_S = 10.0, 2.0  # the segmenter's max_window_s and cut_search_s defaults (to spot capped windows)


@dataclass
class ClipRun:
    """One clip streamed over one websocket: when each frame left, and each message with its arrival time."""

    clip: Clip
    ready: dict = field(default_factory=dict)
    sent_at: list[float] = field(default_factory=list)  # frame i holds samples [i * FRAME, (i + 1) * FRAME)
    messages: list[tuple[float, dict]] = field(default_factory=list)

    def sent_time(self, position: int) -> float:
        """When the audio just before stream position `position` (a sample index) was sent."""
        return self.sent_at[min(max(position - 1, 0) // FRAME, len(self.sent_at) - 1)]

    def of_type(self, kind: str) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in self.messages if m["type"] == kind]

    @property
    def hypothesis(self) -> str:
        return " ".join(m["text"] for _, m in self.of_type("final") if m["text"])


# -- streaming --------------------------------------------------------------------------------------------------

async def stream_clip(clip: Clip, url: str, speed: float, sent: asyncio.Event) -> ClipRun:
    """Streams one clip over its own websocket; sets `sent` once all of its audio has left (or on failure),
    then waits for the rest of its captions."""
    run = ClipRun(clip)
    try:
        async with connect(url, max_size=None, open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1}))
            run.ready = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
            if run.ready.get("type") != "ready":
                raise RuntimeError(f"server refused the stream: {run.ready}")

            async def receive() -> None:
                async for raw in ws:
                    run.messages.append((time.monotonic(), json.loads(raw)))

            receiver = asyncio.create_task(receive())
            t0 = time.monotonic()
            for i in range(0, len(clip.audio), FRAME):
                chunk = clip.audio[i:i + FRAME]
                # Like a microphone: a frame leaves once all of its audio has been spoken.
                await asyncio.sleep(max(0.0, t0 + (i + len(chunk)) / RATE / speed - time.monotonic()))
                # Stamped before the send: a caption of this frame may be read while the send waits to drain.
                run.sent_at.append(time.monotonic())
                await ws.send(encode(chunk, "pcm_s16le"))
            await ws.send(json.dumps({"type": "stop"}))
            sent.set()
            await asyncio.wait_for(receiver, timeout=900)  # a saturated server may owe many finals
    finally:
        sent.set()  # never leave the stream waiting on a clip that failed
    return run


async def stream_all(clips: list[Clip], url: str, streams: int, speed: float) -> list[ClipRun]:
    """`streams` concurrent streams. Each sends its clips back to back at the pace, like a speaker who goes on
    talking: the next clip starts when the previous one's audio is sent, not when its last final arrives, so a
    slow server sees the full offered load. Runs come back in clip order."""
    async def one_stream(indices: range) -> list[ClipRun]:
        tasks = []
        for i in indices:
            sent = asyncio.Event()
            tasks.append(asyncio.create_task(stream_clip(clips[i], url, speed, sent)))
            await sent.wait()
        return list(await asyncio.gather(*tasks))

    shares = await asyncio.gather(*(one_stream(range(s, len(clips), streams)) for s in range(streams)))
    runs = [None] * len(clips)
    for s, share in enumerate(shares):
        runs[s::streams] = share
    return runs


# -- offline reference run --------------------------------------------------------------------------------------

def offline_transcripts(clips: list[Clip], backend_name: str, model: str, device: str) -> tuple[list | None, str]:
    """Each whole clip through the backend in this process: no VAD, no windows, no streaming."""
    from server.backends import create_backend
    from server.config import load_config

    try:
        overrides = {"backend.name": backend_name, "backend.model": model, "backend.device": device}
        backend = create_backend(load_config(overrides={k: v for k, v in overrides.items() if v}).backend)
    except Exception as exc:  # noqa: BLE001 - any failure to build it locally means: no offline number
        return None, f"backend {backend_name!r} could not be built here: {type(exc).__name__}: {exc}"
    try:
        texts: dict[str, str] = {}  # a clip repeated by cycling is the same audio: decode it once
        for clip in clips:
            if clip.name not in texts:
                # Models take at most 30 s (Whisper's window; SALM truncates past ~40 s): a longer clip is read
                # in consecutive 30 s pieces, as Whisper's own long-form transcription reads it.
                pieces = [clip.audio[i:i + OFFLINE_PIECE] for i in range(0, len(clip.audio), OFFLINE_PIECE)]
                texts[clip.name] = " ".join(t for t in backend.transcribe(pieces) if t)
        return [texts[c.name] for c in clips], ""
    finally:
        backend.close()


# -- numbers ----------------------------------------------------------------------------------------------------

def final_latencies(run: ClipRun) -> list[float]:
    """Arrival of each final minus the sending of its window's last speech (the hangover is part of the wait)."""
    out = []
    for t, m in run.of_type("final"):
        start, end = round(m["start"] * RATE), round(m["end"] * RATE)
        out.append(t - run.sent_time(speech_end(run.clip.clean, start, end)))
    return out


def partial_latencies(run: ClipRun) -> list[float]:
    """Arrival of each partial minus the sending of the last audio it covers."""
    return [t - run.sent_time(round(m["end"] * RATE)) for t, m in run.of_type("partial")]


def by_segment(run: ClipRun) -> dict[int, list[tuple[float, dict]]]:
    groups = defaultdict(list)
    for t, m in run.of_type("partial"):
        groups[m["segment"]].append((t, m))
    return groups


def partial_intervals(run: ClipRun) -> list[float]:
    """Time between consecutive partials of the same window: how often the live line updates."""
    return [b[0] - a[0] for group in by_segment(run).values() for a, b in zip(group, group[1:])]


def flicker_totals(runs: list[ClipRun]) -> np.ndarray:
    """(words shown, changed later, stable words shown, stable changed later) summed over every window."""
    totals = np.zeros(4, int)
    for run in runs:
        finals = {m["segment"]: m["text"].split() for _, m in run.of_type("final")}
        for segment, group in by_segment(run).items():
            partials = [(m["text"].split(), m.get("stable", 0)) for _, m in group]
            totals += metrics.flicker_counts(partials, finals.get(segment, []))
    return totals


def window_ends(run: ClipRun) -> list[tuple[dict, bool]]:
    """Each final but the last (which `stop` closed), and whether the cap cut it: a capped window is cut in the
    last `CUT_SEARCH_S` before the cap and the next one starts exactly there; otherwise a pause closed it."""
    finals = [m for _, m in run.of_type("final")]
    return [(a, a["end"] == b["start"] and a["end"] - a["start"] >= CAP_S - CUT_SEARCH_S)
            for a, b in zip(finals, finals[1:])]


def endpoint_delays(run: ClipRun) -> list[float]:
    """Stream seconds from the last speech to the close of each window a pause closed: how long the VAD and
    its hangover take to call the end of speech. Independent of server load, unlike the latencies."""
    out = []
    for m, capped in window_ends(run):
        if not capped:
            start, end = round(m["start"] * RATE), round(m["end"] * RATE)
            out.append((end - speech_end(run.clip.clean, start, end)) / RATE)
    return out


def share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def report(clips: list[Clip], runs: list[ClipRun], offline: list | None, offline_note: str, compute_s: float,
           engine_audio_s: float, args: argparse.Namespace, segmenter: dict | None, wall_s: float) -> dict:
    refs = [c.reference for c in clips]
    hyps = [r.hypothesis for r in runs]
    finals = [x for r in runs for x in final_latencies(r)]
    partials = [x for r in runs for x in partial_latencies(r)]
    intervals = [x for r in runs for x in partial_intervals(r)]
    shown, changed, shown_stable, changed_stable = (int(x) for x in flicker_totals(runs))
    endpoints = [x for r in runs for x in endpoint_delays(r)]
    audio_s = sum(c.seconds for c in clips)
    single = [not c.overlapping for c in clips]

    def one_voice(texts: list) -> list:
        return [t for t, keep in zip(texts, single) if keep]

    wer = metrics.wer(refs, hyps)
    offline_wer = metrics.wer(refs, offline) if offline else None
    ready = runs[0].ready if runs else {}
    return {
        "wer": wer,
        "offline_wer": offline_wer,
        "wer_delta": wer - offline_wer if wer is not None and offline_wer is not None else None,
        "wer_no_overlap": metrics.wer(one_voice(refs), one_voice(hyps)),
        "offline_wer_no_overlap": metrics.wer(one_voice(refs), one_voice(offline)) if offline else None,
        "final_latency_p50": metrics.percentile(finals, 50),
        "final_latency_p95": metrics.percentile(finals, 95),
        "partial_latency_p50": metrics.percentile(partials, 50),
        "partial_latency_p95": metrics.percentile(partials, 95),
        "partial_interval_p50": metrics.percentile(intervals, 50),
        "endpoint_p50": metrics.percentile(endpoints, 50),
        "endpoint_p95": metrics.percentile(endpoints, 95),
        "flicker": share(changed, shown),
        "flicker_stable": share(changed_stable, shown_stable),
        "stable_share": share(shown_stable, shown),
        "rtf": compute_s / audio_s if audio_s else None,
        "streams": args.streams,
        "speed": args.speed,
        "noise_snr": args.noise_snr,
        "audio_seconds": audio_s,
        "compute_seconds": compute_s,
        "engine_audio_seconds": engine_audio_s,  # audio decoded, partial re-runs included
        "finals": len(finals),
        "partials": len(partials),
        "empty_finals": sum(not m["text"].strip() for r in runs for _, m in r.of_type("final")),
        "capped_finals": sum(capped for r in runs for _, capped in window_ends(r)),
        "backend": ready.get("backend"),
        "model": ready.get("model"),
        "segmenter": segmenter,
        "offline_note": offline_note,
        "wall_seconds": wall_s,
        "final_latencies": finals,
        "partial_latencies": partials,
        "per_clip": per_clip(clips, runs, offline),
    }


def per_clip(clips: list[Clip], runs: list[ClipRun], offline: list | None) -> list[dict]:
    offline = offline or [None] * len(clips)
    return [{"name": c.name, "seconds": c.seconds, "overlapping": c.overlapping, "reference": c.reference,
             "hypothesis": r.hypothesis, "wer": metrics.wer([c.reference], [r.hypothesis]),
             "offline_hypothesis": o, "offline_wer": metrics.wer([c.reference], [o]) if o is not None else None,
             "finals": len(r.of_type("final")), "partials": len(r.of_type("partial"))}
            for c, r, o in zip(clips, runs, offline)]


# -- output -----------------------------------------------------------------------------------------------------

def fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


SUMMARY_KEYS = ("wer", "offline_wer", "wer_delta", "wer_no_overlap", "final_latency_p50", "final_latency_p95",
                "partial_latency_p50", "partial_latency_p95", "partial_interval_p50", "endpoint_p50", "endpoint_p95",
                "flicker", "flicker_stable",
                "stable_share", "rtf", "streams", "speed", "noise_snr", "audio_seconds", "finals", "partials",
                "empty_finals", "capped_finals", "wall_seconds")


def markdown(rep: dict) -> str:
    lines = ["| metric | value |", "|---|---|", *(f"| {k} | {fmt(rep[k])} |" for k in SUMMARY_KEYS), "",
             "| clip | s | WER | offline WER | hypothesis |", "|---|---|---|---|---|"]
    for c in rep["per_clip"]:
        note = " (overlapping speech)" if c["overlapping"] else ""
        lines.append(f"| {c['name']}{note} | {c['seconds']:.1f} | {fmt(c['wer'])} | {fmt(c['offline_wer'])} | "
                     f"{c['hypothesis'][:80]} |")
    return "\n".join(lines)


def plot_cdfs(rep: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, key in (("final", "final_latencies"), ("partial", "partial_latencies")):
        xs = np.sort(rep[key])
        if len(xs):
            ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=f"{label} (n={len(xs)})")
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("share of captions at or below")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- command line -----------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__,
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
