"""OpenAI's Realtime transcription, the pure parts alone (no server): the session settings an update sets (GA and beta
shapes, bad ones named by their parameter), how the adapter turns session events into OpenAI's events (validated
against the SDK's own schemas), and a clear in the segmenter and in the session. test_realtime.py drives a real
server with the official SDK."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from client.stream import encode
from server.backends.transcript import Transcript
from server.config import Config, EngineConfig, SegmenterConfig
from server.core import errors as E
from server.core import requests as Q
from server.core.engine import Engine
from server.core.events import Error, Event, Final, Partial, Ready
from server.core.segmenter import Segmenter
from server.core.session import Session
from server.core.vad import VadFactory, make_vad
from server.delivery.sink import OutputSink
from server.streams import realtime as R
from server.streams import realtime_settings as RS

from .support.audio import RATE, load_16k, trim_silence
from .support.realtime import GA_EVENT


def test_updates_in_the_ga_and_the_beta_shape():
    s = RS.Settings.defaults(SegmenterConfig())
    assert (s.rate, s.vad, s.prefix_padding_ms, s.silence_duration_ms) == (24000, True, 300, 600)
    ga = RS.parse_update({"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000}, "noise_reduction": {"type": "near_field"},
        "transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": "  Okonkwo " + "x" * 600},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 900, "prefix_padding_ms": 200,
                           "threshold": 0.7}}}, "include": ["item.input_audio_transcription.logprobs"]}, s)
    assert (ga.rate, ga.silence_duration_ms, ga.prefix_padding_ms, ga.threshold) == (16000, 900, 200, 0.7)
    assert ga.prompt.startswith("Okonkwo x") and len(ga.prompt) <= Q.MAX_CONTEXT
    assert (ga.model, ga.language) == ("gpt-4o-transcribe", "en")
    beta = RS.parse_update({"input_audio_format": "pcm16", "turn_detection": None,
                           "input_audio_transcription": {"prompt": "   "}}, ga)
    assert (beta.rate, beta.vad, beta.prompt, beta.silence_duration_ms) == (24000, False, None, 900)
    assert RS.parse_update({}, beta) == beta  # what an update leaves out stays


@pytest.mark.parametrize("session, param", [
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 12345}}}}, "session.audio.input.format.rate"),
    ({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}, "session.audio.input.format.type"),
    ({"input_audio_format": "g711_ulaw"}, "session.input_audio_format"),
    ({"type": "realtime"}, "session.type"),
    ({"turn_detection": {"type": "semantic_vad"}}, "session.turn_detection.type"),
    ({"turn_detection": {"type": "server_vad", "silence_duration_ms": -1}},
     "session.turn_detection.silence_duration_ms"),
    ({"audio": {"input": {"transcription": {"prompt": 5}}}}, "session.audio.input.transcription.prompt"),
    ("not an object", "session"),
])
def test_bad_updates_name_the_parameter(session, param):
    with pytest.raises(RS.RealtimeError) as exc:
        RS.parse_update(session, RS.Settings())
    assert exc.value.param == param and exc.value.message


def encoder() -> R.Realtime:
    """The Realtime adapter with no connection behind it: enough to see how session events become its events."""
    stream = SimpleNamespace(cfg=Config(), backend_name="whisper", session=None,
                             ws=SimpleNamespace(query_string="intent=transcription", headers={}))
    return R.Realtime(stream)


def test_partials_become_append_only_deltas_and_a_failed_window_a_failed_event():
    li = encoder()

    def events(event: Event) -> list[dict]:
        out = [json.loads(frame) for frame in li.encode(event)]
        for e in out:
            GA_EVENT.validate_python(e)
        return out

    first = events(Partial(0, 0.3, 1.0, "And so my"))
    assert [e["type"] for e in first] == ["input_audio_buffer.speech_started",
                                          "conversation.item.input_audio_transcription.delta"]
    assert (first[0]["audio_start_ms"], first[1]["delta"]) == (300, "And so my")
    assert [e["delta"] for e in events(Partial(0, 0.3, 1.5, "And so my fellow"))] == [" fellow"]
    assert events(Partial(0, 0.3, 2.0, "And so I fell")) == []  # a revision: deltas only append
    final = events(Final(0, 0.3, 3.1, "And so my fellow Americans"))
    assert [e["type"] for e in final] == [
        "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.delta", "conversation.item.input_audio_transcription.completed"]
    assert (final[0]["audio_end_ms"], final[2]["delta"], final[3]["transcript"]) == (
        3100, " Americans", "And so my fellow Americans")
    assert {e["item_id"] for e in first + final} == {first[0]["item_id"]}
    assert events(Error(E.BACKEND_ERROR, "the model failed", segment=1)) == []
    failed = events(Final(1, 3.1, 4.0, ""))
    assert [e["type"] for e in failed] == [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.failed"]
    assert failed[2]["previous_item_id"] == first[0]["item_id"]
    assert failed[3]["error"]["message"] == "the model failed"
    assert events(Ready("abcdef012345", "whisper", "tiny.en", "test", "token")) == []
    # What streams/intake.py sends when it refuses the connection right after the handshake: an error in this protocol.
    refusal = json.loads(encoder().error_frame("overloaded", "no new streams now"))
    GA_EVENT.validate_python(refusal)
    assert refusal["error"]["type"] == "server_error" and refusal["error"]["code"] == "overloaded"


def test_segmenter_clear_drops_the_open_window_and_the_next_one_takes_its_number():
    cfg = SegmenterConfig()
    seg = Segmenter(cfg, make_vad(cfg))
    first, second = trim_silence(load_16k("ldc93s1.wav")), load_16k("uberi_one_two_three.wav")
    windows = seg.push(first)
    assert seg.in_window and not any(w.final for w in windows)
    seg.clear()
    cleared_at = seg.position
    assert not seg.in_window and seg.finalize() == []  # nothing left to commit
    windows = seg.push(second) + seg.finalize()
    finals = [w for w in windows if w.final]
    assert [w.segment for w in finals] == [0]  # numbering stays gapless
    assert all(w.start >= cleared_at for w in windows)  # nothing from before the clear, not even pre-roll


class EchoBackend:
    """Not a model: each window's text is its length in samples."""

    name, model, reason = "echo", "echo", "test"
    uses_drafts = costly_batches = False

    def transcribe(self, audios, drafts=None, contexts=None, timed=None):
        return [Transcript(str(len(a))) for a in audios]

    def decode_stats(self):
        return None

    def close(self):
        pass


async def test_session_clear_sends_no_final_and_no_stale_partial_of_the_cleared_window():
    cfg = SegmenterConfig()
    engine = Engine(EchoBackend(), EngineConfig(max_wait_ms=0))
    engine.start()
    sent = []

    async def to_client(event: Event) -> bool:
        sent.append(event)
        return True  # the client is still there

    session = Session("abcdef012345", engine, cfg, VadFactory(cfg), OutputSink("abcdef012345", None, to_client))
    await session.start(Q.Start())
    speech = encode(load_16k("lj001_0005.wav")[:3 * RATE], "pcm_s16le")  # 3 s, mid-sentence: a window stays open
    for i in range(0, len(speech), 3200):
        session.audio(speech[i:i + 3200])
    assert session.clear() == 0  # the next window is segment 0 again
    cleared_at, n_at_clear = 3 * RATE, len(sent)
    assert not session.finalize()  # nothing left to commit
    # the cleared window's partials, already submitted, come back from the engine: a lowest-priority call runs
    # only once no window is queued before it
    await engine.run_low(lambda: None)
    tail = encode(load_16k("uberi_one_two_three.wav"), "pcm_s16le")
    for i in range(0, len(tail), 3200):
        session.audio(tail[i:i + 3200])
    await session.stop()
    await engine.close()
    finals = [e for e in sent if isinstance(e, Final)]
    assert [f.segment for f in finals] == [0] and finals[0].start * RATE >= cleared_at
    assert finals[0].text == str(round((finals[0].end - finals[0].start) * RATE))  # the backend ran: no error
    assert not [e for e in sent if isinstance(e, Error)]
    late = [e for e in sent[n_at_clear:] if isinstance(e, Partial) and e.end * RATE <= cleared_at]
    assert late == []  # no partial of the cleared window after the clear

