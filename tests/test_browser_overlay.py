"""Two pages in a real browser (Debian's chromium driven by Playwright), each against a real server.

The OBS overlay on a server with viewer tokens: opened with `?token=VIEWER` it shows the captions of a clip streamed
into its room with a speaker token; opened without one, the server refuses it (close 4401), and it says so instead
of reconnecting forever. A screenshot of the overlay with captions goes to artifacts/browser/overlay-token.png.

The speaker page names the bundled Whisper model "tiny.en (bundled)", as `ready` and /healthz do, not by its path
inside site-packages.
"""
from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from client.stream import stream_audio

from .support.audio import RATE, heard, load_16k
from .support.browser import ARTIFACTS, CHROMIUM, browser_args, needs_chromium, record_errors
from .support.servers import health, http_base, run_server

SPEAKER_TOKEN, VIEWER_TOKEN = "overlay-sp3aker", "overlay-v1ewer"
ROOM = "overlay-token"
CLIP = "jfk_16k.wav"

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def token_url(tmp_path_factory):
    """A real Whisper server that needs a speaker token to stream and a viewer token to watch."""
    tmp = tmp_path_factory.mktemp("overlay-auth")
    with run_server("--backend", "whisper", "--set", f"server.data_dir={tmp}",
                    "--set", f"auth.speaker_tokens={SPEAKER_TOKEN}", "--set", f"auth.viewer_tokens={VIEWER_TOKEN}",
                    log_path=tmp / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless chromium; its microphone is a second of silence (the speaker page needs one to start)."""
    from playwright.sync_api import sync_playwright

    mic = tmp_path_factory.mktemp("mic") / "silence.wav"
    sf.write(mic, np.zeros(RATE, np.float32), RATE, subtype="PCM_16")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=browser_args(mic))
        try:
            yield browser
        finally:
            browser.close()


def test_overlay_sends_its_viewer_token(token_url, browser):
    from playwright.sync_api import expect

    base = http_base(token_url)
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1100, "height": 360})
    try:
        overlay = record_errors(context.new_page(), errors, "overlay")
        overlay.goto(f"{base}/overlay?room={ROOM}&token={VIEWER_TOKEN}&fade=0&lines=3")
        tokenless = record_errors(context.new_page(), errors, "tokenless")
        sockets, frames = [], []  # the tokenless overlay's websockets, and what the server sent on them

        def opened(ws):
            sockets.append(ws)
            ws.on("framereceived", lambda payload: frames.append(payload))

        tokenless.on("websocket", opened)
        tokenless.goto(f"{base}/overlay?room={ROOM}")

        expect(overlay.locator("body")).to_have_attribute("data-state", "live", timeout=15_000)
        # Refused for good: the same page would be refused again, so it stops and says why.
        expect(tokenless.locator("body")).to_have_attribute("data-state", "error", timeout=15_000)
        expect(tokenless.locator("#state")).to_contain_text("Needs a viewer token")

        # The overlay shows live captions only (no backlog): the clip is streamed once it watches.
        stream = stream_audio(load_16k(CLIP), RATE, f"{token_url}?token={SPEAKER_TOKEN}", speed=0,
                              start_extra={"room": ROOM})
        with ThreadPoolExecutor(1) as pool:  # this thread's event loop is Playwright's
            result = pool.submit(asyncio.run, stream).result(timeout=60)
        said = " ".join(f["text"].strip() for f in result.finals if f["text"].strip())
        assert heard(CLIP, said, 0.2), said
        # Every final, as the server sent it, and nothing left of the partials before them.
        expect(overlay.locator("#captions")).to_have_text(said, timeout=15_000)
        expect(overlay.locator("#captions .partial")).to_have_count(0)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        overlay.screenshot(path=str(ARTIFACTS / "overlay-token.png"), omit_background=True)

        # By now the tokenless overlay would have had the same captions; it has none, and it never retried.
        expect(tokenless.locator("#captions .final, #captions .partial")).to_have_count(0)
        expect(tokenless.locator("#captions")).to_contain_text("Needs a viewer token")
        assert len(sockets) == 1 and [json.loads(f)["code"] for f in frames] == ["unauthorized"], frames
    finally:
        context.close()
    assert (ARTIFACTS / "overlay-token.png").stat().st_size > 1000
    assert not errors, errors


def test_speaker_page_names_the_bundled_model(cpu_url, browser):
    from playwright.sync_api import expect

    assert health(cpu_url)["model"] == "tiny.en (bundled)"
    errors: list[str] = []
    context = browser.new_context()
    try:
        speaker = record_errors(context.new_page(), errors, "speaker")
        speaker.goto(http_base(cpu_url) + "/")
        speaker.get_by_role("button", name="Start captioning").click()
        expect(speaker.locator("#state")).to_have_attribute("data-state", "live", timeout=20_000)
        expect(speaker.locator("#model")).to_have_text("tiny.en (bundled)")
        shown = f'{speaker.locator("#backend").text_content()} {speaker.locator("#model").text_content()}'
        assert shown == "whisper tiny.en (bundled)"
        assert not re.search(r"site-packages|/", shown), shown
        # Stopped, not dropped: a dropped session would be held for resuming on the suite's shared server.
        speaker.get_by_role("button", name="Stop captioning").click()
        expect(speaker.locator("#state")).to_have_attribute("data-state", "stopped", timeout=20_000)
    finally:
        context.close()
    assert not errors, errors
