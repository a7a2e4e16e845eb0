"""The "This meeting" panel (web/js/ask.js) in a real browser: Debian's chromium driven by Playwright, a real server
with the embedded Whisper tiny.en backend, so the ask API runs in extractive mode.

Real speech is streamed into a room first; the room page (/room/NAME) then gets it as its backlog. The test checks
that the page's summary is the API's, that a question typed into the ask box (Enter submits) gets the API's answer
with citation links, that clicking the first one scrolls to and highlights the caption line it cites (id
line-SESSION-SEGMENT, the same text), that a cited line not on the page shows the cited text instead, that a room
with nothing said says so, and that the speaker page (/?room=NAME) shows the same panel, with no console errors
(CSP violations included) on either page.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request

import pytest

from client.stream import stream_audio

from .support.audio import RATE, join_with_silence
from .support.browser import CHROMIUM, browser_args, needs_chromium, record_errors
from .support.servers import http_base

pytestmark = needs_chromium

ROOM = "ask-demo"  # on the shared server (cpu_url): a room no other test uses
QUESTION = "What did the speaker ask Americans to do?"


@pytest.fixture(scope="module")
def meeting(cpu_url):
    """The suite's Whisper server (its transcripts in a folder of this run), its room ROOM holding the clips'
    finals; yields (its http base URL, the session, its finals with text)."""
    t0 = time.monotonic()
    audio = join_with_silence(["jfk_16k.wav", "ldc93s1.wav", "lj001_0005.wav"], [1.5, 1.5, 1.0])[0]
    result = asyncio.run(stream_audio(audio, RATE, cpu_url, speed=0, start_extra={"room": ROOM, "speaker": "Ann"}))
    print(f"room streamed in {time.monotonic() - t0:.1f} s")
    yield http_base(cpu_url), result.ready["session"], [f for f in result.finals if f["text"].strip()]


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)


def test_summary_ask_and_citations_in_chromium(meeting):
    from playwright.sync_api import expect, sync_playwright

    base, session, finals = meeting
    assert len(finals) >= 3, finals
    t0 = time.monotonic()
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=browser_args())
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 560})

            def watch(page, name):
                return record_errors(page, errors, name)

            room = watch(context.new_page(), "room")
            room.goto(f"{base}/room/{ROOM}")
            # Every final of the backlog, each with its anchor id.
            lines = room.locator("#transcript li.final")
            expect(lines).to_have_count(len(finals), timeout=15_000)
            assert [lines.nth(i).get_attribute("id") for i in range(len(finals))] == \
                [f"line-{session}-{f['segment']}" for f in finals]

            # The summary panel shows the API's summary, labelled as extractive.
            expect(room.locator("#summary-text")).not_to_be_empty(timeout=30_000)
            summary = api(base, f"/v1/rooms/{ROOM}/summary")
            assert summary["mode"] == "extractive" and summary["summary"]
            expect(room.locator("#summary-text")).to_have_text(summary["summary"], timeout=15_000)
            assert room.locator("#summary-text").text_content() == summary["summary"]
            expect(room.locator("#summary-title")).to_have_text("Extractive summary: the meeting's most central lines")
            expect(room.locator("#summary-cites a.cite")).to_have_count(len(summary["citations"]))

            # Ask: type the question, Enter submits; the answer (aria-live) comes with its citation links.
            box = room.get_by_label("Ask about this meeting")
            box.fill(QUESTION)
            box.press("Enter")
            answer = room.locator("#answer")
            expect(answer).to_have_attribute("aria-live", "polite")
            expect(answer).to_have_attribute("data-state", "done", timeout=30_000)
            expect(room.locator("#answer-mode")).to_contain_text("Extractive answer")
            reply = api(base, f"/v1/rooms/{ROOM}/ask", {"question": QUESTION})
            assert reply["mode"] == "extractive" and reply["citations"], reply
            assert room.locator("#answer-text").text_content() == reply["answer"]
            links = room.locator("#answer-cites a.cite")
            expect(links).to_have_count(len(reply["citations"]))
            first = reply["citations"][0]
            target = f"line-{first['session']}-{first['segment']}"
            assert links.first.get_attribute("href") == f"#{target}"
            assert links.first.text_content() == f"{first['start']:.1f} s"

            # Clicking it scrolls to the cited caption line and highlights it for a moment.
            room.locator("#transcript").evaluate("list => { list.parentElement.scrollTop = 0; }")
            links.first.click()
            line = room.locator(f"#{target}")
            expect(line).to_have_class(re.compile(r"\bcited\b"))
            expect(line).to_be_in_viewport()
            expect(line).to_be_focused()
            assert line.locator(".text").text_content() == first["text"]
            expect(line).not_to_have_class(re.compile(r"\bcited\b"), timeout=5_000)

            # A cited line that is not on the page: the link says so, with the cited text.
            second = links.nth(1)
            room.evaluate("id => document.getElementById(id).remove()", second.get_attribute("href")[1:])
            second.click()
            expect(room.locator("#answer-cites .missing")).to_contain_text(reply["citations"][1]["text"])

            # A room with nothing said yet says so (its 404s are expected console noise, nothing else is).
            empty = watch(context.new_page(), "empty")
            empty.goto(f"{base}/room/nobody-here")
            expect(empty.locator("#summary-note")).to_contain_text("Nothing said yet", timeout=15_000)
            box = empty.get_by_label("Ask about this meeting")
            box.fill("Anything?")
            empty.get_by_role("button", name="Ask").click()
            expect(empty.locator("#answer-text")).to_contain_text("Nothing said yet", timeout=15_000)
            empty.close()

            # The speaker page, in the room: the same panel. It asks for the summary once it knows the room has a
            # transcript (its own first final, or an answer), so that it never polls into 404s.
            speaker = watch(context.new_page(), "speaker")
            speaker.goto(f"{base}/?room={ROOM}&speaker=Ann")
            box = speaker.get_by_label("Ask about this meeting")
            expect(box).to_be_visible()
            expect(speaker.get_by_role("button", name="Ask")).to_be_visible()
            expect(speaker.locator("#summary-note")).to_contain_text("Nothing said yet")
            box.fill(QUESTION)
            box.press("Enter")
            expect(speaker.locator("#answer")).to_have_attribute("data-state", "done", timeout=30_000)
            assert speaker.locator("#answer-text").text_content() == reply["answer"]
            expect(speaker.locator("#answer-cites a.cite")).to_have_count(len(reply["citations"]))
            expect(speaker.locator("#summary-text")).to_have_text(summary["summary"], timeout=15_000)
            speaker.goto(f"{base}/")
            expect(speaker.locator("#meeting")).to_be_hidden()
            expect(speaker.get_by_role("button", name="Start captioning")).to_be_visible()
        finally:
            browser.close()

    relevant = [e for e in errors if not (e.startswith("empty: ") and "404" in e)]
    assert not relevant, relevant
    assert any(e.startswith("empty: ") for e in errors), errors  # (the filter above is not vacuous)
    print(f"browser ask test took {time.monotonic() - t0:.1f} s")
