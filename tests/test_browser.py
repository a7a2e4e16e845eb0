"""The web pages end to end in a real browser: Debian's chromium driven by Playwright, a shared WAV as the
microphone, the embedded Whisper tiny.en backend behind a real server.

The speaker page (`/?room=...`) captures the fake microphone with an AudioWorklet and streams it to
`/v1/listen`; an overlay (`/overlay?room=...`) and a room page (`/room/...`) watch the same room. The test
checks the words on the overlay, the room page's transcript, an SRT download, a forced reconnect whose resume is
refused (the page falls back to a new session; the transcript's times stay continuous), a stop, and writes a
screenshot of each page to artifacts/browser/. test_browser_resume.py checks a resume that goes through.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import srt

from .support.audio import RATE, load_16k
from .support.browser import ARTIFACTS, CHROMIUM, browser_args, needs_chromium, record_errors

ROOM = "e2e-browser"
SPEAKER = "Ada"

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> Path:
    """jfk_16k.wav and 3 s of silence, 16-bit PCM: chromium loops the file, the silence closes each window."""
    audio = np.concatenate([load_16k("jfk_16k.wav"), np.zeros(3 * RATE, np.float32)])
    path = tmp_path_factory.mktemp("mic") / "jfk_then_silence.wav"
    sf.write(path, audio, RATE, subtype="PCM_16")
    return path


SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+(?:\n.+)?)\n")


def parse_srt(text: str) -> list[tuple[int, float, float, str]]:
    """Checks the exact SRT shape (numbered cues of 1 or 2 lines, a blank line between) and returns (index, start,
    end, text)."""
    blocks = text.split("\n\n")
    cues = []
    for block in blocks:
        m = SRT_CUE.fullmatch(block if block.endswith("\n") else block + "\n")
        assert m, f"not an SRT cue: {block!r}"
        g = m.groups()
        start = int(g[1]) * 3600 + int(g[2]) * 60 + int(g[3]) + int(g[4]) / 1000
        end = int(g[5]) * 3600 + int(g[6]) * 60 + int(g[7]) + int(g[8]) / 1000
        cues.append((int(g[0]), start, end, g[9]))
    return cues


def test_speaker_overlay_and_room_pages_in_chromium(cpu_url, mic_wav):
    from playwright.sync_api import expect, sync_playwright

    t0 = time.monotonic()
    base = cpu_url.replace("ws://", "http://").replace("/v1/listen", "")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    errors: list[str] = []
    listen_sockets: list = []  # the speaker page's /v1/listen connections, proxied so one can be cut
    starts: list[dict] = []  # the `start` messages the page sent, as it sent them
    replies: list[dict] = []  # what the server sent on the second connection (text frames)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=browser_args(mic_wav))
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 720}, accept_downloads=True)

            def watch(page, name):
                return record_errors(page, errors, name)

            overlay = watch(context.new_page(), "overlay")
            overlay.goto(f"{base}/overlay?room={ROOM}&fade=120&lines=3")
            room = watch(context.new_page(), "room")
            room.set_viewport_size({"width": 900, "height": 640})
            room.goto(f"{base}/room/{ROOM}")
            speaker = watch(context.new_page(), "speaker")

            def proxy(ws):  # a proxy; the test closes it once to force a reconnect, whose resume it spoils
                server = ws.connect_to_server()
                listen_sockets.append((ws, server))
                second = len(listen_sockets) == 2

                def up(message):
                    if isinstance(message, str) and '"start"' in message:
                        starts.append(json.loads(message))
                        if second and "resume" in starts[-1]:  # a wrong token: the server refuses the resume
                            message = json.dumps({**starts[-1], "resume_token": "not-the-token"})
                    server.send(message)

                def down(message):
                    if second and isinstance(message, str):
                        replies.append(json.loads(message))
                    ws.send(message)

                ws.on_message(up)
                server.on_message(down)
                ws.on_close(lambda code, reason: server.close())
                server.on_close(lambda code, reason: ws.close(code=code, reason=reason))

            speaker.route_web_socket(re.compile(r".*/v1/listen.*"), proxy)
            speaker.goto(f"{base}/?room={ROOM}&speaker={SPEAKER}")

            expect(overlay.locator("body")).to_have_attribute("data-state", "live", timeout=15_000)
            expect(room.locator("#state")).to_have_attribute("data-state", "live", timeout=15_000)
            expect(speaker.locator("#overlay-link")).to_have_attribute("href", f"/overlay?room={ROOM}")
            expect(speaker.locator("#room-link")).to_have_attribute("href", f"/room/{ROOM}")
            # Accessibility basics: live caption regions, a labelled toggle button.
            for page, selector in ((speaker, "#captions"), (overlay, "#captions"), (room, "#transcript")):
                expect(page.locator(selector)).to_have_attribute("aria-live", "polite")
            # The page's own SRT/VTT/TXT builders on awkward finals (same output as caption_formats).
            built = speaker.evaluate("""async () => {
                const m = await import("/js/common.js");
                const finals = [{start: 0, end: 1.5, text: " a <b> &  c "}, {start: 2, end: 2.5, text: ""},
                                {start: 3661.25, end: 3600, text: "x"}];
                return [m.toSrt(finals), m.toVtt(finals), m.toTxt(finals)];
            }""")
            assert built == [
                "1\n00:00:00,000 --> 00:00:01,500\na <b> & c\n\n2\n01:01:01,250 --> 01:01:01,251\nx\n",
                "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\na &lt;b&gt; &amp; c\n\n01:01:01.250 --> 01:01:01.251\nx\n",
                "a <b> & c\nx\n"]

            speaker.get_by_role("button", name="Start captioning").click()
            expect(speaker.locator("#state")).to_have_attribute("data-state", "live", timeout=20_000)
            expect(speaker.locator("#backend")).to_have_text("whisper")
            expect(speaker.get_by_role("button", name="Stop captioning")).to_have_attribute("aria-pressed", "true")
            rate = speaker.evaluate("captionsDebug.rate")
            assert rate in (8000, 16000, 22050, 24000, 32000, 44100, 48000)

            # The overlay shows the words, first as partials, then as finals.
            captions = overlay.locator("#captions")
            expect(captions).to_contain_text("fellow", timeout=45_000)
            expect(captions).to_contain_text("country", timeout=45_000)
            expect(overlay.locator("#captions .final").first).to_be_attached(timeout=45_000)
            assert overlay.evaluate("[getComputedStyle(document.documentElement).backgroundColor, "
                                    "getComputedStyle(document.body).backgroundColor]") == ["rgba(0, 0, 0, 0)"] * 2

            # The room page lists the speaker's finals as "[hh:mm:ss] Ada: text".
            first_line = room.locator("#transcript li.final").first
            expect(first_line).to_have_text(re.compile(r"^\[\d\d:\d\d:\d\d\] Ada: \S.*"), timeout=30_000)
            expect(room.locator("#speakers")).to_contain_text(SPEAKER)
            room_text = room.locator("#transcript").inner_text()
            assert "fellow" in room_text or "country" in room_text, room_text

            # The speaker page: finals settled, downloads enabled; the SRT comes through a Blob URL download.
            expect(speaker.locator("#captions .final").first).to_be_attached(timeout=30_000)
            with speaker.expect_download(timeout=10_000) as info:
                speaker.get_by_role("button", name="SRT").click()
            download = info.value
            assert download.suggested_filename.startswith(f"captions-{ROOM}-")
            assert download.suggested_filename.endswith(".srt")
            srt_text = Path(download.path()).read_text(encoding="utf-8")
            cues = parse_srt(srt_text)
            assert [(c.index, c.content) for c in srt.parse(srt_text)] == [(c[0], c[3]) for c in cues]
            # The server's own export of the session (cues cut at word times, "Ada: " before each cue); it may have
            # a final more by now, whose cue may clip the last one's end.
            session = speaker.evaluate("captionsDebug.session")
            served = parse_srt(context.request.get(f"{base}/v1/transcripts/{session}.srt").text())
            assert [(c[0], c[1], c[3]) for c in served[:len(cues)]] == [(c[0], c[1], c[3]) for c in cues]
            assert all(c[3].startswith(f"{SPEAKER}: ") for c in cues), srt_text
            assert [c[0] for c in cues] == list(range(1, len(cues) + 1))
            assert all(0 <= s < e for _, s, e, _ in cues)
            assert all(a[2] <= b[1] + 1e-3 for a, b in zip(cues, cues[1:]))
            assert any("fellow" in c[3] or "country" in c[3] for c in cues), srt_text
            (ARTIFACTS / "transcript.srt").write_text(srt_text, encoding="utf-8")
            with speaker.expect_download(timeout=10_000) as info:
                speaker.get_by_role("button", name="VTT").click()
            vtt_text = Path(info.value.path()).read_text(encoding="utf-8")
            assert vtt_text.startswith("WEBVTT\n\n00:00:") and info.value.suggested_filename.endswith(".vtt")
            with speaker.expect_download(timeout=10_000) as info:
                speaker.get_by_role("button", name="TXT").click()
            # The same words as the SRT (a line per final and voice there, cues cut at word times here).
            def words(lines):
                return " ".join(line.removeprefix(f"{SPEAKER}: ") for line in lines).split()
            srt_words = words(line for c in cues for line in c[3].split("\n"))
            txt_words = words(Path(info.value.path()).read_text(encoding="utf-8").splitlines())
            assert txt_words[:len(srt_words)] == srt_words, (txt_words, srt_words)

            # Screenshots of the three pages while they show captions.
            speaker.screenshot(path=str(ARTIFACTS / "speaker.png"))
            room.screenshot(path=str(ARTIFACTS / "room.png"))
            overlay.screenshot(path=str(ARTIFACTS / "overlay.png"), omit_background=True)
            overlay_on_dark(context, ARTIFACTS / "overlay.png", ARTIFACTS / "overlay-on-dark.png")

            # Cut the speaker's connection: the page reconnects by itself and asks to resume its session; the
            # proxy spoils the token, so the server refuses (resume_refused) and the page starts a new session on
            # the same connection, whose times are offset by the audio already captured: the transcript's times
            # stay continuous.
            first_session = speaker.evaluate("captionsDebug.session")
            finals_before = speaker.evaluate("captionsDebug.finals.length")
            page_side, server_side = listen_sockets[-1]
            page_side.close(code=1011, reason="test: connection cut")
            server_side.close()
            expect(speaker.locator("#state")).to_have_attribute("data-state", "live", timeout=20_000)
            # (a function, not an expression string: the page's CSP forbids eval)
            speaker.wait_for_function("first => captionsDebug.session !== first", arg=first_session, timeout=20_000)
            states = speaker.evaluate("captionsDebug.stateLog")
            assert "reconnecting" in states[states.index("live"):], states
            assert len(listen_sockets) == 2
            assert speaker.evaluate("captionsDebug.session") != first_session
            assert [("resume" in s, s.get("resume")) for s in starts] == [(False, None), (True, first_session),
                                                                           (False, None)], starts
            assert isinstance(starts[1]["offset"], int) and starts[1]["offset"] > 0, starts[1]
            assert [m["type"] for m in replies[:2]] == ["error", "ready"], replies[:3]
            assert replies[0]["code"] == "resume_refused" and replies[1]["session"] != first_session
            assert speaker.evaluate("captionsDebug.resumes") == 0
            base_s = speaker.evaluate("captionsDebug.sessionBase / captionsDebug.rate")
            assert base_s > 1.0  # the new session starts where the capture was, not at 0
            # some speech into the new session before the stop: 1.5 s more captured (a function: the CSP forbids eval)
            speaker.wait_for_function("n => captionsDebug.captured >= n",
                                      arg=speaker.evaluate("captionsDebug.captured") + 1.5 * rate, timeout=20_000)

            # Stop: the open window's final comes, then `end`; the page settles in "stopped".
            speaker.get_by_role("button", name="Stop captioning").click()
            expect(speaker.locator("#state")).to_have_attribute("data-state", "stopped", timeout=30_000)
            expect(speaker.get_by_role("button", name="Start captioning")).to_be_enabled()
            finals = speaker.evaluate("captionsDebug.finals")
            assert [f["start"] for f in finals] == sorted(f["start"] for f in finals)
            for f in finals[finals_before:]:
                if f["session"] != first_session:
                    assert f["start"] >= base_s - 1e-3, (f, base_s)
        finally:
            browser.close()

    for name in ("speaker.png", "room.png", "overlay.png", "overlay-on-dark.png"):
        path = ARTIFACTS / name
        assert path.is_file() and path.stat().st_size > 1000, path
    assert_transparent_corner(ARTIFACTS / "overlay.png")
    relevant = [e for e in errors if "favicon" not in e]
    assert not relevant, relevant
    print(f"browser test took {time.monotonic() - t0:.1f} s")


def overlay_on_dark(context, png: Path, out: Path) -> None:
    """The transparent overlay screenshot over a dark background, as OBS would show it over a video."""
    from base64 import b64encode

    page = context.new_page()
    page.set_viewport_size({"width": 1100, "height": 720})
    data = b64encode(png.read_bytes()).decode()
    page.set_content("<body style='margin:0;background:linear-gradient(135deg,#1d2b3a,#3b2f4a)'>"
                     f"<img alt='' src='data:image/png;base64,{data}'></body>")
    page.screenshot(path=str(out))
    page.close()


def assert_transparent_corner(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as img:
        assert img.mode == "RGBA"
        assert img.getpixel((2, 2))[3] == 0  # the page itself is transparent; only the caption box is drawn
