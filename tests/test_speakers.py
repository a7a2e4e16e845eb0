"""Live speaker labels (server/speakers) on real speech with the real GE2E encoder and Whisper tiny.en's word
timings: two voices in one window get two labels that change where the voices do; a voice keeps its label across
windows and recordings; a beep, white noise and a short "yes" found no speaker; a tracker carried through JSON goes
on with the same labels; the Diarizer embeds in its own thread, with the event loop free."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest

from server.backends.transcript import Word
from server.speakers import Diarizer, SpeakerOptions, SpeakerTracker, label_words
from server.speakers import encoder as encoder_module
from server.speakers.encoder import Encoder

from .support.audio import RATE, load_16k, trim_silence

JFK_CUT_S = 4.8  # jfk_16k.wav: "And so my fellow Americans, ask not" | "what your country can do for you, ..."


@pytest.fixture(scope="module")
def encoder():
    return Encoder()


@pytest.fixture(scope="module")
def whisper():
    from server.backends.whisper import WhisperBackend

    return WhisperBackend()


def words_of(whisper, audio: np.ndarray) -> tuple[Word, ...]:
    """Whisper's words for one window, timed from its first sample."""
    words = whisper.transcribe([audio], timed=[True])[0].words
    assert words, "Whisper heard no words"
    return words


def joined(*clips: np.ndarray, gap_s: float = 0.4) -> tuple[np.ndarray, list[float]]:
    """Clips one after another with short pauses (one VAD window: the segmenter's hangover is 0.6 s); returns the
    audio and where each clip starts, in seconds."""
    parts, starts, pos = [], [], 0
    for clip in clips:
        starts.append(pos / RATE)
        parts += [clip, np.zeros(int(gap_s * RATE), np.float32)]
        pos += len(clip) + int(gap_s * RATE)
    return np.concatenate(parts), starts


def test_two_voices_in_one_window_get_two_labels_changing_where_the_voices_do(encoder, whisper):
    lj, jfk = trim_silence(load_16k("lj001_0001.wav")), trim_silence(load_16k("jfk_16k.wav"))
    audio, (_, change) = joined(lj, jfk)
    words = words_of(whisper, audio)
    tracker = SpeakerTracker()
    labelled = label_words(words, tracker.track(audio, words, encoder))

    assert tracker.labels == ("Speaker 1", "Speaker 2")
    truth = ["Speaker 1" if (w.start + w.end) / 2 < change else "Speaker 2" for w in labelled]
    right = sum(w.speaker == t for w, t in zip(labelled, truth))
    assert right >= 0.9 * len(labelled), [(w.word, round(w.start, 2), w.speaker) for w in labelled]
    # The label changes once, within half a second of where JFK starts (a word or so).
    changes = [b for a, b in zip(labelled, labelled[1:]) if a.speaker != b.speaker and a.speaker and b.speaker]
    assert len(changes) == 1 and abs(changes[0].start - change) < 0.5
    assert all(w.name is None for w in labelled)  # names are the session's


def test_a_voice_keeps_its_label_across_windows_and_recordings(encoder, whisper):
    tracker = SpeakerTracker()
    jfk = load_16k("jfk_16k.wav")
    windows = [("lj001_0001.wav", load_16k("lj001_0001.wav")), ("jfk", jfk[:int(JFK_CUT_S * RATE)]),
               ("lj001_0005.wav", load_16k("lj001_0005.wav")), ("jfk", jfk[int(JFK_CUT_S * RATE):]),
               ("lj050_0131.wav", load_16k("lj050_0131.wav"))]
    seen: dict[str, set] = {}
    for name, audio in windows:
        words = words_of(whisper, audio)
        labelled = label_words(words, tracker.track(audio, words, encoder))
        seen.setdefault(name[:2], set()).update(w.speaker for w in labelled)
    assert seen == {"lj": {"Speaker 1"}, "jf": {"Speaker 2"}}
    assert tracker.labels == ("Speaker 1", "Speaker 2")


def test_a_beep_noise_and_a_short_yes_found_no_speaker(encoder, whisper):
    t = np.arange(2 * RATE) / RATE
    beep = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    noise = (0.1 * np.random.default_rng(24).standard_normal(3 * RATE)).astype(np.float32)
    yes = trim_silence(load_16k("jfk_16k.wav"))[:int(0.4 * RATE)]  # "And": 0.4 s of real speech
    tracker = SpeakerTracker()
    for audio in (beep, noise, yes):
        # Without words: the tracker's own checks (steady or flat spectra are not speech; 0.4 s is too short).
        assert all(p.label is None for p in tracker.track(audio, None, encoder))
        # With Whisper's words, as the server has them: none for a beep or noise, so no piece at all.
        words = whisper.transcribe([audio], timed=[True])[0].words or ()
        assert all(w.speaker is None for w in label_words(words, tracker.track(audio, words, encoder)))
    assert tracker.labels == ()
    assert tracker.track(beep, [], encoder) == []  # a window without words has no speech to embed


def test_a_tracker_carried_through_json_goes_on_with_the_same_labels(encoder, whisper):
    jfk = load_16k("jfk_16k.wav")
    first = [load_16k("lj001_0001.wav"), jfk[:int(JFK_CUT_S * RATE)]]
    later = [jfk[int(JFK_CUT_S * RATE):], load_16k("lj001_0005.wav"), load_16k("ldc93s1.wav")]
    tracker = SpeakerTracker()
    for audio in first:
        tracker.track(audio, words_of(whisper, audio), encoder)
    state = tracker.to_dict()
    resumed = SpeakerTracker.from_dict(json.loads(json.dumps(state)))
    assert resumed.to_dict() == state and resumed.labels == ("Speaker 1", "Speaker 2")
    for audio in later:
        words = words_of(whisper, audio)
        assert resumed.track(audio, words, encoder) == tracker.track(audio, words, encoder)
    assert resumed.to_dict() == tracker.to_dict()
    assert resumed.labels == ("Speaker 1", "Speaker 2", "Speaker 3")  # the TIMIT speaker is someone new


def fresh_thread_torch_threads() -> int:
    """The torch thread count a thread started now gets (torch keeps one per thread that has run an op)."""
    import torch

    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


async def test_the_diarizer_embeds_in_its_own_thread_with_the_loop_free(whisper):
    default_threads = fresh_thread_torch_threads()  # what other tests left it at, in a full run
    diarizer = Diarizer(SpeakerOptions())
    try:
        tracker = await diarizer.tracker()
        audio, (_, change) = joined(trim_silence(load_16k("lj001_0001.wav")), trim_silence(load_16k("jfk_16k.wav")))
        words = words_of(whisper, audio)
        gaps, last, done = [], time.perf_counter(), asyncio.Event()

        async def ticker() -> None:
            nonlocal last
            while not done.is_set():
                await asyncio.sleep(0.005)
                gaps.append(time.perf_counter() - last)
                last = time.perf_counter()

        ticking = asyncio.create_task(ticker())
        labelled = await diarizer.label(tracker, audio, words)
        done.set()
        await ticking
        assert len(gaps) >= 5 and max(gaps) < 0.1  # 20 s of audio embedded, and the loop kept its 5 ms ticks
        assert {w.speaker for w in labelled if (w.start + w.end) / 2 < change - 0.5} == {"Speaker 1"}
        assert {w.speaker for w in labelled if (w.start + w.end) / 2 > change + 0.5} == {"Speaker 2"}
        # A resumed stream's tracker: the same profiles, from what ResumeState.voices carries.
        again = await diarizer.tracker(json.loads(json.dumps(tracker.to_dict())))
        assert again.to_dict() == tracker.to_dict()
    finally:
        await diarizer.close()
    # The worker ran torch on one thread; new threads still get the default they had.
    assert fresh_thread_torch_threads() == default_threads


async def test_weights_that_are_not_the_pinned_ones_are_refused(monkeypatch):
    monkeypatch.setattr(encoder_module, "WEIGHTS_SHA256", "0" * 64)
    diarizer = Diarizer()
    try:
        with pytest.raises(RuntimeError, match="not the pinned GE2E encoder"):
            await diarizer.tracker()
        with pytest.raises(RuntimeError, match="not the pinned GE2E encoder"):  # kept, not loaded again
            await diarizer.label(SpeakerTracker(), np.zeros(RATE, np.float32), ())
    finally:
        await diarizer.close()
