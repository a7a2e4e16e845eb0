"""Shared test helpers: real audio from ../shared/audio, a real server subprocess on a loopback port, WER."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT.parent / "shared" / "audio"
RATE = 16000


def manifest() -> dict[str, dict]:
    with open(AUDIO / "MANIFEST.tsv", newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f, delimiter="\t")}


def transcript(name: str) -> str:
    return manifest()[name]["transcript"]


def load_16k(name: str) -> np.ndarray:
    """A shared clip as float32 mono at 16 kHz."""
    audio, rate = sf.read(AUDIO / name, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    return audio if rate == RATE else soxr.resample(audio, rate, RATE).astype(np.float32)


def join_with_silence(names: list[str], gaps_s: list[float]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Clips separated by digital silence; returns the audio and each clip's (start, end) in seconds."""
    parts, spans, pos = [], [], 0
    for name, gap in zip(names, gaps_s):
        clip = load_16k(name)
        spans.append((pos / RATE, (pos + len(clip)) / RATE))
        parts += [clip, np.zeros(int(gap * RATE), np.float32)]
        pos += len(clip) + int(gap * RATE)
    return np.concatenate(parts), spans


def wer(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    return jiwer.wer(norm(reference), norm(hypothesis) or "<empty>")


@contextmanager
def server_process(*args: str, log_path: Path, timeout: float = 180.0):
    """Starts `python -m server --port 0 ARGS`; yields (websocket URL, process); stops it after."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", *args],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            deadline = time.monotonic() + timeout
            url = None
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                if line.startswith("Serving captions at"):
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
def run_server(*args: str, log_path: Path, timeout: float = 180.0):
    """Starts `python -m server --port 0 ARGS` and yields its websocket URL; stops it after."""
    with server_process(*args, log_path=log_path, timeout=timeout) as (url, _):
        yield url


def http_base(ws_url: str) -> str:
    return ws_url.replace("ws", "http", 1).removesuffix("/v1/listen")


def trim_silence(audio: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Drops the leading and trailing stretch below `threshold` (clips come with pauses at their ends)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0]:loud[-1] + 1]


def continuous_speech(seconds: float = 25.0) -> np.ndarray:
    """Read speech with no pause longer than a comma's: shared clips trimmed at their ends and joined."""
    names = ["lj001_0001.wav", "lj001_0005.wav", "lj050_0131.wav", "ldc93s1.wav", "jfk_16k.wav"]
    speech = np.concatenate([trim_silence(load_16k(n)) for n in names])
    assert len(speech) >= seconds * RATE
    return speech[:int(seconds * RATE)]
