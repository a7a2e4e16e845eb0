"""The file client's SRT and WebVTT writers, read back by independent validating parsers (`srt`, `webvtt-py`)."""
import html
from datetime import timedelta

import srt
import webvtt
from hypothesis import given, settings
from hypothesis import strategies as st

from caption_formats import to_srt, to_txt, to_vtt

# Finals as the server sends them, with what real streams produce: empty windows of noise, a stream over an
# hour long, texts with stray whitespace, non-ASCII words, and characters that are markup in WebVTT.
FINALS = [
    {"type": "final", "segment": 0, "start": 0.31, "end": 4.87, "text": "and so my fellow americans"},
    {"type": "final", "segment": 1, "start": 4.87, "end": 6.02, "text": ""},
    {"type": "final", "segment": 2, "start": 7.5, "end": 9.0, "text": "  ask not\twhat \n your\u00a0country  "},
    {"type": "final", "segment": 3, "start": 12.0, "end": 14.25, "text": "naïve café, Zürich — 東京 🎤"},
    {"type": "final", "segment": 4, "start": 15.0, "end": 15.0, "text": "zero length"},
    {"type": "final", "segment": 5, "start": 20.0, "end": 21.0, "text": "AT&T said 3 < 4 --> <b>ok</b>"},
    {"type": "final", "segment": 6, "start": 3599.9996, "end": 3605.5, "text": "past the hour"},
    {"type": "final", "segment": 7, "start": 36000.123, "end": 36009.9994, "text": "ten hours\u2028in"},
]


def expected(finals: list[dict]) -> list[tuple[timedelta, timedelta, str]]:
    """Cue times rounded to the millisecond, text with runs of whitespace made one space; empty texts dropped."""
    out = []
    for f in finals:
        text = " ".join(f["text"].split())
        if text:
            start = timedelta(milliseconds=round(f["start"] * 1000))
            out.append((start, max(timedelta(milliseconds=round(f["end"] * 1000)), start), text))
    return out


def parse_srt(text: str) -> list[srt.Subtitle]:
    return list(srt.parse(text, ignore_errors=False))


def parse_vtt(text: str) -> list[webvtt.Caption]:
    return list(webvtt.from_string(text, strict=True))


def vtt_time(caption: webvtt.Caption, which: str) -> timedelta:
    return timedelta(milliseconds=getattr(caption, f"{which}_time").in_milliseconds())


def check_srt(finals: list[dict]) -> None:
    subs = parse_srt(to_srt(finals))
    assert [s.index for s in subs] == list(range(1, len(subs) + 1))
    cues = expected(finals)
    assert [s.content for s in subs] == [text for _, _, text in cues]
    for sub, (start, end, _) in zip(subs, cues):
        assert sub.start == start and sub.end >= end and sub.end > sub.start


def check_vtt(finals: list[dict]) -> None:
    text = to_vtt(finals)
    assert text.startswith("WEBVTT\n\n")
    captions = parse_vtt(text)
    cues = expected(finals)
    # A player decodes the character references; the raw text must carry them escaped.
    assert [html.unescape(c.raw_text) for c in captions] == [t for _, _, t in cues]
    for caption, (start, end, _) in zip(captions, cues):
        assert vtt_time(caption, "start") == start
        assert vtt_time(caption, "end") >= end and vtt_time(caption, "end") > start


def test_srt_of_realistic_finals_parses_back():
    check_srt(FINALS)


def test_vtt_of_realistic_finals_parses_back():
    check_vtt(FINALS)


def test_times_past_an_hour_are_written_in_hours():
    assert "01:00:00,000 --> 01:00:05,500" in to_srt(FINALS)
    assert "10:00:00.123 --> 10:00:09.999" in to_vtt(FINALS)


def test_vtt_escapes_markup_so_the_cue_survives():
    cue = parse_vtt(to_vtt([{"start": 1.0, "end": 2.0, "text": "a --> b <i>c</i> & d"}]))
    assert len(cue) == 1 and html.unescape(cue[0].raw_text) == "a --> b <i>c</i> & d"
    assert "<i>" not in cue[0].raw_text and "-->" not in cue[0].raw_text


def test_no_text_gives_empty_but_valid_files():
    silent = [{"start": 0.0, "end": 1.0, "text": ""}, {"start": 1.0, "end": 2.0, "text": " \n "}]
    assert parse_srt(to_srt(silent)) == [] and parse_srt(to_srt([])) == []
    assert parse_vtt(to_vtt(silent)) == [] and to_vtt([]) == "WEBVTT\n\n"
    assert to_txt(silent) == ""


def test_txt_has_one_line_per_non_empty_final():
    assert to_txt(FINALS).splitlines() == [t for _, _, t in expected(FINALS)]


# Printable text of any script, plus whitespace of every kind; not control characters, which no model emits.
words = st.text(st.characters(blacklist_categories=("Cc", "Cs"), whitelist_characters=" \t\n\r\u00a0\u2028"),
                max_size=40)
finals_lists = st.lists(st.fixed_dictionaries({
    "start": st.floats(0, 200_000, allow_nan=False), "length": st.floats(0, 10, allow_nan=False), "text": words,
}).map(lambda f: {"start": f["start"], "end": f["start"] + f["length"], "text": f["text"]}), max_size=6)


@settings(max_examples=200, deadline=None)
@given(finals_lists)
def test_any_finals_make_files_that_parse_back(finals):
    check_srt(finals)
    check_vtt(finals)
