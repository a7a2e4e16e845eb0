"""LoRA merged into the LLM's weights (SalmBackend's default) decodes the same tokens as the peft-wrapped model.

On the tiny random-weight checkpoint (server/backends/tiny_model.py, LoRA B initialised non-zero so the adapter
matters), in fp32 on CPU. Merging changes the arithmetic (x(W + sBA) instead of xW + s(xA)B), so the logits are
only close, not equal; greedy ids are what must not change.
"""

import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a hub

from server.backends.salm import SalmBackend  # noqa: E402  (cheap: NeMo is imported lazily)

from .support.audio import load_16k  # noqa: E402

# A fixed cap (rate 0): every clip decodes the same number of tokens whatever it is batched with.
FIXED = dict(device="cpu", max_tokens_per_second=0.0, min_new_tokens_cap=32)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    names = ["jfk_16k.wav", "ldc93s1.wav", "lj001_0001.wav", "uberi_one_two_three.wav", "lj050_0131.wav"]
    return [load_16k(n) for n in names]


@pytest.fixture(scope="module")
def pair(tiny_salm_dir):
    merged = SalmBackend(str(tiny_salm_dir), merge_lora=True, **FIXED)
    plain = SalmBackend(str(tiny_salm_dir), merge_lora=False, **FIXED)
    yield merged, plain
    merged.close()
    plain.close()


def test_merge_removes_the_adapter(pair):
    from peft import PeftModel

    merged, plain = pair
    assert merged.lora_merged and not plain.lora_merged
    assert not isinstance(merged._salm.llm, PeftModel) and isinstance(plain._salm.llm, PeftModel)
    assert not any("lora" in name for name, _ in merged._salm.named_parameters())


def test_merged_tokens_identical_to_unmerged(pair, clips):
    merged, plain = pair
    ids = merged.transcribe_ids(clips)
    assert ids == plain.transcribe_ids(clips)
    assert all(len(row) == 32 for row in ids)  # random weights never stop early: all 32 tokens were compared
    assert merged.transcribe(clips) == plain.transcribe(clips)


def test_merged_scores_close_to_unmerged(pair, clips):
    """Why the ids agree: per-step logits differ by float rounding only, far below the gap to the runner-up."""
    import torch
    from transformers import GenerationConfig

    def scores(backend):
        salm = backend._salm
        prompt = [{"role": "user", "content": f"Transcribe the following: {salm.audio_locator_tag}"}]
        lens = [len(c) for c in clips]
        batch = np.zeros((len(clips), max(lens)), np.float32)
        for row, c in zip(batch, clips):
            row[:len(c)] = c
        cfg = GenerationConfig(eos_token_id=salm.text_eos_id, pad_token_id=salm.text_pad_id, max_new_tokens=16,
                               min_new_tokens=16, output_logits=True, return_dict_in_generate=True)
        with torch.inference_mode():
            out = salm.generate(prompts=[[dict(t) for t in prompt] for _ in clips],
                                audios=torch.from_numpy(batch), audio_lens=torch.tensor(lens), generation_config=cfg)
        return torch.stack(out.logits)  # raw logits (steps, batch, vocab), before any EOS masking

    a, b = scores(pair[0]), scores(pair[1])
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    top2 = b.topk(2, dim=-1).values
    margin = (top2[..., 0] - top2[..., 1]).min().item()
    diff = (a - b).abs().max().item()
    print(f"max |logit diff| {diff:.2e}, smallest top-1/top-2 gap {margin:.2e}")
    assert diff < 1e-4 and diff < margin / 100


def test_from_model_matches_the_constructor(tiny_salm_dir, pair, clips):
    from nemo.collections.speechlm2.models import SALM

    backend = SalmBackend.from_model(SALM.from_pretrained(str(tiny_salm_dir)), model="tiny", **FIXED)
    assert backend.model == "tiny" and backend.name == "salm" and backend.lora_merged
    assert backend.transcribe_ids(clips) == pair[0].transcribe_ids(clips)


def test_missing_lora_weights_are_refused_before_merging(tmp_path, tiny_salm_dir):
    """Merging drops the lora_* keys from the state dict; the check must see them first."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_salm_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights[next(k for k in weights if "lora_B" in k)]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="weights missing"):
        SalmBackend(str(broken), device="cpu", merge_lora=True)
