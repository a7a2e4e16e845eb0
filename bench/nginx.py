"""nginx on a loopback port in front of caption-server replicas, with deploy/nginx.conf rendered for their ports, as a
foreground process whose config, logs and temp files stay in a work directory (`nginx(ports, workdir)`)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from string import Template

from .processes import accepts, need, start_on_port, tail
from .server import ROOT

NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"
# /usr/sbin is not on every PATH (a non-root shell's): fall back to where Debian puts it.
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


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
    server = start_on_port(partial(_start_nginx, upstream_ports, workdir, timeout=timeout), port)
    try:
        yield server
    finally:
        server.stop()
