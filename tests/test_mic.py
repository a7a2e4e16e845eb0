"""`python -m client.mic`: the resampling path, the resend backlog, a real server restarted mid-stream, and the
whole command capturing a clip through a private PulseAudio (paplay -> null sink -> its monitor as the default
source -> ALSA `pulse` plugin -> PortAudio -> sounddevice) with the embedded Whisper backend."""
from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import soxr
import srt

from client.capture import FRAME_MS, AudioFeed
from client.link import Backlog, CaptionLink
from client.mic import Display
from client.resample import RATE, Framer, MonoResampler

from .support.audio import AUDIO, ROOT, heard, join_with_silence, transcript, wer
from .support.peers import ThreadedPeer
from .support.pulse import Mic, pulseaudio
from .support.servers import free_port, server_process
from .support.waits import until

FINAL_LINE = re.compile(r"^\[\s*([\d.]+) ->\s*([\d.]+)\] (.*)$")


# --- resampling: any rate and channel count in, exact 16 kHz mono frames out -----------------------------

def bursts(rate: int, seconds: float, at: list[float]) -> np.ndarray:
    """Stereo test signal: quiet noise plus 1 kHz tone bursts (Gaussian envelope) centred at `at` seconds;
    the right channel at half the level, so the downmix has to average."""
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.01 * np.random.default_rng(0).standard_normal(len(t))
    for c in at:
        mono += 0.8 * np.exp(-0.5 * ((t - c) / 0.004) ** 2) * np.sin(2 * np.pi * 1000 * (t - c))
    return np.stack([mono, 0.5 * mono], axis=1).astype(np.float32)


def in_random_blocks(audio: np.ndarray, seed: int = 1):
    """Blocks of the sizes PortAudio hands out, and some it might: 1 sample up to 100 ms."""
    rng, i = np.random.default_rng(seed), 0
    while i < len(audio):
        n = int(rng.choice([1, 7, 441, 480, 882, 960, 1024, int(rng.integers(1, 4800))]))
        yield audio[i:i + n]
        i += n


@pytest.mark.parametrize("rate", [48000, 44100])
def test_stereo_in_gives_16k_mono_frames_with_no_drift_over_60s(rate):
    marks = [0.5, 20.0, 41.3, 59.5]
    stereo = bursts(rate, 60.0, marks)
    backlog = Backlog(max_s=120)
    feed = AudioFeed(rate, backlog, wake=lambda: None)
    for block in in_random_blocks(stereo):
        feed.push(block)
    feed.flush()

    # every input sample accounted for: 60 s in, exactly 60 s out
    assert backlog.start == 0 and backlog.end == 60 * RATE
    frame = RATE * FRAME_MS // 1000
    sizes = [len(c) for c in backlog._chunks]
    assert set(sizes[:-1]) == {frame} and 0 < sizes[-1] <= frame  # exact 40 ms frames, one short tail
    out = backlog.read(0, backlog.end).astype(np.float32) / 32767

    # the same as resampling the whole downmixed signal at once (int16 rounding aside), to the last second
    whole = soxr.resample(stereo.mean(axis=1), rate, RATE, quality="HQ")
    assert len(whole) == len(out)
    assert np.abs(out - whole).max() < 2e-3
    assert np.abs(out[-RATE:] - whole[-RATE:]).max() < 2e-3

    # each burst where the clock says: its envelope peak within a sample of mark * 16000
    envelope = np.abs(out)
    for mark in marks:
        centre = int(mark * RATE)
        window = envelope[centre - 400:centre + 400]
        peak_at = centre - 400 + int(np.argmax(window))
        assert abs(peak_at - centre) <= 8, (mark, peak_at - centre)  # 1 kHz: a period is 16 samples
        assert 0.5 < window.max() < 0.7  # (0.8 + 0.4) / 2: averaged, not one channel


def test_resampler_and_framer_keep_state_across_blocks():
    clip = bursts(44100, 3.0, [1.0])[:, 0]
    r = MonoResampler(44100)
    pieces = [r(b) for b in in_random_blocks(clip, seed=3)] + [r.flush()]
    assert np.allclose(np.concatenate(pieces), soxr.resample(clip, 44100, RATE, quality="HQ"), atol=1e-5)
    assert MonoResampler(RATE)(np.ones((5, 2), np.float32)).shape == (5,)  # 16 kHz in: downmix only
    f = Framer(640)
    frames = f.push(np.arange(1000, dtype=np.float32)) + f.push(np.arange(1000, 1500, dtype=np.float32))
    assert [len(x) for x in frames] == [640, 640] and np.array_equal(np.concatenate(frames), np.arange(1280))
    assert np.array_equal(f.flush(), np.arange(1280, 1500))


# --- the resend buffer ---------------------------------------------------------------------------------------

def test_backlog_holds_audio_since_the_last_final_and_is_bounded():
    b = Backlog(max_s=0.25)  # 4000 samples
    audio = np.arange(10000, dtype="<i2")
    for i in range(0, 3000, 600):
        b.append(audio[i:i + 600])
    assert (b.start, b.end) == (0, 3000)
    b.release(1000)  # a final ended at sample 1000
    assert b.start == 1000 and np.array_equal(b.read(1000, 5000), audio[1000:3000])
    assert np.array_equal(b.read(1900, 100), audio[1900:2000])
    for i in range(3000, 10000, 640):
        b.append(audio[i:i + 640])
    assert (b.start, b.end, len(b)) == (6000, 10000, 4000)  # the oldest went
    assert np.array_equal(b.read(6000, 4000), audio[6000:])
    b.release(99999)
    assert len(b) == 0 and len(b.read(b.end, 10)) == 0


def test_display_prints_only_finals_when_stdout_is_not_a_terminal():
    out, err = io.StringIO(), io.StringIO()
    d = Display(out, err)
    d.caption({"type": "partial", "segment": 0, "start": 0.0, "end": 1.0, "text": "hello wor", "stable": 1})
    d.caption({"type": "final", "segment": 0, "start": 0.0, "end": 1.5, "text": "hello world"})
    d.caption({"type": "final", "segment": 1, "start": 2.0, "end": 2.5, "text": ""})  # noise: no empty line
    d.caption({"type": "error", "code": "bad_audio", "message": "x"})
    d.status("reconnecting")
    assert out.getvalue() == "[   0.00 ->    1.50] hello world\n"
    assert "bad_audio" in err.getvalue() and "reconnecting" in err.getvalue()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_display_rewrites_the_partial_in_place_on_a_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")
    out, err = Terminal(), io.StringIO()
    d = Display(out, err)
    d.caption({"type": "partial", "segment": 0, "start": 0.0, "end": 1.0, "text": "hello wor", "stable": 1})
    d.caption({"type": "partial", "segment": 0, "start": 0.0, "end": 2.0, "text": "hello world and more words",
               "stable": 2})
    d.status("reconnecting")  # takes the partial's line back first
    d.caption({"type": "final", "segment": 0, "start": 0.0, "end": 2.5, "text": "hello world and more words"})
    clear = "\r\x1b[K"
    assert out.getvalue() == (f"{clear}hello wor{clear}…ld and more words{clear}"  # one row: the tail of the text
                              f"{clear}[   0.00 ->    2.50] hello world and more words\n")
    assert err.getvalue() == "* reconnecting\n"


# --- reconnecting: a real server restarted on the same port in the middle of an utterance -------------------

async def test_server_killed_mid_utterance_and_restarted_loses_no_utterance(tmp_path):
    """SIGKILL, like a crash or a lost network: the server cannot flush, so the window it had open is gone and
    only the client's backlog (all audio since the last final) can bring that utterance back."""
    names = ["ldc93s1.wav", "lj050_0131.wav", "uberi_one_two_three.wav", "lj001_0005.wav"]
    speech, spans = join_with_silence(names, [1.0, 1.5, 2.0, 1.2])
    stereo48 = np.repeat(soxr.resample(speech, RATE, 48000).astype(np.float32)[:, None], 2, axis=1)
    cut_at = (spans[1][0] + spans[1][1]) / 2  # the server dies in the middle of the second utterance
    port = free_port()  # a fixed port, so that the restarted server comes back at the same URL
    servers = ExitStack()

    def start(n: int):
        # a later --port wins over the launcher's --port 0
        return servers.enter_context(server_process("--backend", "whisper", "--port", str(port), "--data-dir",
                                                    str(tmp_path / "data"), log_path=tmp_path / f"server-{n}.log"))[1]

    with servers:
        first = start(1)
        messages, statuses = [], []
        backlog = Backlog(max_s=30)
        link = CaptionLink(f"ws://127.0.0.1:{port}/v1/listen", backlog, messages.append, statuses.append,
                           backoff=(0.2, 1.0))
        feed = AudioFeed(48000, backlog, link.wake)
        runner = asyncio.create_task(link.run(await link.connect()))

        def restart() -> None:
            first.kill()  # SIGKILL: nothing gets flushed, as in a crash
            first.wait()
            start(2)

        restarting, live = None, False
        speed, block = 2.0, 960  # 20 ms blocks, as the capture callback hands them over, at twice real time
        t0 = time.monotonic()
        try:
            for i in range(0, len(stereo48), block):
                feed.push(stereo48[i:i + block])
                if restarting is None and i / 48000 >= cut_at:
                    # the first utterance's final in hand (a busy CPU may delay it), the second still open
                    await until(lambda: link.finals, timeout=30, what="the first final")
                    assert link.sessions == 1 and len(link.finals) == 1, link.finals
                    restarting = asyncio.create_task(asyncio.to_thread(restart))
                    t0 = time.monotonic() - (i + block) / 48000 / speed  # go on at the same pace after the wait
                elif restarting is not None and not live and i / 48000 >= spans[-1][0] - 0.5:
                    # a loaded CPU may take longer to restart the server than the audio lasts: the last utterance
                    # goes out live only once the link is back, so that it is shown as partials too
                    await restarting
                    await until(lambda: link.sessions == 2, timeout=30, what="the link back on the new server")
                    live = True
                    t0 = time.monotonic() - (i + block) / 48000 / speed
                # the capture's pace: the audio goes out as a microphone would deliver it, at `speed`
                await asyncio.sleep(max(0.0, t0 + (i + block) / 48000 / speed - time.monotonic()))
            await restarting
            feed.flush()
            link.finish()
            await asyncio.wait_for(runner, timeout=90)
        finally:
            runner.cancel()

    assert link.sessions == 2
    lost = [s for s in statuses if "connection lost" in s]
    resent = [s for s in statuses if s.startswith("reconnected")]
    assert lost and len(resent) == 1, statuses
    # it asked to resume; the restarted server had never heard of the session, so a new one began
    assert any("not resumed (resume_unknown" in s for s in statuses) and "new session" in resent[0], statuses
    # the second session began where the first final ended, before the cut: the open window came back whole
    assert link.base == round(link.finals[0]["end"] * RATE) and link.base / RATE < spans[1][0]
    assert [f["segment"] for f in link.finals] == list(range(len(link.finals)))
    finals = [f for f in link.finals if f["text"].strip()]
    assert len(finals) == len(names), [(f["start"], f["end"], f["text"]) for f in finals]
    # one timeline across both sessions: each final where its utterance is in the stream
    for final, (start, end), name in zip(finals, spans, names):
        assert final["start"] < start + 0.5 and final["end"] > end - 0.6, (name, final, (start, end))
        assert heard(name, final["text"], 0.5), (name, final["text"])
    assert [m for m in messages if m["type"] == "partial" and m["start"] >= spans[1][0] - 0.5]  # shown live too


# --- the command, capturing through a real PulseAudio ------------------------------------------------------

@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    with pulseaudio(tmp_path_factory.mktemp("pulse"), rate=48000, channels=2) as p:
        yield p


def test_mic_captions_a_clip_played_into_pulseaudio(pulse, cpu_url, tmp_path):
    saved = tmp_path / "captions.srt"
    # a generous bound: the shared CPU may be busy, and the bound itself is not what this test is about
    mic = Mic("--url", cpu_url, "--save", str(saved), "--stop-timeout", "90", env=pulse.env)
    mic.wait_for("listening on")  # printed once audio flows
    pulse.play(AUDIO / "jfk_16k.wav")  # 11 s of speech, upsampled by PulseAudio to the sink's 48 kHz stereo
    time.sleep(1.0)  # real time: the microphone hears 1 s of silence after the last word, as a speaker would leave
    mic.proc.send_signal(signal.SIGINT)
    code, out, err = mic.finish(timeout=120)
    assert code == 0, err
    assert "stopping" in err and "saved" in err, err

    lines = out.splitlines()
    assert lines and all(FINAL_LINE.match(line) for line in lines), (out, err)  # not a terminal: finals only
    text = " ".join(FINAL_LINE.match(line).group(3) for line in lines)
    # Whisper tiny.en on audio that went 16 -> 48 -> 44.1 -> 16 kHz: 3 runs here gave WER 0.0 (pocketsphinx,
    # before it, spread over 0.18-0.73 with where the VAD cut); the bound leaves room for a cut mid-word. Where
    # the capture's timing puts the window's start, tiny.en reads "my fellow" or "am I fellow" (seen in CI on a
    # loaded machine; test_mic_resume.py notes the same): the words after it are the check.
    assert wer(transcript("jfk_16k.wav"), text) <= 0.25 and "fellow americans" in text.lower(), text

    cues = list(srt.parse(saved.read_text()))
    assert " ".join(" ".join(c.content.split()) for c in cues) == " ".join(text.split())  # cues: 2 lines at most
    starts = [c.start.total_seconds() for c in cues]
    assert starts == sorted(starts) and cues[-1].end.total_seconds() - starts[0] > 8.0


class StalledServer(ThreadedPeer):
    """Answers `start`, sends one final, then never answers again (not even `stop`): what a client sees from a
    server stuck in a long batch."""

    async def handler(self, ws) -> None:
        await ws.recv()  # start
        await ws.send('{"type":"ready","session":"stalled","backend":"none","model":"none"}')
        await ws.send('{"type":"final","segment":0,"start":0.0,"end":1.0,"text":"before the stall"}')
        async for _ in ws:  # audio, then stop: never answered
            pass


def test_a_second_ctrl_c_quits_at_once_and_still_saves(pulse, tmp_path):
    saved = tmp_path / "captions.txt"
    with StalledServer() as server:
        mic = Mic("--url", server.url, "--save", str(saved), "--stop-timeout", "120", env=pulse.env)
        try:
            mic.wait_for("listening on")
            mic.wait_for("before the stall", lines=mic.out)  # finals go to stdout
            mic.proc.send_signal(signal.SIGINT)
            mic.wait_for("stopping")
            t = time.monotonic()
            mic.proc.send_signal(signal.SIGINT)
            # the time is the point: well under the 120 s --stop-timeout that a missed second Ctrl-C waits out
            code, out, err = mic.finish(timeout=90)
            assert time.monotonic() - t < 60, "the second Ctrl-C did not cut the wait for the last captions short"
        finally:
            if mic.proc.poll() is None:
                mic.proc.kill()
    assert code == 130 and "quit: the last" in err, err
    assert "before the stall" in out and saved.read_text() == "before the stall\n"


def test_list_devices_shows_the_pulseaudio_input(pulse):
    out = subprocess.run([sys.executable, "-m", "client.mic", "--list-devices"], cwd=ROOT, env=pulse.env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "pulse" in out.stdout and "*" in out.stdout, out


def test_unreachable_server_gets_a_clear_message(pulse):
    url = f"ws://127.0.0.1:{free_port()}/v1/listen"
    out = subprocess.run([sys.executable, "-m", "client.mic", "--url", url], cwd=ROOT, env=pulse.env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and f"cannot reach the server at {url}" in out.stderr, out
    assert out.stdout == "" and "Traceback" not in out.stderr


def test_unknown_device_gets_a_clear_message(pulse):
    out = subprocess.run([sys.executable, "-m", "client.mic", "--device", "no-such-microphone"], cwd=ROOT,
                         env=pulse.env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "no input device matching 'no-such-microphone'" in out.stderr.lower(), out
    assert "Traceback" not in out.stderr


def test_no_input_device_at_all_gets_a_clear_message(tmp_path):
    cards = Path("/proc/asound/cards")
    if cards.exists() and "no soundcards" not in cards.read_text():
        pytest.skip("this machine has a sound card, so it has an input device")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env["PULSE_SERVER"] = f"unix:{tmp_path / 'no-such-socket'}"  # no sound server either
    out = subprocess.run([sys.executable, "-m", "client.mic"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1 and "no audio input device found" in out.stderr, out
    assert "Traceback" not in out.stderr
