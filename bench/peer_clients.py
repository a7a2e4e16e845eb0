"""The servers `python -m bench.peers` compares: how each is installed (the peers in their own cached virtual
environments, outside the repository), started and stopped, and a client for each one's own websocket protocol.

Every client records when each 100 ms audio frame left and what arrived when (finals, partials), on the same
monotonic clock, so that bench.peers computes every server's numbers the same way."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from client.stream import encode

from .clips import RATE
from .server import server_process

FRAME = RATE // 10  # 100 ms frames
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


# -- clients ------------------------------------------------------------------------------------------------------

@dataclass
class Final:
    arrival: float  # time.monotonic()
    start: float  # seconds of stream audio
    end: float
    text: str


@dataclass
class StreamRun:
    """One stream: when each frame left, and what came back when."""
    index: int
    sent_at: list[float] = field(default_factory=list)  # frame i holds samples [i * FRAME, (i + 1) * FRAME)
    finals: list[Final] = field(default_factory=list)
    partials: list[float] = field(default_factory=list)  # arrival times
    text: str = ""  # the stream's final transcript
    finished: bool = False  # the server finished the stream before the drain bound
    error: str | None = None
    tail: str = ""  # text the server still held uncommitted when the stream was closed (not in `text`)
    notes: list[str] = field(default_factory=list)

    def sent_time(self, end_s: float) -> float:
        """When the frame holding the sample just before `end_s` left (the last frame if it lies beyond)."""
        position = round(end_s * RATE)
        return self.sent_at[min(max(position - 1, 0) // FRAME, len(self.sent_at) - 1)]


def s16le(frame: np.ndarray) -> bytes:
    return encode(frame, "pcm_s16le")


def f32le(frame: np.ndarray) -> bytes:
    return encode(frame, "pcm_f32le")


class Client:
    """One stream to one server: `open` (connect, handshake, start receiving), `run` (audio at the pace, then
    whatever this protocol does to end a stream, bounded by `drain_s`), `close`."""

    encode = staticmethod(s16le)

    def __init__(self, url: str, audio: np.ndarray, run: StreamRun):
        self.url, self.audio, self.run = url, audio, run
        self.ws = None
        self.receiver: asyncio.Task | None = None
        self.last_message = time.monotonic()

    async def open(self, timeout: float = 60.0) -> None:
        raise NotImplementedError

    async def finish(self, drain_s: float) -> None:
        raise NotImplementedError

    async def send_audio(self, start_at: float) -> None:
        for i in range(0, len(self.audio), FRAME):
            frame = self.audio[i:i + FRAME]
            # Like a microphone: a frame leaves once all of its audio has been spoken.
            await asyncio.sleep(max(0.0, start_at + (i + len(frame)) / RATE - time.monotonic()))
            await self.ws.send(self.encode(frame))
            self.run.sent_at.append(time.monotonic())

    async def run_stream(self, start_at: float, drain_s: float) -> None:
        try:
            await self.send_audio(start_at)
            await self.finish(drain_s)
        except Exception as exc:  # noqa: BLE001 - a failed stream is reported, the others go on
            self.run.error = self.run.error or f"{type(exc).__name__}: {exc}"
        finally:
            await self.close()

    def start_receiving(self) -> None:
        async def receive() -> None:
            try:
                async for raw in self.ws:
                    self.last_message = time.monotonic()
                    if isinstance(raw, str):
                        self.on_message(self.last_message, json.loads(raw))
            except Exception as exc:  # noqa: BLE001 - a dropped connection ends the stream, it is reported
                if not self.run.finished:
                    self.run.error = self.run.error or f"receiving: {type(exc).__name__}: {exc}"
        self.receiver = asyncio.create_task(receive())

    def on_message(self, t: float, msg: dict) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), timeout=5)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        if self.receiver is not None:
            self.receiver.cancel()
            try:
                await self.receiver
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass


class OursClient(Client):
    """docs/protocol.md: `start`, pcm_s16le frames, `stop`; `partial` and `final` messages, then `end`."""

    async def open(self, timeout: float = 60.0) -> None:
        self.ws = await connect(self.url, max_size=None, open_timeout=timeout)
        await self.ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le",
                                       "channels": 1}))
        ready = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=timeout))
        if ready.get("type") != "ready":
            raise RuntimeError(f"the server refused the stream: {ready}")
        self.ended = asyncio.Event()
        self.start_receiving()

    def on_message(self, t: float, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "final":
            self.run.finals.append(Final(t, float(msg["start"]), float(msg["end"]), msg.get("text", "")))
        elif kind == "partial":
            self.run.partials.append(t)
        elif kind == "error":
            self.run.notes.append(f"error {msg.get('code')}: {msg.get('message')}")
        elif kind == "end":
            self.run.finished = True
            self.ended.set()

    async def finish(self, drain_s: float) -> None:
        await self.ws.send(json.dumps({"type": "stop"}))
        try:
            await asyncio.wait_for(self.ended.wait(), timeout=drain_s)
        except asyncio.TimeoutError:
            pass
        self.run.text = " ".join(f.text.strip() for f in self.run.finals if f.text.strip())


class WhisperLiveClient(Client):
    """WhisperLive 0.10.0 (whisper_live/server.py, backend/base.py): a JSON options message, float32 frames, the
    bytes END_OF_AUDIO. The server answers SERVER_READY (or WAIT when full, and closes), then `segments` lists:
    the last few completed segments and, last, the one still being transcribed (`completed` false). A segment is
    final once it arrives completed; it is counted once, by its start time. A change of the uncompleted segment
    is a partial.

    The server has no flush: on END_OF_AUDIO it drops whatever it has not completed. So the client first waits,
    after its last frame, until the server has caught up: nothing uncompleted left, no message for 3 s and
    segments up to the last 3 s of the audio; bounded by the drain time, and by 30 s without a message (then the
    stream counts as unfinished)."""

    encode = staticmethod(f32le)

    def __init__(self, url: str, audio: np.ndarray, run: StreamRun):
        super().__init__(url, audio, run)
        self.uid = str(uuid.uuid4())
        self.completed: dict[str, Final] = {}
        self.pending: tuple[str, str] | None = None  # (start, text) of the uncompleted segment
        self.covered = 0.0  # the latest segment end seen, seconds

    async def open(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.ws = await connect(self.url, max_size=None, open_timeout=timeout)
            await self.ws.send(json.dumps({
                "uid": self.uid, "language": "en", "task": "transcribe", "model": "tiny.en", "use_vad": True,
                "send_last_n_segments": 10, "no_speech_thresh": 0.45, "clip_audio": False,
                "same_output_threshold": 10}))
            try:
                msg = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=max(1.0, deadline - time.monotonic())))
            except Exception as exc:  # noqa: BLE001 - refused (closed without a word) counts as a WAIT
                msg = {"status": "CLOSED", "message": f"{type(exc).__name__}"}
            if msg.get("message") == "SERVER_READY":
                break
            await self.close_quietly()
            if msg.get("status") not in ("WAIT", "CLOSED") or time.monotonic() > deadline:
                raise RuntimeError(f"WhisperLive refused the stream: {msg}")
            self.run.notes.append(f"connect retried after {msg.get('status')}")
            await asyncio.sleep(1.0)
        self.start_receiving()

    async def close_quietly(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), timeout=5)
        except Exception:  # noqa: BLE001
            pass

    def on_message(self, t: float, msg: dict) -> None:
        if msg.get("uid") not in (None, self.uid):
            return
        if msg.get("message") == "DISCONNECT":
            self.run.notes.append("server disconnected the stream (max_connection_time)")
        if "segments" not in msg:
            return
        segments = msg["segments"]
        pending = None
        for seg in segments:
            start, end, text = seg["start"], float(seg["end"]), seg.get("text", "")
            self.covered = max(self.covered, end)
            if seg.get("completed"):
                if start not in self.completed:
                    self.completed[start] = Final(t, float(start), end, text)
                    self.run.finals.append(self.completed[start])
            else:
                pending = (start, text)
        if pending is not None and pending != self.pending:
            self.run.partials.append(t)
        self.pending = pending

    async def finish(self, drain_s: float) -> None:
        audio_s = len(self.audio) / RATE
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            quiet = time.monotonic() - self.last_message
            if self.pending is None and quiet >= 3.0 and self.covered >= audio_s - 3.0:
                self.run.finished = True
                break
            if quiet >= 30.0:  # behind, stalled, or its last words filtered out: it is not finishing
                self.run.notes.append(f"server quiet for 30 s with segments up to {self.covered:.1f} s of "
                                      f"{audio_s:.1f} s")
                break
            if self.receiver.done():
                break
        if self.pending is not None:
            self.run.tail = self.pending[1].strip()
        if not self.receiver.done():
            await self.ws.send(b"END_OF_AUDIO")
            try:
                await asyncio.wait_for(asyncio.shield(self.receiver), timeout=5)
            except asyncio.TimeoutError:
                pass
        ordered = sorted(self.completed.values(), key=lambda f: f.start)
        self.run.text = " ".join(f.text.strip() for f in ordered if f.text.strip())


def wlk_seconds(value) -> float:
    """WhisperLiveKit's times: "H:MM:SS.cc" (timed_objects.format_time) or a number."""
    if isinstance(value, (int, float)):
        return float(value)
    seconds = 0.0
    for part in str(value).split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


class WhisperLiveKitClient(Client):
    """WhisperLiveKit 0.2.26 /asr with --pcm-input (basic_server.py, audio_processor.py): s16le PCM frames, an
    empty frame to end. The server sends `config`, then its whole state on each change: `lines` (committed text,
    one line per stretch between silences, each growing as LocalAgreement commits words; silences are lines of
    speaker -2) and `buffer_transcription` (the uncommitted hypothesis), and `ready_to_stop` once it has
    processed everything. Committed words never change: each time a line's committed words grow, the new words
    are a final ending at that line's end. A change of a non-empty buffer_transcription is a partial."""

    async def open(self, timeout: float = 60.0) -> None:
        self.ws = await connect(self.url, max_size=None, open_timeout=timeout)
        config = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=timeout))
        if config.get("type") != "config":
            raise RuntimeError(f"WhisperLiveKit did not start the stream: {config}")
        self.lines: dict[float, str] = {}  # line start -> committed text
        self.buffer = ""
        self.done = asyncio.Event()
        self.start_receiving()

    def on_message(self, t: float, msg: dict) -> None:
        if msg.get("type") == "ready_to_stop":
            self.run.finished = True
            self.done.set()
            return
        if msg.get("error"):
            self.run.notes.append(f"error: {msg['error']}")
        for line in msg.get("lines", []):
            text = (line.get("text") or "").strip()
            if line.get("speaker") == -2 or not text:
                continue
            start, end = wlk_seconds(line["start"]), wlk_seconds(line["end"])
            before = self.lines.get(start, "")
            if len(text.split()) > len(before.split()):
                added = " ".join(text.split()[len(before.split()):])
                self.run.finals.append(Final(t, start, end, added))
            self.lines[start] = text
        buffer = (msg.get("buffer_transcription") or "").strip()
        if buffer and buffer != self.buffer:
            self.run.partials.append(t)
        self.buffer = buffer

    async def finish(self, drain_s: float) -> None:
        await self.ws.send(b"")
        try:
            await asyncio.wait_for(self.done.wait(), timeout=drain_s)
        except asyncio.TimeoutError:
            pass
        self.run.tail = self.buffer
        self.run.text = " ".join(self.lines[s] for s in sorted(self.lines))


CLIENTS = {"ours": OursClient, "whisperlive": WhisperLiveClient, "whisperlivekit": WhisperLiveKitClient}
