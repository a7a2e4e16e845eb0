"""The speaker page's "Send captions to…" panel in a real browser (Debian's chromium driven by Playwright), against a
real server (embedded Whisper tiny.en) and a Zoom STAND-IN (tests/support/caption_standins.py: a local server that
enforces Zoom's documented caption contract; no machine here reaches Zoom).

The server allows the stand-in's address (`outputs.allowed_hosts=127.0.0.1`) and takes speaker and viewer tokens.
On the speaker page of a room (`?room=NAME&token=SPEAKER`, a clip as its microphone) the test opens the panel,
chooses Zoom, pastes the stand-in's caption URL and adds it; the URL's box is emptied and the URL (a credential)
shows nowhere on the page. Captioning the clip, the output's row shows state ok and its delivered count rising; the
stand-in accepted each of the room's finals once, seq 1, 2, ... in order, with `lang=en-US`, and saw no contract
violation. A refused URL (a private address, not allowed) shows the server's 400 reason; a viewer's token is
refused (403) and the panel says so; a page without a room has the form disabled; closing the panel stops its
polling; Remove deletes the output (204).
Screenshot of the panel with the ok output: artifacts/browser/outputs-panel.png.
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from .support.audio import RATE, heard, load_16k
from .support.browser import ARTIFACTS, CHROMIUM, browser_args, needs_chromium, record_errors
from .support.caption_standins import ZoomStandin
from .support.servers import http_base, run_server

ROOM = "outputs-panel"
SPEAKER = "Ada"  # the stream's label in the room: the plain-text services get "Ada: words"
CLIP = "jfk_16k.wav"
WORDS_END_S = 9.5  # the clip's last words run to 10.2 s: only its last final ends past this
SPEAKER_TOKEN, VIEWER_TOKEN = "outputs-sp3aker", "outputs-v1ewer"
REFUSED_URL = "http://10.1.2.3/closedcaption?id=1&ns=x&expire=86400&spparams=id%2Cns%2Cexpire&signature=s3cret"

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> Path:
    """The clip then 3 s of silence (the silence closes its last window; chromium loops the file)."""
    path = tmp_path_factory.mktemp("mic") / "jfk_then_silence.wav"
    sf.write(path, np.concatenate([load_16k(CLIP), np.zeros(3 * RATE, np.float32)]), RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def zoom():
    """A Zoom stand-in on its own event loop in a thread (this thread's loop is Playwright's)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="zoom-standin", daemon=True)
    thread.start()
    standin = ZoomStandin()
    asyncio.run_coroutine_threadsafe(standin.start(), loop).result(timeout=10)
    try:
        yield standin
    finally:
        asyncio.run_coroutine_threadsafe(standin.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outputs-panel")
    with run_server("--backend", "whisper", "--set", f"server.data_dir={tmp}",
                    "--set", "outputs.allowed_hosts=127.0.0.1",
                    "--set", f"auth.speaker_tokens={SPEAKER_TOKEN}", "--set", f"auth.viewer_tokens={VIEWER_TOKEN}",
                    log_path=tmp / "server.log") as url:
        yield url


def test_send_captions_to_zoom_from_the_speaker_page(server_url, zoom, mic_wav):
    from playwright.sync_api import expect, sync_playwright

    base = http_base(server_url)
    caption_url = zoom.url()
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=browser_args(mic_wav))
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            page = record_errors(context.new_page(), errors, "speaker")
            page.goto(f"{base}/?room={ROOM}&speaker={SPEAKER}&token={SPEAKER_TOKEN}")

            # The panel: collapsed at first, nothing polled until it is opened.
            panel = page.locator("#outputs")
            expect(panel).to_be_visible()
            url_box = page.get_by_label("Caption URL")
            expect(url_box).to_be_hidden()
            page.get_by_text("Send captions to…").click()
            expect(url_box).to_be_visible()
            expect(url_box).to_have_attribute("type", "password")  # a credential: masked
            expect(page.get_by_label("Language")).to_have_value("en-US")
            kind = page.get_by_label("Send to")
            kind.select_option(label="Webhook")
            expect(page.get_by_label("Webhook secret")).to_be_visible()
            kind.select_option(label="Zoom")
            expect(page.get_by_label("Webhook secret")).to_be_hidden()
            status = page.locator("#output-status")

            # A refused URL: the server's 400 and its reason, shown; nothing is listed.
            url_box.fill(REFUSED_URL)
            with page.expect_response(lambda r: r.request.method == "POST" and "/outputs" in r.url) as refused:
                page.get_by_role("button", name="Add", exact=True).click()
            assert refused.value.status == 400, refused.value.status
            reason = refused.value.json()["message"]
            assert reason and "s3cret" not in reason, reason
            expect(status).to_have_text(f"Refused: {reason}")
            expect(status).to_have_attribute("role", "alert")
            expect(page.locator("#output-list li")).to_have_count(0)

            # The stand-in's caption URL, added: the box is emptied, the URL shows nowhere.
            url_box.fill(caption_url)
            with page.expect_response(lambda r: r.request.method == "POST" and "/outputs" in r.url) as added:
                page.get_by_role("button", name="Add", exact=True).click()
            assert added.value.status == 201, added.value.status
            assert added.value.request.headers["authorization"] == f"Bearer {SPEAKER_TOKEN}"
            expect(status).to_contain_text("Added: Zoom at 127.0.0.1")
            expect(url_box).to_have_value("")
            row = page.locator("#output-list li").filter(has_text="Zoom")
            expect(row).to_have_count(1)
            expect(row.locator(".output-host")).to_have_text("127.0.0.1")

            # Captions: the row goes to ok with deliveries as the room's finals arrive.
            page.get_by_role("button", name="Start captioning").click()
            expect(page.locator("#state")).to_have_attribute("data-state", "live", timeout=20_000)
            page.wait_for_function("() => Number(document.querySelector('#output-list .output-delivered')"
                                   "?.textContent) >= 1", timeout=30_000)
            expect(row).to_have_attribute("data-state", "ok")
            expect(row.locator(".output-state")).to_have_text("ok")
            # The clip's first pass, then stop: `end` comes after the session's last final.
            page.wait_for_function("s => captionsDebug.finals.some(f => f.end >= s)", arg=WORDS_END_S,
                                   timeout=30_000)
            page.get_by_role("button", name="Stop captioning").click()
            expect(page.locator("#state")).to_have_attribute("data-state", "stopped", timeout=20_000)
            shown = [f for f in page.evaluate("captionsDebug.finals") if f["text"].strip()]
            assert heard(CLIP, " ".join(f["text"] for f in shown), 0.25), shown
            assert {f.get("speaker") for f in shown} == {SPEAKER}, shown
            # As the room page shows them: the stream's label in the room, then the words.
            finals = [f"{SPEAKER}: {' '.join(f['text'].split())}" for f in shown]
            # Every final with words delivered, once each (the panel's next polls catch up).
            expect(row.locator(".output-delivered")).to_have_text(str(len(finals)), timeout=10_000)
            expect(row).to_have_attribute("data-state", "ok")
            expect(row.locator(".output-retried")).to_have_text("0")
            expect(row.locator(".output-dropped")).to_have_text("0")
            expect(row.locator(".output-error")).to_have_text("")
            assert zoom.violations == [], zoom.violations
            assert [c["seq"] for c in zoom.accepted] == list(range(1, len(finals) + 1)), zoom.accepted
            assert [c["text"] for c in zoom.accepted] == finals
            assert zoom.langs == {"en-US"} and zoom.repeats == 0
            html = page.content()
            assert zoom.signature not in html and f":{zoom.port}/" not in html, "the caption URL is on the page"
            assert page.evaluate("captionsDebug.outputsPolling") is True

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "outputs-panel.png"
            panel.screenshot(path=str(shot))

            # A viewer's token may watch, never send the room's captions elsewhere: 403, said on its panel.
            viewer = record_errors(context.new_page(), [], "viewer")  # its 403 is logged as a console error
            viewer.goto(f"{base}/?room={ROOM}&token={VIEWER_TOKEN}")
            with viewer.expect_response(lambda r: r.request.method == "GET" and "/outputs" in r.url) as listed:
                viewer.get_by_text("Send captions to…").click()
            assert listed.value.status == 403, listed.value.status
            expect(viewer.locator("#output-status")).to_contain_text("may not manage outputs")
            expect(viewer.locator("#output-list li")).to_have_count(0)
            viewer.close()

            # Without a room there is nothing to send: the form is disabled and says why, and nothing is asked.
            lonely = record_errors(context.new_page(), errors, "no room")
            lonely.goto(f"{base}/?token={SPEAKER_TOKEN}")
            lonely.get_by_text("Send captions to…").click()
            expect(lonely.locator("#outputs")).to_contain_text("Join a room first")
            expect(lonely.get_by_label("Caption URL")).to_be_disabled()
            expect(lonely.get_by_role("button", name="Add", exact=True)).to_be_disabled()
            assert lonely.evaluate("captionsDebug.outputsPolling") is False
            lonely.close()

            # Closed, the panel stops polling; Remove deletes the output.
            page.get_by_text("Send captions to…").click()
            expect(url_box).to_be_hidden()
            page.wait_for_function("() => captionsDebug.outputsPolling === false", timeout=5_000)
            page.get_by_text("Send captions to…").click()
            with page.expect_response(lambda r: r.request.method == "DELETE") as removed:
                row.get_by_role("button", name="Remove Zoom output to 127.0.0.1").click()
            assert removed.value.status == 204, removed.value.status
            expect(page.locator("#output-list li")).to_have_count(0)
            expect(page.locator("#output-empty")).to_be_visible()
            context.close()
        finally:
            browser.close()
    assert shot.stat().st_size > 1000
    # Chromium logs each refused fetch as a console error: the refused URL's 400 is the one expected.
    unexpected = [e for e in errors if not (e.startswith("speaker: Failed to load resource") and "400" in e)]
    assert not unexpected, errors
