"""The segmenter alone, on real speech from ../shared/audio."""
import numpy as np
import pytest

from server.config import SegmenterConfig
from server.core.segmenter import Segmenter
from server.core.vad import make_vad

from .support.audio import RATE, continuous_speech, join_with_silence, load_16k

UTTERANCES = ["ldc93s1.wav", "lj050_0131.wav", "uberi_one_two_three.wav", "lj001_0005.wav"]


def run(audio: np.ndarray, chunk: int = 800, **cfg):
    cfg = SegmenterConfig(**cfg)
    seg = Segmenter(cfg, make_vad(cfg))
    windows = []
    for i in range(0, len(audio), chunk):
        windows += seg.push(audio[i:i + chunk])
    windows += seg.finalize()
    return windows


def finals(windows):
    return [w for w in windows if w.final]


@pytest.mark.parametrize("vad", ["webrtc", "silero"])
def test_one_final_per_utterance(vad):
    audio, spans = join_with_silence(UTTERANCES, [1.0, 1.5, 2.0, 1.2])
    got = finals(run(audio, vad=vad))
    assert len(got) == len(UTTERANCES)
    for w, (start, end) in zip(got, spans):
        # each window covers its utterance's speech and nothing of the next one
        assert w.start / RATE < start + 0.5 and w.end / RATE > end - 0.6
        assert w.end / RATE < end + 1.0
    assert [w.segment for w in got] == list(range(len(got)))


def test_continuous_speech_is_cut_at_the_cap_without_losing_or_repeating_a_sample():
    speech = continuous_speech(25.0)
    got = finals(run(speech, chunk=333))
    assert len(got) >= 3
    assert all(len(w.audio) <= 10 * RATE for w in got)
    for a, b in zip(got, got[1:]):
        assert a.end == b.start  # the next window starts exactly at the cut
    joined = np.concatenate([w.audio for w in got])
    assert np.array_equal(joined, speech[got[0].start:got[-1].end])
    assert got[-1].end == len(speech)


def test_cut_is_at_a_quiet_point_not_mid_word():
    speech = continuous_speech(25.0)
    got = finals(run(speech))
    frame = RATE // 100
    for w in got[:-1]:
        search = speech[w.end - 2 * RATE:w.end + frame]
        energies = np.square(search[:len(search) // frame * frame].reshape(-1, frame)).mean(axis=1)
        at_cut = np.square(speech[w.end - frame // 2:w.end + frame // 2]).mean()
        assert at_cut <= 0.05 * np.median(energies)  # a pause, not the middle of a word


def test_partials_grow_every_interval_and_stop_at_the_final():
    audio, _ = join_with_silence(["lj050_0131.wav"], [1.0])
    windows = run(audio, partial_interval_s=0.5)
    partials = [w for w in windows if not w.final]
    assert len(partials) >= 10
    steps = np.diff([w.end for w in partials])
    assert np.all(np.abs(steps - 0.5 * RATE) <= 480)  # one VAD frame of slack
    assert windows[-1].final and all(p.start == windows[-1].start for p in partials)


def test_finalize_mid_speech_keeps_everything_pushed():
    audio = load_16k("jfk_16k.wav")[:5 * RATE + 123]  # stop in the middle of a word
    got = finals(run(audio))
    assert got[-1].end == len(audio)
    assert sum(len(w.audio) for w in got) >= len(audio) - 0.5 * RATE


def test_chunking_does_not_change_windows():
    audio, _ = join_with_silence(UTTERANCES[:2], [1.0, 1.0])
    a = [(w.start, w.end, w.final) for w in run(audio, chunk=160)]
    b = [(w.start, w.end, w.final) for w in run(audio, chunk=16000)]
    assert a == b


def test_a_resumed_stream_cut_mid_speech_keeps_the_rest_of_the_utterance():
    """After a drop cut a window mid-speech, the resumed stream goes on at the cut sample, inside a window: a last
    word too short to open a window of its own (under min_speech_ms) is still in a final, on the stream clock."""
    cfg = SegmenterConfig(min_speech_ms=300)
    speech = load_16k("jfk_16k.wav")[int(3.5 * RATE):int(3.65 * RATE)]  # 0.15 s of voice: too short alone
    tail = np.concatenate([speech, np.zeros(RATE, np.float32)])
    alone = Segmenter(cfg, make_vad(cfg), position=5 * RATE, segment=3)
    assert not finals(alone.push(tail) + alone.finalize())  # the words would be lost
    resumed = Segmenter(cfg, make_vad(cfg), position=5 * RATE, segment=3, open_window=True)
    got = finals(resumed.push(tail) + resumed.finalize())
    assert [(w.segment, w.start) for w in got] == [(3, 5 * RATE)]
    assert np.array_equal(got[0].audio[:len(speech)], speech)


def test_a_resumed_stream_whose_cut_was_followed_by_silence_gives_no_empty_final():
    cfg = SegmenterConfig()
    for audio in (np.zeros(2 * RATE, np.float32), np.zeros(0, np.float32)):
        resumed = Segmenter(cfg, make_vad(cfg), position=5 * RATE, segment=3, open_window=True)
        assert not finals(resumed.push(audio) + resumed.finalize())
    resumed = Segmenter(cfg, make_vad(cfg), position=5 * RATE, segment=3, open_window=True)
    speech = load_16k("ldc93s1.wav")
    got = finals(resumed.push(np.concatenate([np.zeros(RATE, np.float32), speech])) + resumed.finalize())
    assert [w.segment for w in got] == [3] and got[0].start > 5 * RATE  # the next utterance, numbered on
