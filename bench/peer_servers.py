"""The servers `python -m bench.peers` compares: how each is installed (the peers in their own cached virtual
environments, outside the repository), started and stopped, and the CPU its processes used."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .server import free_port, server_process

PEERS_HOME = Path(os.environ.get("CANARY_PEERS_HOME", Path.home() / ".cache" / "canary-live" / "peers"))

# pip steps per peer venv, in order. torch first: the local CPU wheel (pip's find-links) keeps pip from pulling
# CUDA; the peers themselves go in --no-deps, as their full requirements (torchaudio, openvino, PyAudio, ...)
# are not needed for the faster-whisper path.
RECIPES: dict[str, list[list[str]]] = {
    "whisperlive": [
        ["torch==2.13.0"],
        ["--no-deps", "whisper-live==0.10.0"],
        ["faster-whisper==1.2.0", "websockets", "fastapi", "uvicorn", "python-multipart", "onnxruntime", "scipy",
         "websocket-client", "soundfile", "numpy<2.5", "av", "requests", "huggingface_hub", "tqdm"],
    ],
    "whisperlivekit": [
        ["torch==2.13.0"],
        ["--no-deps", "whisperlivekit==0.2.26"],
        ["fastapi", "librosa", "soundfile", "uvicorn", "websockets", "huggingface-hub", "faster-whisper",
         "tiktoken", "python-multipart", "starlette"],
    ],
}


# -- installing ---------------------------------------------------------------------------------------------------

def venv_python(name: str) -> Path:
    return PEERS_HOME / name / "venv" / "bin" / "python"


def ensure_venv(name: str, log=print) -> Path:
    """The peer's venv python, creating the venv on first use. A stamp holding the recipe marks a finished
    install: a changed recipe or an interrupted install starts over."""
    recipe = RECIPES[name]
    home = PEERS_HOME / name
    stamp = home / "installed.json"
    python = venv_python(name)
    if stamp.exists() and python.exists() and json.loads(stamp.read_text()) == recipe:
        return python
    home.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    log(f"installing {name} into {home / 'venv'} (first use; minutes)")
    with open(home / "install.log", "w") as out:
        def step(cmd: list[str]) -> None:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"installing {name} failed at `{' '.join(cmd)}`; see {home / 'install.log'}")
        step([sys.executable, "-m", "venv", "--clear", str(home / "venv")])
        for packages in recipe:
            step([str(python), "-m", "pip", "install", "--quiet", *packages])
    stamp.write_text(json.dumps(recipe))
    return python


def package_version(python: Path, dist: str) -> str | None:
    out = subprocess.run([str(python), "-c", f"from importlib.metadata import version; print(version({dist!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


# -- starting and stopping ----------------------------------------------------------------------------------------

# Run by the peer's own python. It reports the device and compute type CTranslate2 actually loaded the model with
# (a line PEER_MODEL ...), without changing anything, then starts the peer as its documented entry point would.
COMPUTE_HOOK = r'''
import sys

def report_model(cls):
    init = cls.__init__
    def wrapped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        model = getattr(self, "model", None)
        print(f"PEER_MODEL device={getattr(model, 'device', '?')} compute_type={getattr(model, 'compute_type', '?')}",
              file=sys.stderr, flush=True)
    cls.__init__ = wrapped
'''

WHISPERLIVE_LAUNCHER = COMPUTE_HOOK + r'''
import json
import logging

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
from whisper_live.transcriber.transcriber_faster_whisper import WhisperModel
report_model(WhisperModel)
from whisper_live.server import TranscriptionServer
TranscriptionServer().run(**json.loads(sys.argv[1]))
'''

WLK_LAUNCHER = COMPUTE_HOOK + r'''
import faster_whisper
report_model(faster_whisper.WhisperModel)
sys.argv = ["wlk", *sys.argv[1:]]
from whisperlivekit.cli import main
sys.exit(main())
'''


@dataclass
class Running:
    """A started server: where to connect, which process to account CPU to, what it runs with."""
    url: str
    pid: int
    log_path: Path
    settings: dict = field(default_factory=dict)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def model_line(log_text: str) -> dict:
    """device and compute_type from a launcher's PEER_MODEL line (the last model loaded)."""
    found = re.findall(r"PEER_MODEL device=(\S+) compute_type=(\S+)", log_text)
    return {"device": found[-1][0], "compute_type": found[-1][1]} if found else {}


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, log_path: Path, health: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {log_path}:\n"
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
            if health:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=5) as r:
                    if not json.load(r).get("ready", True):
                        raise OSError("not ready")
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server did not listen on port {port} within {timeout:.0f} s; see {log_path}")


@contextmanager
def peer_process(cmd: list[str], port: int, log_path: Path, timeout: float, health: str = ""):
    """Starts a peer in its own process group; yields the process; stops the group (SIGTERM, then SIGKILL)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=log_path.parent,
                                start_new_session=True)
    try:
        wait_for_port(port, proc, timeout, log_path, health)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


@contextmanager
def start_ours(backend: str, log_path: Path, sets: list[str] = ()):
    overrides = [arg for item in sets for arg in ("--set", item)]
    with server_process("--backend", backend, "--device", "cpu", *overrides, log_path=log_path) as (url, proc):
        running = Running(url, proc.pid, log_path, {"backend": backend, **({"set": list(sets)} if sets else {})})
        found = re.findall(r"server\.backends\.\w+: .*: (\S+) on (cpu|cuda)", running.log_text())
        if found:
            running.settings.update(compute_type=found[-1][0], device=found[-1][1])
        yield running


@contextmanager
def start_whisperlive(model_dir: str, batch: bool, log_path: Path, max_clients: int = 64):
    python = ensure_venv("whisperlive", log=lambda m: print(m, file=sys.stderr))
    launcher = PEERS_HOME / "whisperlive" / "launch.py"
    launcher.write_text(WHISPERLIVE_LAUNCHER)
    port = free_port()
    options = dict(host="127.0.0.1", port=port, backend="faster_whisper", faster_whisper_custom_model_path=model_dir,
                   single_model=True, batch_enabled=batch, max_clients=max_clients, max_connection_time=3600)
    with peer_process([str(python), str(launcher), json.dumps(options)], port, log_path, timeout=180) as proc:
        settings = {"version": package_version(python, "whisper-live"), "batch_enabled": batch,
                    "single_model": True, "use_vad": True, "max_clients": max_clients,
                    "beam_size": 1 if batch else 5}  # batch_beam_size's default; transcribe()'s default
        yield Running(f"ws://127.0.0.1:{port}", proc.pid, log_path, settings)


@contextmanager
def start_whisperlivekit(model_dir: str, log_path: Path, warmup_file: str):
    python = ensure_venv("whisperlivekit", log=lambda m: print(m, file=sys.stderr))
    launcher = PEERS_HOME / "whisperlivekit" / "launch.py"
    launcher.write_text(WLK_LAUNCHER)
    port = free_port()
    # --warmup-file: its default downloads a clip from GitHub; a local clip keeps it offline.
    args = ["--host", "127.0.0.1", "--port", str(port), "--backend", "faster-whisper", "--backend-policy",
            "localagreement", "--model_dir", model_dir, "--lan", "en", "--pcm-input", "--warmup-file", warmup_file]
    with peer_process([str(python), str(launcher), *args], port, log_path, timeout=300, health="/health") as proc:
        settings = {"version": package_version(python, "whisperlivekit"), "args": " ".join(args[4:-2]),
                    "beam_size": 5}  # FasterWhisperASR.transcribe's fixed beam_size
        yield Running(f"ws://127.0.0.1:{port}/asr", proc.pid, log_path, settings)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants, alive or reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, seconds)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) ": state is fields[0]
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        stats[int(entry)] = (int(fields[1]), (utime + stime + cutime + cstime) / tick)
    tree, frontier = set(), [pid]
    while frontier:
        p = frontier.pop()
        if p in stats and p not in tree:
            tree.add(p)
            frontier += [c for c, (parent, _) in stats.items() if parent == p]
    return sum(stats[p][1] for p in tree)
