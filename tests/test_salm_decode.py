"""Our greedy decoder with drafts (server/backends/salm_decode.py) against NeMo's own SALM.generate, on the tiny
random-weight checkpoint: the same tokens whatever the draft, and fewer sequential steps when the draft is right."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a hub

from server.backends.salm import SalmBackend, cut_at_eos  # noqa: E402

from .support.audio import load_16k  # noqa: E402

CAP = 30


@pytest.fixture(scope="module")
def backend(tiny_salm_dir) -> SalmBackend:
    # merge_lora=False: NeMo's generate below runs the same (unmerged) model object.
    b = SalmBackend(str(tiny_salm_dir), device="cpu", max_tokens_per_second=0.0, min_new_tokens_cap=CAP,
                    merge_lora=False)
    yield b
    b.close()


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    speech = np.concatenate([load_16k("jfk_16k.wav"), load_16k("ldc93s1.wav")])
    return [speech[i * 20000: i * 20000 + n] for i, n in enumerate([24000, 56000, 96000, 160000, 8000, 40000])]


def nemo_generate(backend: SalmBackend, clips) -> list[list[int]]:
    from transformers import GenerationConfig

    salm = backend._salm
    prompt = [{"role": "user", "content": f"Transcribe the following: {salm.audio_locator_tag}"}]
    batch = np.zeros((len(clips), max(map(len, clips))), np.float32)
    for row, c in zip(batch, clips):
        row[: len(c)] = c
    cfg = GenerationConfig(eos_token_id=salm.text_eos_id, pad_token_id=salm.text_pad_id, max_new_tokens=CAP)
    with torch.inference_mode():
        out = salm.generate(prompts=[[dict(t) for t in prompt] for _ in clips], audios=torch.from_numpy(batch),
                            audio_lens=torch.tensor([len(c) for c in clips]), generation_config=cfg)
    return [cut_at_eos(row, salm.text_eos_id, salm.text_pad_id) for row in out.tolist()]


def test_same_tokens_as_nemo_generate_whatever_the_draft(backend, clips):
    reference = nemo_generate(backend, clips)
    assert len({len(r) for r in reference}) >= 1 and all(reference)
    drafts = {
        "none": None,
        "exact": reference,
        "right then wrong": [r[: len(r) // 2] + [7, 8, 9] for r in reference],
        "all wrong": [[9] * 20 for _ in reference],
        "mixed, some empty": [reference[0], [], reference[2][:3], [1, 2], reference[4] + [5] * 40, []],
    }
    steps = {}
    for name, draft in drafts.items():
        before = backend.stats.steps
        assert backend.transcribe_ids(clips, draft) == reference, name
        steps[name] = backend.stats.steps - before
    # Plain greedy needs CAP - 1 steps after the prefill; a right draft leaves at most one.
    assert steps["none"] == CAP - 1 and steps["all wrong"] == CAP - 1
    assert steps["exact"] <= 1 and steps["right then wrong"] < steps["none"]


def test_accepted_draft_tokens_are_counted(backend, clips):
    reference = backend.transcribe_ids(clips[:2])
    before = (backend.stats.draft_tokens, backend.stats.accepted_tokens)
    backend.transcribe_ids(clips[:2], [reference[0], reference[1][:4] + [3, 3]])
    drafted = backend.stats.draft_tokens - before[0]
    accepted = backend.stats.accepted_tokens - before[1]
    assert drafted == min(len(reference[0]), CAP - 1) + 6  # a draft is cut to leave room for one new token
    assert accepted >= min(len(reference[0]), CAP - 1) + 4


def test_a_text_draft_never_changes_the_text(backend, clips):
    texts = [t.text for t in backend.transcribe(clips)]
    assert [t.text for t in backend.transcribe(clips, drafts=texts)] == texts
    assert [t.text for t in backend.transcribe(clips, drafts=[None, "", "hello world", texts[3], None, "x" * 500])] \
        == texts


@pytest.mark.parametrize("static_len", [256, 96])  # 96: the long clips do not fit and go the dynamic way
def test_preallocated_kv_cache_gives_the_same_tokens(tiny_salm_dir, backend, clips, static_len):
    """The static-cache decoder (what CUDA graphs replay on a GPU) pads the batch to a power of two and hides
    the filler rows; its tokens are NeMo's, with and without drafts, alone or in a batch."""
    static = SalmBackend(str(tiny_salm_dir), device="cpu", max_tokens_per_second=0.0, min_new_tokens_cap=CAP,
                         merge_lora=False, static_cache_len=static_len)
    reference = nemo_generate(backend, clips)
    assert static.transcribe_ids(clips) == reference  # 6 rows in the 8-row cache
    assert static.transcribe_ids(clips, [r[: len(r) // 2] + [7] for r in reference]) == reference
    assert static.transcribe_ids(clips[:3]) == reference[:3]  # the 4-row cache
    assert [static.transcribe_ids([c])[0] for c in clips] == reference
    used = sorted(static._decoder._static)
    assert used == ([1, 4, 8] if static_len == 256 else [1])  # at 96 only single clips under 4 s fit


def test_the_graphed_step_never_reads_a_value_back_to_the_host(tiny_salm_dir, clips):
    """A CUDA graph cannot capture a step that reads a tensor's value on the host (`.item()`, `if tensor:`): that
    would fail on the GPU only. Checked here by recording every op the step dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    static = SalmBackend(str(tiny_salm_dir), device="cpu", max_tokens_per_second=0.0, min_new_tokens_cap=CAP,
                         static_cache_len=256)
    static.transcribe_ids(clips[:2])  # builds the 2-row runner and leaves it ready for another step
    runner = static._decoder._static[2]
    with torch.inference_mode(), Ops() as ops:
        runner._step(ignore_eos=False)
    assert any("index_copy" in n for n in ops.names)  # the step really ran the model and wrote the cache
    # .item() dispatches _local_scalar_dense, `if tensor:` is_nonzero, torch.equal equal; nonzero has a
    # data-dependent shape. (`.tolist()` dispatches nothing recognisable: none is in salm_decode's step.)
    host_reads = ("_local_scalar_dense", "is_nonzero", "aten.equal", "aten.nonzero")
    assert not [n for n in ops.names if any(h in n for h in host_reads)]


def test_drafts_that_do_not_pay_are_mostly_left_out(tiny_salm_dir, clips):
    """Random weights accept few draft tokens: the backend then tries drafts on one batch in PROBE_EVERY only,
    and its text never changes either way."""
    from server.backends.salm import MIN_ACCEPTANCE, PROBE_EVERY

    b = SalmBackend(str(tiny_salm_dir), device="cpu", max_tokens_per_second=0.0, min_new_tokens_cap=CAP)
    texts = [t.text for t in b.transcribe(clips[:2])]
    junk = ["zq " * 20] * 2  # tokenizes to ids the model never emits here
    drafted = []
    for _ in range(3 * PROBE_EVERY):
        before = b.stats.draft_tokens
        assert [t.text for t in b.transcribe(clips[:2], drafts=junk)] == texts
        drafted.append(b.stats.draft_tokens > before)
    assert b._acceptance < MIN_ACCEPTANCE
    first = drafted.index(False)  # drafts at first, until the average fell below MIN_ACCEPTANCE; then probes only
    assert 2 <= first <= 6 and sum(drafted[first:]) <= len(drafted) // PROBE_EVERY
    # right drafts are accepted on the probes, and bring the average back up
    for _ in range(4 * PROBE_EVERY):
        b.transcribe(clips[:2], drafts=texts)
    assert b._acceptance >= MIN_ACCEPTANCE
