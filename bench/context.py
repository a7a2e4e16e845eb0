"""`python -m bench.context`: does a stream's `context` (names and terms likely to be said) help the model?

    python -m bench.context [--url ws://HOST:PORT/v1/listen | --backend whisper [--model M]] [--speed 1.0]
                            [--wav CLIP.wav] [--json OUT.json]

espeak-ng reads sentences full of rare names (people, places, products) into a 16 kHz clip, a short pause
between sentences. The clip is streamed through the server twice, paced like a microphone, with the shared
client code (client/stream.py): once with no context, once with the list of names as `context` in `start`.
For each run: the WER (whisper_normalizer's EnglishTextNormalizer + jiwer) and the share of the names' mentions
that come back spelled exactly (case and punctuation aside). Without --url it starts its own server on a free
loopback port (`--backend`, default whisper). A backend that ignores context scores the same twice.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from client.stream import MAX_CONTEXT, stream_audio

from . import metrics
from .server import run_server

RATE = 16000
PAUSE_S = 0.8  # between sentences: long enough for the VAD to close a window there
VOICE, WORDS_PER_MINUTE = "en-us", 150

# Each name below is said at least once; some twice, so a model that gets a name right once is not lucky.
SENTENCES = [
    "This morning Anneliese Kowalczyk met the engineers from Zyphronix in Szczecin.",
    "Doctor Nnamdi Okonkwo will present the Quetzalcoatl roadmap after lunch.",
    "Our new storage service is called Thalassa, and it replaces Brontide next spring.",
    "Please send the signed invoice to Siddharth Venkataraman at the Ljubljana office.",
    "The supplier in Ouagadougou ships the Xylocore batteries every Tuesday.",
    "Ingeborg Haugland asked whether the Vaxholm warehouse is ready for Xylocore.",
    "The keynote by Tadeusz Wojciechowski covered the Orrefors acquisition in detail.",
    "Finally, Makoa Kealoha confirmed that Pyxidra launches in Tegucigalpa, and Anneliese Kowalczyk agreed.",
]
NAMES = [
    "Anneliese Kowalczyk", "Zyphronix", "Szczecin", "Nnamdi Okonkwo", "Quetzalcoatl", "Thalassa", "Brontide",
    "Siddharth Venkataraman", "Ljubljana", "Ouagadougou", "Xylocore", "Ingeborg Haugland", "Vaxholm",
    "Tadeusz Wojciechowski", "Orrefors", "Makoa Kealoha", "Pyxidra", "Tegucigalpa",
]
CONTEXT = ", ".join(NAMES)
assert len(CONTEXT) <= MAX_CONTEXT


# -- the clip -------------------------------------------------------------------------------------------------

def speak(text: str, path: Path) -> np.ndarray:
    """One sentence read by espeak-ng, as float32 mono at 16 kHz (espeak-ng writes 22.05 kHz; soxr resamples)."""
    subprocess.run(["espeak-ng", "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "-w", str(path), text], check=True,
                   capture_output=True, timeout=60)
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    return audio if rate == RATE else soxr.resample(audio, rate, RATE).astype(np.float32)


def make_clip(path: Path, workdir: Path, sentences: list[str] = SENTENCES) -> np.ndarray:
    """All sentences, a pause after each, written to `path` as 16 kHz 16-bit PCM; returns the audio."""
    pause = np.zeros(int(PAUSE_S * RATE), np.float32)
    parts = [pause[:RATE // 4]]
    for sentence in sentences:
        parts += [speak(sentence, workdir / "sentence.wav"), pause]
    audio = np.concatenate(parts)
    sf.write(path, audio, RATE, subtype="PCM_16")
    return sf.read(path, dtype="float32")[0]  # what is streamed is what the WAV holds


# -- scoring --------------------------------------------------------------------------------------------------

def words(text: str) -> list[str]:
    """Lower case, punctuation gone (letters with accents kept): for matching names exactly."""
    return re.sub(r"[^\w]+", " ", text.lower()).split()


def mentions(name: str, text: str) -> int:
    """How many times `name` (one or more words) occurs in `text`, whole words, case and punctuation aside."""
    target, tokens = words(name), words(text)
    n = len(target)
    return sum(tokens[i:i + n] == target for i in range(len(tokens) - n + 1))


def score(reference: str, hypothesis: str, names: list[str] = NAMES) -> dict:
    said = Counter({name: mentions(name, reference) for name in names})
    heard = {name: min(mentions(name, hypothesis), said[name]) for name in names}
    total, exact = sum(said.values()), sum(heard.values())
    return {"wer": metrics.wer([reference], [hypothesis]), "names_exact": exact, "names_said": total,
            "names_share": exact / total if total else None,
            "missed": [name for name in names if heard[name] < said[name]], "hypothesis": hypothesis}


# -- the runs -------------------------------------------------------------------------------------------------

async def run_both(audio: np.ndarray, url: str, speed: float) -> tuple[dict, dict]:
    """The clip without context, then with it: two streams, one after the other, so that they do not compete."""
    without = await stream_audio(audio, RATE, url, speed=speed, timeout=600)
    with_context = await stream_audio(audio, RATE, url, speed=speed, timeout=600, context=CONTEXT)
    return without.ready, {"without": without.text, "with": with_context.text}


def report(ready: dict, seconds: float, runs: dict[str, dict]) -> str:
    pct = lambda share: "  -" if share is None else f"{100 * share:3.0f} %"  # noqa: E731
    lines = [f"context bench: {len(SENTENCES)} sentences of espeak-ng speech ({seconds:.1f} s), "
             f"{runs['without']['names_said']} mentions of {len(NAMES)} rare names; backend "
             f"{ready.get('backend')} ({ready.get('model')})",
             f"context ({len(CONTEXT)} characters): {CONTEXT}",
             "",
             f"{'':16} {'WER':>6}  names spelled exactly",
             ]
    for key, label in (("without", "without context"), ("with", "with context")):
        r = runs[key]
        wer = "     -" if r["wer"] is None else f"{r['wer']:6.3f}"
        lines.append(f"{label:16} {wer}  {r['names_exact']:2d}/{r['names_said']} ({pct(r['names_share'])})"
                     f"   missed: {', '.join(r['missed']) or 'none'}")
    lines.append("")
    for key in ("without", "with"):
        lines.append(f"heard {key + ' context:':16} {runs[key]['hypothesis']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.context", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an already running server's /v1/listen (default: start one here)")
    p.add_argument("--backend", default="whisper", help="backend of the server started here (default whisper)")
    p.add_argument("--model", help="model of the server started here (default: the backend's own)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="1.0 = real time, like a microphone (the default); 0 = as fast as the server takes it")
    p.add_argument("--wav", type=Path, help="keep the synthesized clip here (default: a temporary file)")
    p.add_argument("--json", type=Path, help="write the numbers here")
    args = p.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed: apt-get install espeak-ng", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="bench-context-") as tmp:
        wav = args.wav or Path(tmp) / "rare-names.wav"
        audio = make_clip(wav, Path(tmp))
        reference = " ".join(SENTENCES)
        try:
            if args.url:
                ready, texts = asyncio.run(run_both(audio, args.url, args.speed))
            else:
                server_args = ["--backend", args.backend, *(["--model", args.model] if args.model else [])]
                with run_server(*server_args, log_path=Path(tmp) / "server.log") as url:
                    ready, texts = asyncio.run(run_both(audio, url, args.speed))
        except (OSError, RuntimeError) as exc:
            print(f"the benchmark could not stream: {exc}", file=sys.stderr)
            return 1

    runs = {key: score(reference, text) for key, text in texts.items()}
    seconds = len(audio) / RATE
    print(report(ready, seconds, runs))
    if args.json:
        args.json.write_text(json.dumps({
            "backend": ready.get("backend"), "model": ready.get("model"), "speed": args.speed,
            "clip_seconds": round(seconds, 2), "sentences": SENTENCES, "reference": reference, "names": NAMES,
            "context": CONTEXT, "runs": runs}, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
