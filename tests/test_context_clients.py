"""The clients send `context` (names and terms likely to be said) in `start`: client.file, client.mic's link on
every session (a reconnect included) and the speaker page in Chromium (typed or from `?context=`, on its
auto-reconnect too). The peer is a small recording server of this test's own, not the caption server: it keeps
the first text message of each connection, answers `ready`, and serves web/ over HTTP for the page."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from urllib.parse import quote

import numpy as np
import pytest

from client.link import Backlog, CaptionLink
from client.stream import MAX_CONTEXT, start_message

from .support.audio import AUDIO, RATE, ROOT
from .support.browser import CHROMIUM, browser_args, needs_chromium, record_errors
from .support.peers import ThreadedPeer
from .support.pulse import Mic, pulseaudio
from .support.waits import until

CONTEXT = "Anneliese Kowalczyk, Quetzalcoatl, Dr. Nnamdi Okonkwo, Zoë Ångström"


class Recorder(ThreadedPeer):
    """A websocket peer: records the first text message of every connection to /v1/listen (`starts`), answers
    `ready`, reads until `stop`, then sends one final and `end`. With `drop_first`, the first connection is cut
    (code 1011) once audio has come, to force a reconnect. Other paths are HTTP: web/ as the caption server serves
    it (its own static_file, CSP included)."""

    def __init__(self, drop_first: bool = False):
        self.drop_first = drop_first
        self.starts: list[dict] = []
        super().__init__()

    async def handler(self, ws) -> None:
        first = await ws.recv()
        self.starts.append(json.loads(first))
        n = len(self.starts)
        await ws.send(json.dumps({"type": "ready", "protocol": 1, "session": f"rec-{n}", "backend": "recorder",
                                  "model": "none", "sample_rate": RATE, "reason": "test"}))
        audio = 0
        async for msg in ws:
            if isinstance(msg, bytes):
                audio += len(msg)
                if self.drop_first and n == 1:
                    await ws.close(1011, "test: dropped")
                    return
            elif json.loads(msg).get("type") == "stop":
                await ws.send(json.dumps({"type": "final", "segment": 0, "start": 0.0, "end": 0.5,
                                          "text": f"heard {audio} bytes"}))
                await ws.send(json.dumps({"type": "end"}))
                await ws.close()
                return

    def process_request(self, connection, request):
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        from server.httpapi.responses import static_file

        path = request.path.partition("?")[0]
        if path == "/v1/listen":
            return None  # the websocket handshake goes on
        page = static_file(ROOT / "web", path)  # an aiohttp response, as the caption server sends it
        return Response(page.status, page.reason, Headers(page.headers.items()), page.body)


@pytest.fixture
def recorder():
    with Recorder() as rec:
        yield rec


@pytest.fixture
def dropping_recorder():
    with Recorder(drop_first=True) as rec:
        yield rec


# --- the shared start builder and the command-line check ---------------------------------------------------

def test_start_message_carries_context_only_when_given():
    base = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1}
    assert start_message(16000) == base
    assert start_message(16000, context="  ") == base  # blank: left out
    assert start_message(48000, "pcm_f32le", context=" Ada, Babbage \n", room="r1", speaker="Ada") == {
        **base, "sample_rate": 48000, "encoding": "pcm_f32le", "context": "Ada, Babbage", "room": "r1",
        "speaker": "Ada"}
    assert start_message(16000, context="x" * MAX_CONTEXT)["context"] == "x" * MAX_CONTEXT
    with pytest.raises(ValueError, match="at most 500"):
        start_message(16000, context="x" * (MAX_CONTEXT + 1))


@pytest.mark.parametrize("module", ["client.file", "client.mic"])
def test_context_over_500_characters_is_a_clear_argparse_error(module, capsys):
    main = __import__(module, fromlist=["main"]).main
    args = (["unused.wav"] if module == "client.file" else []) + ["--context", "é" * (MAX_CONTEXT + 1)]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --context: 501 characters, more than the 500 the server takes" in err, err


# --- client.file ---------------------------------------------------------------------------------------------

def run_file_client(url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.file", str(AUDIO / "jfk_16k.wav"), "--url", url,
                           "--speed", "0", *extra], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_file_client_sends_context_in_start(recorder):
    out = run_file_client(recorder.url, "--context", CONTEXT)
    assert out.returncode == 0, out.stderr
    assert "heard" in out.stdout  # the whole stream went through: start, audio, stop, final, end
    assert recorder.starts == [{"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1,
                                "context": CONTEXT}]


def test_file_client_without_context_sends_none(recorder):
    out = run_file_client(recorder.url)
    assert out.returncode == 0, out.stderr
    assert len(recorder.starts) == 1 and "context" not in recorder.starts[0], recorder.starts


# --- client.mic: the link sends it on every session ---------------------------------------------------------

async def test_mic_link_sends_context_again_after_a_reconnect(dropping_recorder):
    rec = dropping_recorder
    statuses: list[str] = []
    backlog = Backlog(max_s=30)
    link = CaptionLink(rec.url, backlog, lambda msg: None, statuses.append, room="standup",
                       backoff=(0.1, 0.5), context=CONTEXT)
    ws = await link.connect()
    backlog.append(np.zeros(RATE, "<i2"))  # 1 s of audio: the first session is cut when it arrives
    runner = asyncio.create_task(link.run(ws))
    try:
        await until(lambda: link.sessions == 2, timeout=20, what="the second session")
        link.finish()
        await asyncio.wait_for(runner, timeout=20)
    finally:
        runner.cancel()
    assert link.sessions == 2, statuses
    assert any("connection lost" in s for s in statuses) and any(s.startswith("reconnected") for s in statuses)
    expected = {"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1,
                "context": CONTEXT, "room": "standup"}
    assert rec.starts == [expected, expected]


def test_mic_command_sends_context_on_its_reconnect_too(dropping_recorder, tmp_path):
    """`python -m client.mic --context` capturing from a private PulseAudio (silence will do: the recorder cuts
    the first session at its first audio, and the command reconnects by itself)."""
    rec = dropping_recorder
    with pulseaudio(tmp_path / "pulse") as pulse:
        mic = Mic("--url", rec.url, "--context", CONTEXT, "--stop-timeout", "10", env=pulse.env)
        try:
            mic.wait_for("reconnected", timeout=20)
            mic.proc.send_signal(signal.SIGINT)
            code, out, err = mic.finish(timeout=20)
        finally:
            if mic.proc.poll() is None:
                mic.proc.kill()
    assert code == 0 and "connection lost" in err, err
    assert "heard" in out  # the second session ran to its `end`
    expected = {"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1, "context": CONTEXT}
    assert rec.starts == [expected, expected]


# --- the speaker page in Chromium ---------------------------------------------------------------------------

@needs_chromium
def test_speaker_page_sends_the_field_in_start_and_again_on_reconnect(dropping_recorder, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    rec = dropping_recorder
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=browser_args(AUDIO / "jfk_16k.wav"))
        try:
            page = record_errors(browser.new_page(viewport={"width": 1100, "height": 720}), errors)

            # ?context= prefills the field (its visible label names it)
            page.goto(f"{rec.http_url}/?context={quote('Prefilled Name, Ōkami')}")
            field = page.get_by_label("Names and terms (optional)")
            expect(field).to_have_value("Prefilled Name, Ōkami")
            expect(field).to_have_attribute("maxlength", str(MAX_CONTEXT))
            expect(page.locator("#context-count")).to_have_text("21/500")
            field.fill(CONTEXT)
            expect(page.locator("#context-count")).to_have_text(f"{len(CONTEXT)}/500")

            page.get_by_role("button", name="Start captioning").click()
            # the first session is cut once audio comes; the page reconnects by itself and goes live again
            page.wait_for_function("() => captionsDebug.session === 'rec-2' && captionsDebug.state === 'live'",
                                   timeout=20_000)
            assert "reconnecting" in page.evaluate("captionsDebug.stateLog")
            expect(field).not_to_be_editable()  # the context in use is shown, fixed while captioning
            rate = page.evaluate("captionsDebug.rate")
            expected = {"type": "start", "sample_rate": rate, "encoding": "pcm_s16le", "channels": 1,
                        "context": CONTEXT}
            assert rec.starts == [expected, expected]

            page.get_by_role("button", name="Stop captioning").click()
            expect(page.locator("#state")).to_have_attribute("data-state", "stopped", timeout=15_000)
            expect(field).to_be_editable()

            # Joining a room keeps the context in the new page's URL (and so in the field); a blank one stays out.
            page.locator("#room-form-summary").click()
            page.locator("#room-input").fill("standup")
            page.get_by_role("button", name="Join room").click()
            page.wait_for_url(lambda url: "room=standup" in url)
            expect(page.get_by_label("Names and terms (optional)")).to_have_value(CONTEXT)
            page.get_by_label("Names and terms (optional)").fill("   ")
            page.locator("#room-form-summary").click()
            page.get_by_role("button", name="Join room").click()
            page.wait_for_url(lambda url: "context" not in url and "room=standup" in url)

            # and without any context, the start has no field at all
            page.get_by_role("button", name="Start captioning").click()
            page.wait_for_function("() => captionsDebug.state === 'live'", timeout=20_000)
            assert "context" not in rec.starts[-1] and rec.starts[-1]["room"] == "standup", rec.starts
            page.screenshot(path=str(tmp_path / "speaker.png"))
        finally:
            browser.close()
    assert not errors, errors


# --- bench.context's scoring -------------------------------------------------------------------------------

def test_bench_context_counts_names_spelled_exactly():
    from bench.context import CONTEXT, NAMES, SENTENCES, mentions, score

    reference = " ".join(SENTENCES)
    assert all(mentions(name, reference) >= 1 for name in NAMES) and len(CONTEXT) <= MAX_CONTEXT
    assert mentions("Anneliese Kowalczyk", reference) == 2
    assert mentions("Nnamdi Okonkwo", "dr. NNAMDI okonkwo's talk; nnamdi-okonkwo") == 2  # case, punctuation aside
    assert mentions("Okonkwo", "Okonkwoo Akonkwo") == 0  # whole words only
    s = score("Ada met Quetzalcoatl and Ada left.", "ada met quetzal coatl and Ada Ada left", ["Ada", "Quetzalcoatl"])
    assert (s["names_exact"], s["names_said"], s["missed"]) == (2, 3, ["Quetzalcoatl"])  # an extra Ada earns nothing
    assert score(reference, reference)["wer"] == 0.0 and score(reference, reference)["names_share"] == 1.0
