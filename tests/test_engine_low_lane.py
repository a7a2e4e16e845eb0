"""Engine.run_low, the engine's lowest-priority lane (ask the meeting's model work), with a probe for a backend: a
slice runs only when no caption window is queued, in order, with its own result or exception; closing the engine
cancels what waits; a slice past the batch timeout stalls the engine like a batch would. With the tiny SALM and
real LLM slices: test_salm_llm.py."""

import asyncio
import threading
import time

import numpy as np
import pytest

from server.backends.transcript import Transcript
from server.config import EngineConfig
from server.core.engine import BackendError, Engine

from .support.waits import until


class Probe:
    """A scheduling probe, not a model: records each batch, echoes each window's length."""

    name = model = reason = "probe"
    uses_drafts = costly_batches = False

    def __init__(self):
        self.order: list = []

    def transcribe(self, audios, drafts=None, contexts=None, timed=None):
        self.order.append([len(a) for a in audios])
        return [Transcript(str(len(a))) for a in audios]

    def close(self):
        pass


async def test_run_low_order_results_errors_and_close():
    probe = Probe()
    engine = Engine(probe, EngineConfig(max_batch=2, max_wait_ms=0, batch_timeout_s=5))
    engine.start()
    gate, holding = threading.Event(), threading.Event()

    def slice_(name, wait=False):
        if wait:
            holding.set()
            gate.wait(5)
        probe.order.append(name)
        return name

    first = asyncio.create_task(engine.run_low(slice_, "low1", True))  # holds the worker until the gate opens
    assert await asyncio.to_thread(holding.wait, 30)
    second = asyncio.create_task(engine.run_low(slice_, "low2"))
    await asyncio.sleep(0)
    windows = [engine.submit("a", np.zeros(5), final=False), engine.submit("b", np.zeros(6), final=True),
               engine.submit("c", np.zeros(7), final=True)]
    gate.set()
    assert await asyncio.gather(first, second, *windows) == ["low1", "low2", Transcript("5"), Transcript("6"), Transcript("7")]
    assert probe.order == ["low1", [6, 7], [5], "low2"]  # queued before the windows, low2 still went after them
    assert engine.stats.low_slices == 2 and engine.stats.batches == 2

    with pytest.raises(KeyError, match="boom"):  # fn's own exception, as raised
        await engine.run_low(lambda: {}["boom"])

    gate.clear()
    holding.clear()
    blocked = asyncio.create_task(engine.run_low(slice_, "stuck", True))
    assert await asyncio.to_thread(holding.wait, 30)
    pending = asyncio.create_task(engine.run_low(slice_, "never"))
    await asyncio.sleep(0)
    await engine.close()
    for task in (blocked, pending):
        with pytest.raises(asyncio.CancelledError):
            await task
    gate.set()
    with pytest.raises(BackendError, match="not running"):
        await engine.run_low(slice_, "late")


async def test_a_slice_past_the_timeout_stalls_the_engine_and_later_calls_fail_fast():
    engine = Engine(Probe(), EngineConfig(max_batch=2, max_wait_ms=0, batch_timeout_s=0.2))
    engine.start()
    gate = threading.Event()
    with pytest.raises(BackendError, match="ran past"):
        await engine.run_low(gate.wait, 5)
    assert engine.stalled
    # both fail at once, by the stall ("stuck"), not each after a timeout of its own ("ran past")
    with pytest.raises(BackendError, match="stuck"):
        await engine.run_low(time.sleep, 0)
    final = engine.submit("a", np.zeros(3), final=True)
    with pytest.raises(BackendError, match="stuck"):
        await final
    gate.set()
    await until(lambda: not engine.stalled, timeout=30, what="the stuck call to return")
    assert await engine.run_low(lambda: 42) == 42  # served again once the stuck call returned
    await engine.close()
