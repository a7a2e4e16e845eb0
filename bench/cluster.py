"""Several caption-server replicas sharing one Redis behind nginx, all on free loopback ports in a work directory,
as foreground processes started and stopped here (no system services): what tests and benches run a cluster on.

`python -m bench.cluster --replicas 3 [--backend whisper|tiny-salm] [--model DIR] [--set K=V ...]` starts one
in a temp dir, prints the balancer's URL and each replica's, and runs until Ctrl-C or SIGTERM.

- `redis_server(workdir)`: redis-server (append-only file in `workdir`, no RDB snapshots), stoppable and
  restartable on the same port and data: `.stop()`, `.kill()`, `.start()`;
- `nginx(ports, workdir)`: nginx with deploy/nginx.conf rendered for those replica ports;
- `cluster(n, workdir, server_args)`: Redis, n replicas (`bench.server.server_process`, started at once), nginx;
- `commands_processed(url)`, `command_stats(url)`, `redis_usage(url)`, `redis_ops_between(a, b)`: Redis's own
  counters, for "Redis operations per final".
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
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
from string import Template
from urllib.parse import urlsplit

from .server import ROOT, health, server_process

NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"
# /usr/sbin is not on every PATH (a non-root shell's): fall back to where Debian puts them.
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# A port picked free may be taken by someone else before the process binds it: try a fresh one this many times.
PORT_TRIES = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} was never written)"


def need(binary: str, package: str) -> None:
    """Missing programs fail loudly (like tests/pulse.py), never skip: .ci/apt-packages.txt installs them."""
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} not found: install the Debian package {package} (make sysdeps)")


# --- Redis -------------------------------------------------------------------------------------------------------

def _redis_call(url: str, *args: str, timeout: float = 5.0) -> bytes:
    """One command over a fresh raw connection (RESP, no AUTH): exactly one command in Redis's counters, where a
    client library adds its own (HELLO, CLIENT SETINFO) to each connection. Returns a bulk or simple reply."""
    parts = urlsplit(url)
    request = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    # INFO and PING ignore the database: no SELECT (one more command) for the URL's /DB.
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout) as s:
        s.sendall(request)
        reply = s.makefile("rb")
        head = reply.readline()
        if head.startswith(b"$"):
            return reply.read(int(head[1:]))
        if head.startswith(b"+"):
            return head[1:].rstrip(b"\r\n")
    raise RuntimeError(f"redis at {url} answered {args[0]} with {head!r}")


def ping(url: str) -> bool:
    """Redis answers PING with PONG (not LOADING its append-only file, not refusing)."""
    try:
        return _redis_call(url, "PING", timeout=1.0) == b"PONG"
    except (OSError, RuntimeError):
        return False


def _info(url: str, *sections: str) -> dict[str, str]:
    text = _redis_call(url, "INFO", *sections).decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def commands_processed(url: str) -> int:
    """INFO stats total_commands_processed: every command Redis has run since it started (this INFO not yet)."""
    return int(_info(url, "stats")["total_commands_processed"])


def command_stats(url: str) -> dict[str, int]:
    """INFO commandstats: calls per command ("set", "xadd", "client|setinfo", ...) since Redis started."""
    stats = _info(url, "commandstats")
    return {key.removeprefix("cmdstat_"): int(re.search(r"(?:^|,)calls=(\d+)", value).group(1))
            for key, value in stats.items() if key.startswith("cmdstat_")}


def redis_usage(url: str) -> dict:
    """Both counters from one INFO: {"total": int, "commands": {command: calls}}."""
    info = _info(url, "stats", "commandstats")
    return {"total": int(info["total_commands_processed"]),
            "commands": {k.removeprefix("cmdstat_"): int(re.search(r"(?:^|,)calls=(\d+)", v).group(1))
                         for k, v in info.items() if k.startswith("cmdstat_")}}


def redis_ops_between(before: dict, after: dict) -> tuple[int, dict[str, int]]:
    """Commands run between two redis_usage() snapshots, in all and per command, less the one INFO the first
    snapshot itself ran (the second's is not counted yet when it reads the counters)."""
    commands = {k: n - before["commands"].get(k, 0) for k, n in after["commands"].items()}
    commands["info"] = commands.get("info", 0) - 1
    return after["total"] - before["total"] - 1, {k: n for k, n in sorted(commands.items()) if n > 0}


@dataclass
class RedisServer:
    """One redis-server on 127.0.0.1:`port` keeping its append-only file in `workdir`."""
    workdir: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self, timeout: float = 30.0) -> None:
        """Starts it (again: same port, same data) and waits until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"redis on port {self.port} is running already")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # appendonly + everysec: what a deployment would run (a restart keeps the data, at most ~1 s lost);
        # --save "": no RDB snapshots forking in the middle of a measurement.
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
               "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
               "--protected-mode", "no"]
        # Its own session: a Ctrl-C at the terminal must not stop Redis before the replicas, which may still be
        # writing their last finals to it; we stop it last. "a": a restart's lines follow the first run's.
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ping(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}; {self.log_path}:\n"
                                   f"{tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Redis flushes its append-only file and exits) and waits; SIGKILL past `timeout`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: Redis dies as in a crash (at most the last second of writes lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()


@contextmanager
def redis_server(workdir: Path, port: int | None = None):
    """Starts redis-server on `port` (default: a free one), yields a RedisServer, stops it on exit."""
    need(REDIS_SERVER, "redis-server")
    workdir = Path(workdir)
    for attempt in range(1 if port else PORT_TRIES):
        server = RedisServer(workdir, port or free_port())
        try:
            server.start()
            break
        except RuntimeError:
            if port or attempt == PORT_TRIES - 1 or "Address already in use" not in tail(server.log_path):
                raise
    try:
        yield server
    finally:
        server.stop()


# --- nginx -------------------------------------------------------------------------------------------------------

class ConfTemplate(Template):
    """Only ${name} is a placeholder: nginx's own $variables ($remote_addr, ...) are left as they are, and a
    placeholder without a value is an error (KeyError), never left in the config."""
    pattern = r"""\$(?:(?P<escaped>(?!))|(?P<named>(?!))|\{(?P<braced>[_a-z][_a-z0-9]*)\}|(?P<invalid>(?!)))"""


def render_nginx_conf(upstream_ports: list[int], listen: str, prefix_dir: Path) -> str:
    """deploy/nginx.conf for these replicas (on 127.0.0.1), nginx listening on `listen`."""
    upstreams = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in upstream_ports)
    return ConfTemplate(NGINX_TEMPLATE.read_text()).substitute(
        listen=listen, upstreams=upstreams, prefix_dir=str(Path(prefix_dir).resolve()))


def nginx_command(conf: Path, prefix_dir: Path, *extra: str) -> list[str]:
    """nginx with its config, prefix and startup error log all in `prefix_dir`. `-e`: the log nginx writes before
    it has read the config; the compiled-in /var/log/nginx/error.log needs root (nginx >= 1.19.5)."""
    return [NGINX, "-c", str(conf), "-p", str(prefix_dir), "-e", str(prefix_dir / "error.log"), *extra]


@dataclass
class Nginx:
    port: int
    proc: subprocess.Popen
    workdir: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/listen"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf(self) -> Path:
        return self.workdir / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def stop(self) -> None:
        """SIGQUIT: graceful (open websockets get worker_shutdown_timeout, 10 s); then SIGTERM; then SIGKILL to the
        whole process group, workers included (a SIGKILLed master leaves its workers running)."""
        for sig, wait in ((signal.SIGQUIT, 15), (signal.SIGTERM, 5)):
            if self.proc.poll() is not None:
                return
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _start_nginx(upstream_ports: list[int], workdir: Path, port: int, timeout: float) -> Nginx:
    conf = workdir / "nginx.conf"
    conf.write_text(render_nginx_conf(upstream_ports, f"127.0.0.1:{port}", workdir))
    # Its own session: a Ctrl-C at the terminal does not reach it (we stop it, after the clients), and
    # killpg reaches its workers.
    with open(workdir / "nginx.stderr", "w") as stderr:
        proc = subprocess.Popen(nginx_command(conf, workdir), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    server = Nginx(port, proc, workdir)
    deadline = time.monotonic() + timeout
    while not accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"nginx did not start on port {port}; {server.error_log}:\n{tail(server.error_log)}"
                               f"\n{tail(workdir / 'nginx.stderr')}")
        time.sleep(0.05)
    return server


@contextmanager
def nginx(upstream_ports: list[int], workdir: Path, port: int | None = None, timeout: float = 15.0):
    """nginx on 127.0.0.1 (a free port by default) balancing over the replicas on `upstream_ports`, its config
    (deploy/nginx.conf rendered), pid, logs and temp files in `workdir`. Yields an Nginx; stops it on exit."""
    need(NGINX, "nginx")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1 if port else PORT_TRIES):
        try:
            server = _start_nginx(upstream_ports, workdir, port or free_port(), timeout)
            break
        except RuntimeError as exc:
            if port or attempt == PORT_TRIES - 1 or "Address already in use" not in str(exc):
                raise
    try:
        yield server
    finally:
        server.stop()


# --- the cluster -------------------------------------------------------------------------------------------------

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
    from .soak import backend_args  # the soak's own choice of backend and model (it imports this module)

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
