"""redis-server as a foreground process on a loopback port, its append-only file in a work directory, stoppable and
restartable on the same port and data (`redis_server(workdir)`); and Redis's own command counters
(`redis_usage(url)`, `redis_ops_between(a, b)`), for "Redis operations per final"."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from .processes import need, start_on_port, tail

# /usr/sbin is not on every PATH (a non-root shell's): fall back to where Debian puts it.
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


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


def redis_usage(url: str) -> dict:
    """Redis's counters since it started, from one INFO: {"total": commands run (this INFO not yet),
    "commands": {command ("set", "xadd", "client|setinfo", ...): calls}}."""
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


def _start_redis(workdir: Path, port: int) -> RedisServer:
    server = RedisServer(workdir, port)
    server.start()
    return server


@contextmanager
def redis_server(workdir: Path, port: int | None = None):
    """Starts redis-server on `port` (default: a free one), yields a RedisServer, stops it on exit."""
    need(REDIS_SERVER, "redis-server")
    server = start_on_port(partial(_start_redis, Path(workdir)), port)
    try:
        yield server
    finally:
        server.stop()
