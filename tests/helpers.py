"""Shared test helpers: real audio from ../shared/audio, a real server subprocess on a loopback port, WER."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from bench.server import health, run_server, server_process  # noqa: F401 - the tests' real server, shared with bench/

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


def heard(name: str, text: str, bound: float) -> bool:
    """A shared clip's words are in `text`: WER at most `bound`. Whisper writes uberi_one_two_three.wav as
    "1, 2, 3.", which the normaliser scores as WER 3.0 against "one two three": digits are compared there."""
    if name == "uberi_one_two_three.wav":
        return "".join(c for c in text if c.isdigit()) == "123"
    return wer(transcript(name), text) <= bound


def http_base(ws_url: str) -> str:
    return ws_url.replace("ws", "http", 1).removesuffix("/v1/listen")


def scrape(ws_url: str) -> dict[str, float]:
    """The server's /metrics, read by Prometheus's own parser: {'name{label=value,...}': value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(http_base(ws_url) + "/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()

    def key(sample) -> str:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
        return sample.name + (f"{{{labels}}}" if labels else "")

    return {key(s): s.value for family in text_string_to_metric_families(text) for s in family.samples}


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


async def room_finals(ws_url: str, room: str, timeout: float = 20.0) -> list[dict]:
    """The finals of a room's transcript (GET /v1/transcripts/rooms/NAME.json), once it exists."""
    import asyncio
    import json
    import urllib.error
    import urllib.request

    url = f"{http_base(ws_url.split('?')[0])}/v1/transcripts/rooms/{room}.json"
    for _ in range(int(timeout / 0.2)):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.load(r)["finals"]
        except urllib.error.HTTPError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"no transcript for room {room} after {timeout} s")
