"""client.file with speakers: `--diarize` asks for them in `start`, the printer shows each voice's words as
"Name: text" lines, and `--srt`/`--vtt` cut the finals it received at their word times, with voices. The peer is a
small server of this test's own, not the caption server: it records `start`, and once the audio has come sends a
final shaped as the server sends a diarized one (two voices in one window, words on the stream's clock)."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import srt
import webvtt

from client.file import Printer

from .support.audio import AUDIO, RATE, ROOT
from .support.peers import ThreadedPeer

WORDS = [  # "Shall we move the launch to Friday? Yes, Friday works for me." said by two people
    ("Shall", 3.02, 3.2, "Priya"), ("we", 3.22, 3.31, "Priya"), ("move", 3.35, 3.6, "Priya"),
    ("the", 3.62, 3.7, "Priya"), ("launch", 3.72, 4.1, "Priya"), ("to", 4.12, 4.2, "Priya"),
    ("Friday?", 4.24, 4.8, "Priya"), ("Yes,", 5.4, 5.7, "Speaker 2"), ("Friday", 5.9, 6.3, "Speaker 2"),
    ("works", 6.35, 6.6, "Speaker 2"), ("for", 6.62, 6.7, "Speaker 2"), ("me.", 6.72, 7.0, "Speaker 2")]
FINAL = {"type": "final", "segment": 0, "start": 2.8, "end": 7.4,
         "text": "Shall we move the launch to Friday? Yes, Friday works for me.",
         "words": [{"word": w, "start": s, "end": e, "probability": 0.9,
                    "speaker": "Speaker 1" if name == "Priya" else name, "name": name} for w, s, e, name in WORDS]}


class DiarizingPeer(ThreadedPeer):
    def __init__(self):
        self.starts: list[dict] = []
        super().__init__()

    async def handler(self, ws) -> None:
        self.starts.append(json.loads(await ws.recv()))
        await ws.send(json.dumps({"type": "ready", "protocol": 1, "session": "diarized", "backend": "peer",
                                  "model": "none", "sample_rate": RATE}))
        async for msg in ws:
            if isinstance(msg, str) and json.loads(msg).get("type") == "stop":
                await ws.send(json.dumps(FINAL))
                await ws.send(json.dumps({"type": "end"}))
                await ws.close()
                return


def test_printer_shows_each_voice_as_its_own_line():
    out = io.StringIO()
    Printer(out)(FINAL)
    assert out.getvalue() == ("[   3.02 ->    4.80] Priya: Shall we move the launch to Friday?\n"
                              "[   5.40 ->    7.00] Speaker 2: Yes, Friday works for me.\n")
    out = io.StringIO()
    Printer(out)({"type": "final", "start": 1.0, "end": 2.5, "text": "no speakers", "speaker": "Ada",
                  "words": [{"word": "no", "start": 1.1, "end": 1.3}, {"word": "speakers", "start": 1.4, "end": 2}]})
    assert out.getvalue() == "[   1.00 ->    2.50] no speakers\n"  # as before diarization


def test_file_client_asks_for_speakers_and_writes_voiced_cues(tmp_path):
    with DiarizingPeer() as peer:
        run = subprocess.run([sys.executable, "-m", "client.file", str(AUDIO / "jfk_16k.wav"), "--url", peer.url,
                              "--speed", "0", "--diarize", "--srt", str(tmp_path / "a.srt"),
                              "--vtt", str(tmp_path / "a.vtt")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert peer.starts[0]["diarize"] is True
    assert "] Priya: Shall we move the launch to Friday?\n" in run.stdout
    assert "] Speaker 2: Yes, Friday works for me.\n" in run.stdout
    subs = list(srt.parse((tmp_path / "a.srt").read_text(), ignore_errors=False))
    assert [(s.start.total_seconds(), s.content) for s in subs] == [
        (3.02, "Priya: Shall we move the launch to Friday?"), (5.4, "Speaker 2: Yes, Friday works for me.")]
    assert [s.end.total_seconds() for s in subs] == [4.8, 7.0]  # its last word's end: up 1.78 s, time to read it
    captions = list(webvtt.from_string((tmp_path / "a.vtt").read_text(), strict=True))
    assert [(c.voice, c.text) for c in captions] == [("Priya", "Shall we move the launch to Friday?"),
                                                    ("Speaker 2", "Yes, Friday works for me.")]


def test_file_client_without_diarize_does_not_ask(tmp_path):
    with DiarizingPeer() as peer:
        run = subprocess.run([sys.executable, "-m", "client.file", str(AUDIO / "jfk_16k.wav"), "--url", peer.url,
                              "--speed", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert "diarize" not in peer.starts[0]
