"""Speaker labels on the web pages, end to end: Debian's chromium driven by Playwright, two real voices as the
microphone, the embedded Whisper tiny.en with diarization behind a real server (the suite's `cpu_url`).

The microphone plays the LJ Speech reader (lj001_0001), 1 s of silence, JFK (jfk_16k), 1 s, the LJ reader again
(lj001_0005), 1 s. The speaker page streams it into a room with "Label speakers" on (`diarize` in `start`); the
room page and the OBS overlay watch the room. The test checks that:
- the viewers show the two voices on separate lines, each under its own label, with the words of its clip
  ("fellow Americans" under JFK's, "printing" under the reader's);
- the speaker page lists the labels, and renaming the reader's label "Priya" there is answered; the page relabels its
  own lines at once, and the viewers relabel the reader's earlier lines when her next final (lj001_0005, which is
  said after the rename) carries the new name; JFK's lines keep their label;
- the page's SRT and VTT downloads are the server's own exports (voices as "Priya: " and <v Priya>); the page's own
  writer, used when the server cannot be reached, writes the same files from the page's finals.
The reader is the one renamed because she speaks again within one pass of the file: a rename reaches viewers only
on a later final of that voice. Screenshots: artifacts/browser/room-speakers.png, overlay-speakers.png.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import soundfile as sf

from .support.audio import RATE, two_voices
from .support.browser import ARTIFACTS, CHROMIUM, browser_args, needs_chromium, record_errors
from .support.servers import http_base

ROOM = "e2e-speakers"
STREAM_LABEL = "Ada"  # the stream's label in the room (not a voice's)
NAME = "Priya"
WAIT_MS = 90_000  # a busy 2-core machine transcribes the 32 s file in real time, with some lag

pytestmark = needs_chromium

# The runs of voices a page shows: each line's voice label (data-label), the name shown, its text, and where it is.
RUNS_JS = """selector => [...document.querySelectorAll(selector)].map(node => ({
    label: node.dataset.label || "", who: (node.querySelector(".who")?.textContent || "").replace(/:\\s*$/, ""),
    text: node.querySelector(".text")?.textContent ??
        [...node.querySelectorAll(".final, .partial")].map(span => span.textContent).join(" "),
    top: node.getBoundingClientRect().top}))"""


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> Path:
    audio, _ = two_voices()  # lj001_0001, 1 s, jfk_16k, 1 s, lj001_0005, 1 s (16 kHz, soxr)
    path = tmp_path_factory.mktemp("mic") / "two_voices.wav"
    sf.write(path, audio, RATE, subtype="PCM_16")
    return path


def squeeze(text: str) -> str:
    return re.sub(r"[^a-z ]", "", text.lower())


def test_voices_on_room_and_overlay_and_rename(cpu_url, mic_wav):
    from playwright.sync_api import expect, sync_playwright

    t0 = time.monotonic()
    base = http_base(cpu_url)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    starts: list[dict] = []  # the `start` messages the speaker page sent
    watched: list[dict] = []  # the finals the room page received

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=browser_args(mic_wav))
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 760}, accept_downloads=True)
            overlay = record_errors(context.new_page(), errors, "overlay")
            overlay.set_viewport_size({"width": 1280, "height": 360})
            overlay.goto(f"{base}/overlay?room={ROOM}&fade=0&lines=3&size=30")
            room = record_errors(context.new_page(), errors, "room")
            room.on("websocket", lambda ws: ws.on("framereceived", lambda p: watched.append(json.loads(p))))
            room.goto(f"{base}/room/{ROOM}")
            speaker = record_errors(context.new_page(), errors, "speaker")
            speaker.on("websocket", lambda ws: ws.on(
                "framesent", lambda p: starts.append(json.loads(p)) if isinstance(p, str) and '"start"' in p else None))
            speaker.goto(f"{base}/?room={ROOM}&speaker={STREAM_LABEL}")
            expect(overlay.locator("body")).to_have_attribute("data-state", "live", timeout=15_000)
            expect(room.locator("#state")).to_have_attribute("data-state", "live", timeout=15_000)

            speaker.get_by_label("Label speakers").check()
            speaker.get_by_role("button", name="Start captioning").click()
            expect(speaker.locator("#state")).to_have_attribute("data-state", "live", timeout=20_000)
            assert starts and starts[0].get("diarize") is True, starts
            expect(speaker.get_by_label("Label speakers")).to_be_disabled()  # fixed for the run
            assert not speaker.locator("#notice").is_visible(), speaker.locator("#notice").text_content()

            # Both voices on the room page: JFK's first words under one label, the reader's under another.
            room_runs = "#transcript .run"
            expect(room.locator(room_runs, has_text=re.compile("rinting"))).not_to_have_count(0, timeout=WAIT_MS)
            expect(room.locator(room_runs, has_text=re.compile("Americans"))).not_to_have_count(0, timeout=WAIT_MS)
            runs = room.evaluate(RUNS_JS, room_runs)
            lj = next(r["label"] for r in runs if "rinting" in r["text"])
            jfk = next(r["label"] for r in runs if "Americans" in r["text"])
            assert lj and jfk and lj != jfk, runs
            assert re.fullmatch(r"Speaker \d+", lj) and re.fullmatch(r"Speaker \d+", jfk), runs
            by_label = {label: " ".join(squeeze(r["text"]) for r in runs if r["label"] == label) for label in (lj, jfk)}
            assert "fellow americans" in by_label[jfk] and "printing" not in by_label[jfk], by_label
            assert "printing" in by_label[lj] and "americans" not in by_label[lj], by_label
            assert all(r["who"] == r["label"] for r in runs if r["label"]), runs  # not renamed yet: the label shows
            # Separate lines: a new voice's line starts below the previous one.
            lines = [r for r in runs if r["label"] in (lj, jfk)]
            assert all(b["top"] > a["top"] for a, b in zip(lines, lines[1:])), lines
            expect(room.locator("#speakers")).to_contain_text(STREAM_LABEL)
            expect(room.locator("#speakers")).to_contain_text(jfk)

            # The overlay: a line per voice, each with its name.
            jfk_line = overlay.locator(f'#captions p[data-label="{jfk}"]').first
            expect(jfk_line).to_contain_text("Americans")
            expect(jfk_line.locator(".who.voice")).to_have_text(f"{jfk}: ")
            shown = [r["label"] for r in overlay.evaluate(RUNS_JS, "#captions p")]
            assert lj in shown and shown.index(lj) < shown.index(jfk), shown  # the reader's line, then JFK's
            overlay.screenshot(path=str(ARTIFACTS / "overlay-speakers.png"), omit_background=True)

            # The speaker page: its own lines by voice, and the Speakers list with both labels.
            expect(speaker.locator(f'#captions .run[data-label="{jfk}"]').first).to_contain_text("Americans")
            voices = speaker.locator("#voice-list li")
            expect(speaker.locator(f'#voice-list li[data-label="{lj}"]')).to_be_visible()
            expect(speaker.locator(f'#voice-list li[data-label="{jfk}"]')).to_be_visible()
            labels = [voices.nth(i).get_attribute("data-label") for i in range(voices.count())]
            assert sorted(labels) == sorted({lj, jfk}), labels

            # Rename the reader's voice: answered; the page relabels its own lines at once.
            row = speaker.locator(f'#voice-list li[data-label="{lj}"]')
            row.get_by_label(f"Name for {lj}").fill(NAME)
            row.get_by_role("button", name="Rename").click()
            expect(speaker.locator("#rename-status")).to_have_text(f"{lj} is now “{NAME}” on new captions.")
            expect(row).to_contain_text(f"shown as “{NAME}”")
            expect(speaker.locator(f'#captions .run[data-label="{lj}"] .who').first).to_have_text(f"{NAME}:")
            renamed_at = len(watched)

            # The viewers: the reader's next final carries the name, and her earlier lines are relabelled with it.
            later = room.locator(room_runs, has_text=re.compile("invention"))
            expect(later.first).to_contain_text(f"{NAME}:", timeout=WAIT_MS)
            runs = room.evaluate(RUNS_JS, room_runs)
            assert all(r["who"] == NAME for r in runs if r["label"] == lj), runs
            assert all(r["who"] == jfk for r in runs if r["label"] == jfk), runs
            assert any("rinting" in r["text"] and r["who"] == NAME for r in runs), runs  # the earlier line
            carried = [w for f in watched[renamed_at:] if f.get("type") == "final" for w in f.get("words") or ()]
            assert any(w.get("speaker") == lj and w.get("name") == NAME for w in carried), carried
            expect(room.locator("#speakers")).to_contain_text(NAME)
            expect(overlay.locator(f'#captions p[data-label="{lj}"] .who.voice').last).to_have_text(f"{NAME}: ",
                                                                                               timeout=WAIT_MS)
            assert all(r["who"] == NAME for r in overlay.evaluate(RUNS_JS, "#captions p") if r["label"] == lj)
            room.screenshot(path=str(ARTIFACTS / "room-speakers.png"))

            # Stop (every final is in), then the downloads: the server's own exports of the session.
            speaker.get_by_role("button", name="Stop captioning").click()
            expect(speaker.locator("#state")).to_have_attribute("data-state", "stopped", timeout=30_000)
            session = speaker.evaluate("captionsDebug.session")
            served = {fmt: context.request.get(f"{base}/v1/transcripts/{session}.{fmt}").text()
                      for fmt in ("srt", "vtt", "txt", "json")}
            assert f"\n{NAME}: " in served["srt"] and f"\n{jfk}: " in served["srt"], served["srt"]
            assert f"<v {NAME}>" in served["vtt"], served["vtt"]
            downloaded = {fmt: download(speaker, fmt.upper()) for fmt in ("srt", "vtt", "txt")}
            assert downloaded == {fmt: served[fmt] for fmt in ("srt", "vtt", "txt")}
            # The page's own writer (cues.js, a port of caption_formats) writes the server's files from the same
            # finals; and it is what the page falls back on when the server cannot be reached.
            records = json.loads(served["json"])["finals"]
            ported = speaker.evaluate("""async finals => {
                const m = await import("/js/common.js");
                return {srt: m.toSrt(finals), vtt: m.toVtt(finals), txt: m.toTxt(finals)};
            }""", records)
            assert ported["srt"] == served["srt"] and ported["vtt"] == served["vtt"], ported
            speaker.route("**/v1/transcripts/**", lambda r: r.abort())
            assert download(speaker, "SRT") == served["srt"]
            assert download(speaker, "TXT") == ported["txt"]
            speaker.unroute("**/v1/transcripts/**")
        finally:
            browser.close()

    for name in ("room-speakers.png", "overlay-speakers.png"):
        assert (ARTIFACTS / name).stat().st_size > 1000, name
    # The aborted transcript requests (the fallback above) are the only errors expected.
    relevant = [e for e in errors if "favicon" not in e and "net::ERR_FAILED" not in e]
    assert not relevant, relevant
    print(f"speakers browser test took {time.monotonic() - t0:.1f} s")


def download(page, button: str) -> str:
    with page.expect_download(timeout=15_000) as info:
        page.get_by_role("button", name=button).click()
    return Path(info.value.path()).read_text(encoding="utf-8")
