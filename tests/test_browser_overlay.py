"""Two pages in a real browser (Debian's chromium driven by Playwright), each against a real server.

The OBS overlay on a server with viewer tokens: opened with `?token=VIEWER` it shows the captions of a clip streamed
into its room with a speaker token; opened without one, the server refuses it (close 4401), and it says so instead
of reconnecting forever. A screenshot of the overlay with captions goes to artifacts/browser/overlay-token.png.

The speaker page on the same server, with a clip as its microphone: opened with `?token=SPEAKER` it streams and gets
the clip's words; opened without one, the server refuses it (close 4401), and it stops and says why, after one
websocket.

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
WORDS_END_S = 9.5  # the clip's last words ("... for your country") run to 10.2 s: only its last final ends past this

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
    """Headless chromium; its microphone is CLIP then 3 s of silence, looped (the silence closes the clip's window)."""
    from playwright.sync_api import sync_playwright

    mic = tmp_path_factory.mktemp("mic") / "clip_then_silence.wav"
    sf.write(mic, np.concatenate([load_16k(CLIP), np.zeros(3 * RATE, np.float32)]), RATE, subtype="PCM_16")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=browser_args(mic))
        try:
            yield browser
        finally:
            browser.close()


def tokenless_page(context, errors: list[str], url: str):
    """A page opened at `url` without a token: the page, its websockets, and the frames the server sent on them."""
    page = record_errors(context.new_page(), errors, "tokenless")
    sockets, frames = [], []

    def opened(ws):
        sockets.append(ws)
        ws.on("framereceived", lambda payload: frames.append(payload))

    page.on("websocket", opened)
    page.goto(url)
    return page, sockets, frames


def test_overlay_sends_its_viewer_token(token_url, browser):
    from playwright.sync_api import expect

    base = http_base(token_url)
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1100, "height": 360})
    try:
        overlay = record_errors(context.new_page(), errors, "overlay")
        overlay.goto(f"{base}/overlay?room={ROOM}&token={VIEWER_TOKEN}&fade=0&lines=3")
        tokenless, sockets, frames = tokenless_page(context, errors, f"{base}/overlay?room={ROOM}")

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


def test_speaker_page_sends_its_speaker_token(token_url, browser):
    from playwright.sync_api import expect

    base = http_base(token_url)
    errors: list[str] = []
    context = browser.new_context()
    try:
        speaker = record_errors(context.new_page(), errors, "speaker")
        urls: list[str] = []
        speaker.on("websocket", lambda ws: urls.append(ws.url))
        speaker.goto(f"{base}/?token={SPEAKER_TOKEN}")
        tokenless, sockets, frames = tokenless_page(context, errors, f"{base}/")
        for page in (speaker, tokenless):
            page.get_by_role("button", name="Start captioning").click()

        # Refused for good: the same token would be refused again, so the page stops and says why.
        expect(tokenless.locator("#state")).to_have_attribute("data-state", "error", timeout=15_000)
        expect(tokenless.locator("#state")).to_contain_text("Needs a speaker token")
        expect(tokenless.locator("#notice")).to_contain_text("add token=YOUR_TOKEN to this page's address")
        expect(tokenless.get_by_role("button", name="Start captioning")).to_be_enabled()

        expect(speaker.locator("#state")).to_have_attribute("data-state", "live", timeout=20_000)
        assert len(urls) == 1 and f"token={SPEAKER_TOKEN}" in urls[0], urls
        # The clip's first pass, up to its last final (the loop's next pass starts 3 s after the clip's end).
        speaker.wait_for_function("s => captionsDebug.finals.some(f => f.end >= s)", arg=WORDS_END_S,
                                  timeout=45_000)
        finals = speaker.evaluate("captionsDebug.finals")
        clip_s = len(load_16k(CLIP)) / RATE
        said = " ".join(f["text"] for f in finals if f["start"] < clip_s)
        assert heard(CLIP, said, 0.2), said
        speaker.get_by_role("button", name="Stop captioning").click()
        expect(speaker.locator("#state")).to_have_attribute("data-state", "stopped", timeout=20_000)
        # Joining a room through the page's form keeps the token (what the form would submit; not submitted).
        form = "Object.fromEntries(new FormData(document.getElementById('room-form')))"
        assert speaker.evaluate(form)["token"] == SPEAKER_TOKEN and "token" not in tokenless.evaluate(form)

        # By now the tokenless page would have had the same captions; it has none, and it never retried.
        expect(tokenless.locator("#captions .final")).to_have_count(0)
        assert len(sockets) == 1 and [json.loads(f)["code"] for f in frames] == ["unauthorized"], frames
        assert "token=" not in sockets[0].url
    finally:
        context.close()
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
