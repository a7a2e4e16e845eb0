"""The caption writers (SRT, WebVTT, text), read back by independent validating parsers (`srt`, `webvtt-py`): old
finals without words, one cue each as before; finals with word times, cut into cues of at most 2 lines of 42
characters at word times, a new cue at each change of voice, voices as WebVTT voice spans and SRT prefixes."""
import html
import itertools
import math
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


def check_settled(finals: list[dict]) -> None:
    """Any finals without words, one stream: a cue each, at the final's times, except that cues never overlap the
    next cue (the earlier one is clipped to the next start; cues starting in the same ms move 1 ms apart)."""
    cues = expected(finals)
    for subs in ([(s.start, s.end, s.content) for s in parse_srt(to_srt(finals))],
                 [(vtt_time(c, "start"), vtt_time(c, "end"), html.unescape(c.raw_text))
                  for c in parse_vtt(to_vtt(finals))]):
        assert [text for _, _, text in subs] == [text for _, _, text in cues]
        ms = timedelta(milliseconds=1)
        for i, ((start, end, _), (want_start, want_end, _)) in enumerate(zip(subs, cues)):
            assert want_start <= start <= want_start + i * ms and end > start
            later = [s for s, _, _ in subs[i + 1:i + 2] if s >= start]
            assert end <= max(want_end, start + ms) and (not later or end <= later[0])
            assert end >= min([want_end] + later)


@settings(max_examples=200, deadline=None)
@given(finals_lists)
def test_any_finals_make_files_that_parse_back(finals):
    check_settled(finals)


# --- finals with word times: cues cut at the words ---------------------------------------------------------

# The opening of Sense and Sensibility, 30 words read in 10 s: as the server sends them, the words' times are on
# the stream's clock, punctuation attached to the word.
AUSTEN = ("The family of Dashwood had long been settled in Sussex. Their estate was large, and their residence was at "
          "Norland Park, in the centre of their property, where they lived.")


def said(sentence: str, start: float, end: float, name: str | None = None, label: str | None = None) -> list[dict]:
    """Words of a sentence read from `start` to `end` at a steady pace: each word's length in proportion to its
    letters, a short gap between words, a longer one after a comma (0.3 s) or a sentence (0.6 s), as a reader
    pauses. `name`: the voice (with `label`, its stable label), as the server marks words when it diarizes."""
    words = sentence.split()
    gaps = [0.6 if w[-1] in ".?!" else 0.3 if w[-1] in ",;:" else 0.05 for w in words[:-1]] + [0.0]
    per_letter = (end - start - sum(gaps)) / sum(len(w) + 2 for w in words)
    out, t = [], start
    for word, gap in zip(words, gaps):
        length = (len(word) + 2) * per_letter
        out.append({"word": word, "start": round(t, 3), "end": round(t + length, 3), "probability": 0.9})
        if name:
            out[-1].update(speaker=label or name, name=name)
        t += length + gap
    return out


def final(words: list[dict], **extra) -> dict:
    return {"type": "final", "start": round(words[0]["start"] - 0.3, 3), "end": round(words[-1]["end"] + 0.4, 3),
            "text": " ".join(w["word"] for w in words), "words": words, **extra}


def ms(seconds: float) -> timedelta:
    return timedelta(milliseconds=round(seconds * 1000))


def check_cues(finals: list[dict]) -> list[tuple[str | None, list[str]]]:
    """Both files of word-timed finals against their words: the same cues in SRT and WebVTT, each of 1 or 2 lines
    of at most 42 characters (an SRT "Name: " prefix included), holding the words in order, all of one voice
    (WebVTT's voice span, SRT's prefix); from its first word's start to at least its last word's end unless the
    next cue starts first; never overlapping the next. Returns each cue's voice and the lines shown."""
    words = [(w, w.get("name") or f.get("speaker")) for f in finals for w in f["words"]]
    subs, captions = parse_srt(to_srt(finals)), parse_vtt(to_vtt(finals))
    assert len(subs) == len(captions)
    shown_cues, i = [], 0
    for n, (sub, caption) in enumerate(zip(subs, captions)):
        assert (sub.start, sub.end) == (vtt_time(caption, "start"), vtt_time(caption, "end"))
        voice = html.unescape(caption.voice) if caption.voice else None
        lines = sub.content.split("\n")
        assert 1 <= len(lines) <= 2 and all(len(line) <= 42 for line in lines), lines
        prefix = f"{voice}: " if voice else ""
        assert lines[0].startswith(prefix)
        shown = [lines[0][len(prefix):]] + lines[1:]
        assert html.unescape(caption.text).split("\n") == shown  # the text without the voice span's tags
        cue_words = " ".join(shown).split(" ")
        mine, i = words[i:i + len(cue_words)], i + len(cue_words)
        assert [w["word"] for w, _ in mine] == cue_words and {v for _, v in mine} == {voice}
        nxt = subs[n + 1].start if n + 1 < len(subs) else timedelta.max
        assert sub.start == ms(mine[0][0]["start"]) and sub.end > sub.start
        assert min(ms(mine[-1][0]["end"]), nxt) <= sub.end <= nxt
        shown_cues.append((voice, shown))
    assert i == len(words)  # every word, once
    return shown_cues


def test_a_long_final_is_cut_at_word_times_into_cues_of_two_lines():
    words = said(AUSTEN, 0.4, 10.4)
    assert len(words) == 30
    cues = check_cues([final(words)])
    assert len(cues) >= 3 and all(voice is None for voice, _ in cues)
    # Cut where a reader expects it: the first cue ends with its sentence, the second after a comma.
    assert cues[0][1] == ["The family of Dashwood had", "long been settled in Sussex."]
    assert cues[1][1][0].startswith("Their estate") and cues[1][1][-1].endswith(",")
    assert to_txt([final(words)]) == AUSTEN + "\n"


def test_a_change_of_voice_inside_a_final_starts_a_new_cue():
    words = (said("Shall we move the launch to Friday?", 3.0, 5.1, "Priya", "Speaker 1")
             + said("Yes, Friday works for me.", 5.6, 7.0, "Speaker 2"))
    finals = [final(words, speaker="Ana")]  # the room's stream speaker: the words' names come first
    cues = check_cues(finals)
    assert cues == [("Priya", ["Shall we move the launch to Friday?"]), ("Speaker 2", ["Yes, Friday works for me."])]
    vtt = to_vtt(finals)
    assert "<v Priya>Shall we move the launch to Friday?</v>" in vtt and "<v Speaker 2>Yes, Friday" in vtt
    assert [c.voice for c in parse_vtt(vtt)] == ["Priya", "Speaker 2"]
    assert [s.content for s in parse_srt(to_srt(finals))] == ["Priya: Shall we move the launch to Friday?",
                                                             "Speaker 2: Yes, Friday works for me."]
    assert to_txt(finals) == "Priya: Shall we move the launch to Friday?\nSpeaker 2: Yes, Friday works for me.\n"


def test_overlapping_voices_give_cues_that_do_not_overlap():
    # Speaker 2 starts before Priya's last word ends (people talk over each other): Priya's cue ends there.
    words = (said("We could ship on Friday.", 1.0, 2.5, "Priya") + said("Or Monday.", 2.3, 3.0, "Speaker 2"))
    subs = parse_srt(to_srt([final(words)]))
    assert [(s.start, s.end) for s in subs] == [(ms(1.0), ms(2.3)), (ms(2.3), ms(3.3))]  # 1 s to read it
    check_cues([final(words)])


def test_a_short_cue_stays_up_to_be_read_but_not_over_the_next():
    yes = said("Yes.", 0.5, 0.8, "Priya")
    alone = parse_srt(to_srt([final(yes), final(said("Good.", 5.0, 5.4, "Priya"))]))
    assert (alone[0].start, alone[0].end) == (ms(0.5), ms(1.5))  # 1 s at least
    close = parse_srt(to_srt([final(yes), final(said("Good.", 1.2, 1.6, "Speaker 2"))]))
    assert close[0].end == close[1].start == ms(1.2)


def test_voice_names_are_escaped_in_webvtt_and_kept_in_srt():
    name = 'Dr. <Ana> & "Bo" -->'
    finals = [final(said("3 < 4 & we agree.", 1.0, 3.0, name))]
    check_cues(finals)
    raw = parse_vtt(to_vtt(finals))[0].raw_text
    assert raw == '<v Dr. &lt;Ana&gt; &amp; "Bo" --&gt;>3 &lt; 4 &amp; we agree.</v>'
    assert parse_srt(to_srt(finals))[0].content == f"{name}: 3 < 4 & we agree."
    assert to_txt(finals) == f"{name}: 3 < 4 & we agree.\n"


def test_old_records_keep_one_cue_each_with_the_room_speaker_as_voice():
    old = [{"start": 1.0, "end": 2.5, "text": "good morning", "speaker": "Ada", "session": "0123456789ab"},
           {"start": 2.5, "end": 3.0, "text": "", "speaker": "Ada", "words": []},
           {"start": 4.0, "end": 5.0, "text": "no voice here", "words": []}]
    assert [(s.start, s.end, s.content) for s in parse_srt(to_srt(old))] == [
        (ms(1.0), ms(2.5), "Ada: good morning"), (ms(4.0), ms(5.0), "no voice here")]
    assert [(c.voice, c.text) for c in parse_vtt(to_vtt(old))] == [("Ada", "good morning"), (None, "no voice here")]
    assert to_txt(old) == "Ada: good morning\nno voice here\n"


def test_a_long_final_without_words_shares_its_time_by_characters():
    subs = parse_srt(to_srt([{"start": 20.0, "end": 30.0, "text": AUSTEN}]))
    assert len(subs) >= 3 and " ".join(s.content.replace("\n", " ") for s in subs) == AUSTEN
    assert subs[0].start == ms(20.0) and subs[-1].end == ms(30.0)
    for sub, nxt in itertools.pairwise(subs):
        assert sub.end == nxt.start  # one after the other, no gap, no overlap
    for sub in subs:
        lines = sub.content.split("\n")
        assert len(lines) <= 2 and all(len(line) <= 42 for line in lines)
        share = (len(sub.content) + 1) / (len(AUSTEN) + 1)
        assert math.isclose((sub.end - sub.start).total_seconds(), 10.0 * share, abs_tol=0.002)


# Words as a recognizer gives them: no spaces inside, increasing times in ms, any voice (or none) in any order.
word_texts = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1, max_size=12)
voices = st.sampled_from([None, "Priya", "Speaker 2", "<Ana & Bo>"])
timed_words = st.lists(st.tuples(word_texts, voices, st.integers(0, 1500), st.integers(1, 900)), min_size=1,
                       max_size=40)


@settings(max_examples=150, deadline=None)
@given(st.lists(timed_words, min_size=1, max_size=4))
def test_any_word_timed_finals_make_cues_that_parse_back(finals_words):
    finals, t = [], 0
    for spec in finals_words:
        words = []
        for text, voice, gap, length in spec:
            t += gap
            words.append({"word": text, "start": t / 1000, "end": (t + length) / 1000, "probability": 0.5,
                          **({"speaker": voice, "name": voice} if voice else {})})
            t += length
        finals.append(final(words))
    check_cues(finals)
