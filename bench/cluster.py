"""Several caption-server replicas sharing one Redis behind nginx, all on free loopback ports in a work directory,
as foreground processes started and stopped here (no system services): what tests and benches run a cluster on.

`python -m bench.cluster --replicas 3 [--backend whisper|tiny-salm] [--model DIR] [--set K=V ...]` starts one
in a temp dir, prints the balancer's URL and each replica's, and runs until Ctrl-C or SIGTERM.

`cluster(n, workdir, server_args)`: Redis (bench.redis_server), n replicas (`bench.server.server_process`, started
at once), nginx in front (bench.nginx).
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from .nginx import Nginx, nginx
from .redis_server import RedisServer, redis_server
from .server import health, server_process


@dataclass
class Replica:
    name: str
    url: str  # its own websocket URL, not through nginx
    proc: subprocess.Popen
    log_path: Path

    @property
    def port(self) -> int:
        return urlsplit(self.url).port


@dataclass
class Cluster:
    url: str  # nginx's /v1/listen: what clients use
    replicas: list[Replica]
    redis_url: str
    redis: RedisServer | None  # None when given redis_url: a Redis it did not start (and does not stop)
    nginx: Nginx = field(repr=False)


def start_replicas(stack: ExitStack, n: int, workdir: Path, server_args: tuple[str, ...], redis_url: str,
                   timeout: float = 180.0) -> list[Replica]:
    """n replicas, loading their models at the same time (each takes 10-20 s); each is registered on `stack` to
    be stopped. If one fails to start, the others are stopped and the error raised."""
    names = [f"replica{i}" for i in range(n)]
    managers = [server_process(*server_args, "--data-dir", str(workdir / name), "--set", f"redis.url={redis_url}",
                               "--set", f"redis.replica={name}",
                               # nginx is on loopback: its X-Forwarded-For names the client (per-address limits)
                               "--set", "server.trusted_proxies=127.0.0.1",
                               log_path=workdir / f"{name}.log", timeout=timeout)
                for name in names]
    # A generator context manager is entered here in a worker thread and left later by the stack: nothing in
    # server_process depends on the thread. Each is on the stack before it has started, so that an interrupt
    # while the models load still stops every one that comes up.
    pool = ThreadPoolExecutor(n)
    entered = [pool.submit(m.__enter__) for m in managers]
    pool.shutdown(wait=False)
    for manager, future in zip(managers, entered):
        stack.push(partial(leave, manager, future))
    replicas, errors = [], []
    for name, future in zip(names, entered):
        try:
            url, proc = future.result()
        except Exception as exc:  # noqa: BLE001 - the first error is raised once all are accounted for
            errors.append(exc)
            continue
        replicas.append(Replica(name, url, proc, workdir / f"{name}.log"))
    # Pushed last, so run first on exit: SIGTERM to all replicas at once, then wait, so that their graceful
    # shutdowns (up to limits.shutdown_deadline_s each) overlap. server_process then finds them exited (it would
    # signal a live one again, and a second signal makes the server exit at once, skipping the graceful part).
    stack.callback(stop_all, replicas)
    if errors:
        raise errors[0]
    return replicas


def leave(manager, future: Future, *exc_info) -> bool:
    """A replica's exit on the stack: waits for its start; one that never started has cleaned up already."""
    try:
        future.result()
    except BaseException:  # noqa: BLE001 - its error is raised by start_replicas, not here
        return False
    return manager.__exit__(*exc_info)


def shutting_down(replica: Replica) -> bool:
    """The replica is on its way out already (a Ctrl-C at the terminal reaches it as well as us): its /healthz
    says so, or it no longer answers at all."""
    try:
        return health(replica.url)["status"] == "shutting_down"
    except urllib.error.HTTPError as exc:  # 503: shutting down, or stalled
        return json.loads(exc.read() or b"{}").get("status") == "shutting_down"
    except (OSError, ValueError):
        return True


def stop_all(replicas: list[Replica], timeout: float = 30.0) -> None:
    """SIGTERM to every replica still running and not shutting down already, then waits for them all."""
    for r in replicas:
        if r.proc.poll() is None and not shutting_down(r):
            r.proc.terminate()
    deadline = time.monotonic() + timeout
    for r in replicas:
        try:
            r.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass  # server_process's own exit kills it


@contextmanager
def cluster(replicas: int, workdir: Path, server_args: tuple[str, ...] = (), redis_url: str | None = None):
    """Redis (unless `redis_url` is given), `replicas` servers (`python -m server SERVER_ARGS`, each with its own
    data dir and log in `workdir`, sharing that Redis), nginx in front. Yields a Cluster; on exit stops nginx
    first (no new connections), then the replicas, then Redis."""
    if replicas < 1:
        raise ValueError("a cluster needs at least one replica")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        redis = None if redis_url else stack.enter_context(redis_server(workdir / "redis"))
        url = redis_url or redis.url
        members = start_replicas(stack, replicas, workdir, tuple(server_args), url)
        balancer = stack.enter_context(nginx([r.port for r in members], workdir / "nginx"))
        yield Cluster(balancer.url, members, url, redis, balancer)


def backend_args(backend: str, model: str | None, workdir: Path) -> list[str]:
    """The server flags for a bench's backend: the tiny random-weight SALM (`model`, or a fresh checkpoint
    written to `workdir`) on the CPU, or the Whisper CPU default. The CLI below and bench.soak start servers so."""
    if backend == "whisper":
        return ["--backend", "whisper"]
    from server.backends.tiny_model import write_tiny_checkpoint

    model = model or write_tiny_checkpoint(Path(workdir) / "tiny-salm")
    return ["--backend", "salm", "--model", str(model), "--device", "cpu"]


# --- CLI ---------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--backend", choices=["tiny-salm", "whisper"], default="tiny-salm")
    p.add_argument("--model", help="an existing tiny SALM checkpoint directory (default: write a fresh one)")
    p.add_argument("--redis-url", help="use this Redis instead of starting one")
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temp dir, removed after)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every replica, e.g. --set engine.drafts=false")
    args = p.parse_args(argv)
    if args.replicas < 1:
        p.error("--replicas must be at least 1")

    signal.signal(signal.SIGTERM, interrupt)  # ends the run the way Ctrl-C does: the context managers stop all
    with ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cluster-")))
        server_args = backend_args(args.backend, args.model, workdir)
        for item in args.set:
            server_args += ["--set", item]
        c = stack.enter_context(cluster(args.replicas, workdir, tuple(server_args), args.redis_url))
        print(f"balancer  {c.url}  ({c.nginx.http}/healthz; nginx's logs in {c.nginx.workdir})", flush=True)
        for r in c.replicas:
            print(f"{r.name}  {r.url}  (log {r.log_path})", flush=True)
        print(f"redis     {c.redis_url}", flush=True)
        print("Ctrl-C or SIGTERM stops them all", flush=True)
        try:
            watch(c)
        except KeyboardInterrupt:
            # A Ctrl-C reached the replicas as well: give them a moment to say so on /healthz, so that the
            # cluster's exit waits for them rather than signal them again.
            time.sleep(0.5)
    return 0


def interrupt(*_) -> None:
    raise KeyboardInterrupt


def watch(c: Cluster) -> None:
    """Until interrupted: says once when a replica exits (one may be killed on purpose, to watch failover)."""
    gone: set[str] = set()
    while True:
        for r in c.replicas:
            if r.name not in gone and r.proc.poll() is not None:
                gone.add(r.name)
                print(f"{r.name} exited ({r.proc.returncode}); see {r.log_path}", file=sys.stderr, flush=True)
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())
