"""LLM mode on the captioning model ("ask the meeting"): the SALM's LLM with its LoRA adapter off, in slices, beside
the captions of the same model.

On the tiny random-weight checkpoint (server/tiny_model.py, LoRA B non-zero so the adapter matters), fp32 on CPU:
- the merged backend in llm_mode() gives exactly the logits of peft's own disable_adapter(), and not the adapter's;
- the pre-merge weights it keeps, measured; the full-size figure checked against its arithmetic;
- captions are the same before, between and after LLM-mode slices, and from another thread;
- in the engine, slices only while no caption window is queued, so a final waits behind one slice at most.
What LLM mode is asked and how it answers (prompts, LlmJob): test_salm_llm_job.py; Engine.run_low's own rules:
test_engine_low_lane.py. The merged and unmerged backends are tests/conftest.py's, built once for all three.
"""

import asyncio
import os
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a hub

from server.backends.salm import SalmBackend  # noqa: E402  (cheap: NeMo is imported lazily)
from server.config import EngineConfig  # noqa: E402
from server.core.engine import Engine  # noqa: E402
from server.intelligence.salm_llm import LlmJob  # noqa: E402

from .support.audio import load_16k  # noqa: E402
from .support.salm_llm import ASK, FIXED, salm_backend  # noqa: E402
from .support.waits import until  # noqa: E402


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [load_16k(n) for n in ["jfk_16k.wav", "ldc93s1.wav", "uberi_one_two_three.wav"]]


@pytest.fixture(scope="module")
def static(tiny_salm_dir):
    """Captions over preallocated KV caches (the path that, on CUDA, replays graphs over the merged weights)."""
    yield from salm_backend(tiny_salm_dir, merge_lora=True, static_cache_len=256)


def raw_logits(backend, ids: list[int]):
    """Last-position logits of the backend's LLM as it stands, by a plain forward (not through llm_logits)."""
    import torch

    salm = backend._salm
    with torch.inference_mode():
        tokens = torch.tensor([ids])
        return salm.llm(inputs_embeds=salm.embed_tokens(tokens), attention_mask=torch.ones_like(tokens),
                        use_cache=False).logits[0, -1].float()


# --- llm_mode ------------------------------------------------------------------------------------------------------

def test_llm_mode_logits_are_peft_disable_adapter_logits(merged, plain):
    ids = LlmJob(merged, ASK, 1).prompt_ids
    with plain._salm.llm.disable_adapter():
        reference = raw_logits(plain, ids)  # peft's own adapter-off forward, on the unmerged model
    with merged.llm_mode():
        swapped = raw_logits(merged, ids)  # the same forward on the merged model, base weights swapped in
        ours = merged.llm_logits(ids, merged.llm_cache())  # the route LlmJob takes (KV cache, last position only)
    adapted = raw_logits(plain, ids)
    captioning = raw_logits(merged, ids)  # outside llm_mode: the merged weights again
    print(f"llm_mode vs disable_adapter: max |diff| {(swapped - reference).abs().max():.1e} (same forward), "
          f"{(ours - reference).abs().max():.1e} (llm_logits); vs adapter on: {(ours - adapted).abs().max():.2f}")
    # The same base W (kept bit for bit before merging) through the same forward: equal, not merely close.
    assert ours.ndim == 1 and torch_equal(swapped, reference)
    assert (ours - reference).abs().max().item() < 1e-5  # another route (a cache, one row of lm_head): rounding
    assert (ours - adapted).abs().max().item() > 1e-2  # the adapter matters here: the comparison is not vacuous
    assert (captioning - adapted).abs().max().item() < 1e-4  # merged = adapter on, to rounding (test_salm_merge)
    with plain.llm_mode():  # the unmerged backend's llm_mode is peft's disable_adapter
        assert torch_equal(plain.llm_logits(ids, plain.llm_cache()), ours)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_llm_mode_swaps_parameter_objects_and_restores_them(merged):
    q = merged._salm.llm.model.layers[0].self_attn.q_proj
    o = merged._salm.llm.model.layers[0].self_attn.o_proj  # not adapted: never swapped
    weight, other = q.weight, o.weight
    with merged.llm_mode():
        base = q.weight
        assert base is not weight and o.weight is other
        assert base.data_ptr() != weight.data_ptr() and not torch_equal(base, weight)
        assert merged._lock.locked()  # a caption batch cannot start meanwhile
    assert q.weight is weight and not merged._lock.locked()
    with pytest.raises(ZeroDivisionError), merged.llm_mode():
        1 / 0
    assert q.weight is weight and not merged._lock.locked()  # restored on the way out of a failed slice too
    with pytest.raises(RuntimeError, match="outside llm_mode"):
        merged.llm_logits([1], merged.llm_cache())
    with merged.llm_mode():
        assert q.weight is base  # the same kept object each time: nothing is copied


def test_kept_base_weights_measured(merged, plain, tiny_salm_dir):
    """What the merged backend keeps for LLM mode: W of every LoRA-targeted linear, measured on the tiny model."""
    kept = [w for _, _, w in merged._base_weights]
    cfg = merged._decoder.config
    hidden, head_dim, layers = cfg.hidden_size, cfg.head_dim, cfg.num_hidden_layers
    per_layer = (cfg.num_attention_heads * head_dim + cfg.num_key_value_heads * head_dim) * hidden  # q_proj + v_proj
    storage = sum(w.untyped_storage().nbytes() for w in kept)  # the bytes actually held, not a view's size
    model_ptrs = {p.data_ptr() for p in merged._salm.parameters()}
    print(f"kept {len(kept)} tensors, {storage} bytes (tiny model, fp32); full size: 28 x (2048 + 1024) x 2048 x 2 = "
          f"{28 * (16 * 128 + 8 * 128) * 2048 * 2:,} bytes in bf16")
    assert len(kept) == 2 * layers  # q_proj and v_proj of each layer
    assert merged.llm_base_bytes == storage == layers * per_layer * 4 == 49_152
    assert not model_ptrs & {w.data_ptr() for w in kept}  # copies, not the model's own tensors
    # The figure in merge_lora_into_llm's docstring, for Qwen3-1.7B's shapes in bf16:
    assert 28 * (16 * 128 + 8 * 128) * 2048 * 2 == 352_321_536
    # Unmerged, peft still holds W itself: nothing is kept, and llm_mode is disable_adapter.
    assert plain.llm_base_bytes == 0 and plain.llm_mode_available and merged.llm_mode_available


def test_no_adapter_no_llm_mode(tiny_salm_dir):
    from nemo.collections.speechlm2.models import SALM

    salm = SALM.from_pretrained(str(tiny_salm_dir))
    salm.llm = salm.llm.unload()  # the LLM without any adapter
    backend = SalmBackend.from_model(salm, model="no-lora", **FIXED)
    assert not backend.lora_merged and not backend.llm_mode_available and backend.llm_base_bytes == 0
    with pytest.raises(RuntimeError, match="no LoRA adapter"):
        LlmJob(backend, ASK, 4)
    with pytest.raises(RuntimeError, match="no LoRA adapter"), backend.llm_mode():
        pass


# --- captions are unaffected ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["merged", "plain", "static"])
def test_captions_unchanged_by_llm_slices(which, request, clips):
    backend = request.getfixturevalue(which)
    before = backend.transcribe_ids(clips)
    job = LlmJob(backend, ASK, max_new_tokens=20)
    job.prefill()
    between = backend.transcribe_ids(clips)  # a caption batch between two slices
    job.step(8)
    after = backend.transcribe_ids(clips)
    while not job.done:
        job.step(8)
    assert before == between == after and all(len(row) == 12 for row in before)
    assert bool(backend._decoder._static) == (which == "static")  # the static caches did serve those captions
    alone = LlmJob(backend, ASK, max_new_tokens=20)
    alone.step(20)
    alone.step(20)
    assert alone.ids == job.ids  # nor did the caption batch change the answer


def test_captions_from_another_thread_never_see_the_base_weights(merged, clips):
    """Without the engine: a caption thread and an LLM thread hammer the backend; the lock keeps them apart."""
    expected = merged.transcribe_ids(clips[:1])
    seen, stop = [], threading.Event()

    def llm():
        while not stop.is_set():
            job = LlmJob(merged, ASK, max_new_tokens=12)
            while not job.done:
                job.step(3)

    thread = threading.Thread(target=llm)
    thread.start()
    try:
        for _ in range(6):
            seen.append(merged.transcribe_ids(clips[:1]))
    finally:
        stop.set()
        thread.join()
    assert all(ids == expected for ids in seen)


# --- the engine's low-priority lane --------------------------------------------------------------------------------

class Recorded:
    """The tiny SALM backend, recording each caption batch in the worker thread; closing it is left to the fixture."""

    def __init__(self, backend):
        self._backend, self.batches = backend, []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def transcribe(self, audios, drafts=None, contexts=None, timed=None):
        t0 = time.monotonic()
        texts = self._backend.transcribe(audios, drafts, contexts, timed)
        self.batches.append((t0, time.monotonic(), [len(a) for a in audios]))
        return texts

    def close(self):
        pass


async def run_meeting(backend, clip, llm_jobs: int):
    """4 sessions send 3 finals each (distinct lengths, 25 ms apart) while `llm_jobs` jobs keep queueing slices of
    4 tokens. Returns (final submit times by length, final latencies, slices as (queued, start, end))."""
    engine = Engine(backend, EngineConfig(max_batch=4, max_wait_ms=0))
    engine.start()
    slices, submitted, latency = [], {}, {}
    done = asyncio.Event()

    def timed(job, queued):
        t0 = time.monotonic()
        text = job.step(4)
        slices.append((queued, t0, time.monotonic()))
        return text

    async def ask():
        while not done.is_set():
            job = LlmJob(backend._backend, ASK, max_new_tokens=48)
            while not job.done and not done.is_set():
                await engine.run_low(timed, job, time.monotonic())

    async def final(k: int):
        length = 16000 + 160 * k
        submitted[length] = time.monotonic()
        await engine.submit(f"s{k % 4}", clip[:length], final=True)
        latency[length] = time.monotonic() - submitted[length]

    askers = [asyncio.create_task(ask()) for _ in range(llm_jobs)]
    try:
        if llm_jobs:  # the slices are running when the finals come
            await until(lambda: slices, timeout=60, what="the first slice")
        finals = []
        for k in range(12):
            finals.append(asyncio.create_task(final(k)))
            await asyncio.sleep(0.025)  # the workload under test: finals arriving 25 ms apart among the slices
        await asyncio.wait_for(asyncio.gather(*finals), 10)  # ~0.5 s; finals starved by slices would never end
    finally:
        done.set()
        await asyncio.gather(*askers)
        await engine.close()
    return submitted, latency, slices


async def test_engine_runs_finals_before_low_slices_with_the_tiny_salm(merged, clips):
    clip = np.concatenate([clips[0], clips[0]])
    alone = Recorded(merged)
    _, quiet, _ = await run_meeting(alone, clip, llm_jobs=0)
    backend = Recorded(merged)
    submitted, busy, slices = await run_meeting(backend, clip, llm_jobs=2)

    start = {length: t0 for t0, _, lengths in backend.batches for length in lengths}
    assert set(start) == set(submitted) and len(slices) >= 3  # (few on a loaded machine: the test is ordering)
    for length, t in submitted.items():
        # every slice queued after this final started after the final's batch did ...
        assert all(s >= start[length] for q, s, _ in slices if q > t), f"a slice went before final {length}"
        # ... and at most one slice (the one already picked when it came) ran between its arrival and its batch
        waited = [s for _, s, _ in slices if t < s < start[length]]
        assert len(waited) <= 1, f"final {length} waited behind {len(waited)} slices"
    # the slices did run among the finals, so the ordering above was put to the test
    assert any(min(submitted.values()) < s < max(start.values()) for _, s, _ in slices)
    slice_ms = 1000 * np.mean([e - s for _, s, e in slices])
    batch_ms = 1000 * np.mean([e - s for s, e, _ in backend.batches])
    print(f"finals alone: mean {1000 * np.mean(list(quiet.values())):.1f} ms, max {1000 * max(quiet.values()):.1f} ms;"
          f" with 2 LLM jobs: mean {1000 * np.mean(list(busy.values())):.1f} ms, max {1000 * max(busy.values()):.1f}"
          f" ms ({len(slices)} slices of 4 tokens, {slice_ms:.1f} ms each; caption batches {batch_ms:.1f} ms)")

