"""bench.gpu's model: a random-weight SALM of Canary-Qwen-2.5B's shapes (or the tiny checkpoint) and our backend
around it, forced to fixed output lengths."""
from __future__ import annotations

from pathlib import Path

# Canary-Qwen-2.5B: Qwen3-1.7B + FastConformer (../shared/notes/salm.md). Everything else as
# server/backends/tiny_model.py.
FULL_SHAPES = dict(vocab=151936, hidden=2048, intermediate=6144, layers=28, heads=16, kv_heads=8, head_dim=128,
                   tied=True, enc_layers=32, enc_d=1024, enc_heads=8, enc_channels=256, enc_ff=4,
                   lora_r=128, lora_alpha=256)


def build_random_salm(shapes: dict, workdir: Path, device: str):
    """A random-weight SALM of these shapes, built on `device` directly: a full-size one would take 11 GB and a
    minute on a CPU. The tokenizer is the tiny model's small BPE: ids past it decode to "" (fine for timing)."""
    import torch
    from nemo.collections.speechlm2.models import SALM
    from transformers import Qwen3Config

    from server.backends.tiny_model import _build_tokenizer, _salm_config

    s = shapes
    tok = _build_tokenizer(workdir)
    Qwen3Config(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        head_dim=s["head_dim"], tie_word_embeddings=s["tied"], max_position_embeddings=40960, rope_theta=1e6,
        rms_norm_eps=1e-6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    ).save_pretrained(workdir / "llm_backbone")
    cfg = _salm_config(s["hidden"])
    cfg.update(pretrained_llm=str(workdir / "llm_backbone"), tokenizer_path=str(workdir))
    cfg["lora"].update(r=s["lora_r"], lora_alpha=s["lora_alpha"])
    cfg["perception"]["encoder"].update(n_layers=s["enc_layers"], d_model=s["enc_d"], n_heads=s["enc_heads"],
                                        subsampling_conv_channels=s["enc_channels"], ff_expansion_factor=s["enc_ff"])
    cfg["perception"]["modality_adapter"]["d_model"] = s["enc_d"]
    torch.manual_seed(0)
    with torch.device(device):  # every parameter is created where it will run
        model = SALM(cfg).eval()
    with torch.no_grad():  # peft starts LoRA B at zero: make the adapter (and merging it) change the weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return model


def load_tiny_salm(workdir: Path):
    from nemo.collections.speechlm2.models import SALM

    from server.backends.tiny_model import write_tiny_checkpoint

    return SALM.from_pretrained(str(write_tiny_checkpoint(workdir / "tiny-salm"))).eval()


def make_backend(model, device: str, tokens_per_s: float, merge: bool, static_len: int = 0):
    """Our backend around `model` (merged in place when `merge`), forced to fixed output lengths. static_len > 0:
    preallocated KV caches, and on CUDA the decode step as a CUDA graph."""
    from server.backends.salm import SalmBackend

    backend = SalmBackend.from_model(model, model="random-weight SALM", device=device,
                                     max_tokens_per_second=tokens_per_s, min_new_tokens_cap=1, merge_lora=merge,
                                     static_cache_len=static_len, cuda_graphs=static_len > 0)
    backend.ignore_eos = True  # random weights give no meaningful EOS: each row decodes exactly to its cap
    return backend


class Shared:
    """Engine.close() closes its backend; the levels of one run share a model, so closing is left to the end."""

    def __init__(self, backend):
        self.backend, self.name, self.model, self.reason = backend, backend.name, backend.model, backend.reason
        self.uses_drafts, self.costly_batches = backend.uses_drafts, backend.costly_batches

    def transcribe(self, audios, drafts=None, contexts=None, timed=None):
        return self.backend.transcribe(audios, drafts, contexts, timed)

    def decode_stats(self):
        return self.backend.decode_stats()

    def close(self) -> None:
        pass
