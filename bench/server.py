"""A real caption server in a subprocess on a free loopback port (tests and benchmarks start theirs here), its
/healthz counters, and the one place a free port comes from."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the kernel's pick); the one place tests and benchmarks
    take a port from when a process must be started on a known port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(*args: str, log_path: Path, timeout: float = 180.0, module: str = "server",
                   env: dict | None = None):
    """Starts `python -m server --port 0 ARGS`; yields (websocket URL, process); stops it after.
    `module`: another entry point that ends in the server's main (tests.support.stuck_server); `env`: added variables."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0", *args],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            deadline = time.monotonic() + timeout
            url = None
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                if line.startswith("Serving captions at"):  # the line `python -m server` prints when ready
                    url = line.split("(websocket ")[1].rstrip(")\n")
                    break
            if url is None:
                raise RuntimeError(f"server did not start; see {log_path}:\n{log_path.read_text()[-3000:]}")
            yield url, proc
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def run_server(*args: str, log_path: Path, timeout: float = 180.0, env: dict | None = None):
    """Starts `python -m server --port 0 ARGS` and yields its websocket URL; stops it after."""
    with server_process(*args, log_path=log_path, timeout=timeout, env=env) as (url, _):
        yield url


def health_url(ws_url: str) -> str:
    """ws://HOST:PORT/v1/listen -> http://HOST:PORT/healthz"""
    scheme, rest = ws_url.split("://", 1)
    return f"{'https' if scheme == 'wss' else 'http'}://{rest.split('/', 1)[0]}/healthz"


def health(ws_url: str) -> dict:
    """GET /healthz of the server behind a websocket URL."""
    with urllib.request.urlopen(health_url(ws_url), timeout=10) as r:
        return json.load(r)


def engine_counters(ws_url: str) -> dict:
    """The engine's cumulative counters (compute_seconds, audio_seconds, ...) from GET /healthz."""
    return health(ws_url)["engine"]
