"""A session asked for speaker labels when labelling goes wrong: the model cannot load (wrong weights), or the
diarizer fails on a window. Either way every final still goes out, with its words, and the stream goes on."""
from __future__ import annotations

from client.stream import encode
from server.config import EngineConfig, SegmenterConfig
from server.core import errors as E
from server.core import requests as Q
from server.core.engine import Engine
from server.core.events import Error, Event, Final, Ready
from server.core.session import Session
from server.core.vad import VadFactory
from server.delivery.sink import OutputSink
from server.speakers import Diarizer
from server.speakers import encoder as encoder_module

from .support.audio import load_16k
from .test_realtime_units import EchoBackend


async def run_session(diarizer) -> list[Event]:
    cfg = SegmenterConfig()
    engine = Engine(EchoBackend(), EngineConfig(max_wait_ms=0))
    engine.start()
    sent: list[Event] = []

    async def to_client(event: Event) -> bool:
        sent.append(event)
        return True

    session = Session("abcdef012345", engine, cfg, VadFactory(cfg), OutputSink("abcdef012345", None, to_client),
                      diarizer=diarizer)
    await session.start(Q.Start(diarize=True))
    speech = encode(load_16k("uberi_one_two_three.wav"), "pcm_s16le")
    for i in range(0, len(speech), 3200):
        session.audio(speech[i:i + 3200])
    await session.stop()
    await engine.close()
    return sent


async def test_weights_that_do_not_load_say_diarize_unavailable_and_captions_go_on(monkeypatch):
    monkeypatch.setattr(encoder_module, "WEIGHTS_SHA256", "0" * 64)
    diarizer = Diarizer()
    try:
        sent = await run_session(diarizer)
    finally:
        await diarizer.close()
    assert isinstance(sent[0], Ready)
    assert isinstance(sent[1], Error) and sent[1].code == E.DIARIZE_UNAVAILABLE and "sha256" in sent[1].message
    finals = [e for e in sent if isinstance(e, Final)]
    assert finals and all(f.text and f.words and all(w.speaker is None for w in f.words) for f in finals)


class FailingDiarizer:
    """Loads, then fails on every window (a bug, or the worker gone)."""

    class Voices:
        labels = ("Speaker 1",)

        def to_dict(self) -> dict:
            return {}

    async def tracker(self, state=None):
        return self.Voices()

    async def label(self, tracker, audio, words):
        raise RuntimeError("the encoder blew up")


async def test_a_diarizer_failing_on_a_window_costs_its_labels_not_its_final():
    sent = await run_session(FailingDiarizer())
    finals = [e for e in sent if isinstance(e, Final)]
    assert finals and all(f.text and f.words and all(w.speaker is None for w in f.words) for f in finals)
    assert not [e for e in sent if isinstance(e, Error)]  # the client is not told: only labels are missing
