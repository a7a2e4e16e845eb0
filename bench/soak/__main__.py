"""`python -m bench.soak`: its flags, and the server (or cluster) it starts unless given --url."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from server.config import load_config

from ..cluster import backend_args, cluster
from ..server import run_server
from . import __doc__ as ABOUT
from .report import markdown, passed
from .run import soak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=ABOUT.splitlines()[0])
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

