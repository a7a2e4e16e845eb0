"""Write a tiny random-weight SALM checkpoint (Canary-Qwen layout) fully offline, for tests.

    python -m server.backends.tiny_model OUT_DIR

The directory mirrors what ``SALM.from_pretrained`` expects from the real hub checkpoint:

    OUT_DIR/config.json              SALM config (NeMo wrapper)
    OUT_DIR/model.safetensors        all weights, LoRA included
    OUT_DIR/tokenizer.json, tokenizer_config.json
    OUT_DIR/llm_backbone/config.json Qwen3 config

NeMo 3.0.0 (speechlm2/parts/hf_hub.py, ``_inject_local_artifact_paths``) rewrites ``tokenizer_path`` to the
root directory and ``pretrained_llm`` to ``<dir>/llm_backbone`` whenever those files sit beside config.json,
so the saved values are never used by ``from_pretrained`` and the directory can be moved freely.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

AUDIO_TAG = "<|audioplaceholder|>"  # what Canary-Qwen uses as audio_locator_tag
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", AUDIO_TAG]

# Enough text for BPE to learn some merges; the prompt words appear so that prompts stay short.
_TRAIN_TEXT = """\
Transcribe the following: user assistant system
And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.
She had your dark suit in greasy wash water all year. Don't ask me to carry an oily rag like that.
The quick brown fox jumps over the lazy dog. One, two, three, four, five, six, seven, eight, nine, ten.
Printing, in the only sense with which we are at present concerned, differs from most if not from all the arts.
"""


def _build_tokenizer(out_dir: Path):
    """Byte-level BPE (like Qwen's), saved as a transformers fast tokenizer in out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,  # ids 0..3, never split
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk> needed
        show_progress=False,
    )
    tok.train_from_iterator(_TRAIN_TEXT.splitlines(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", AUDIO_TAG],
    )
    hf_tok.save_pretrained(out_dir)
    return hf_tok


def _salm_config(hidden: int) -> dict:
    d_enc = 32
    return {
        "pretrained_llm": "llm_backbone",  # relative on purpose: from_pretrained replaces it (see module doc)
        "pretrained_asr": "unused",  # only read when pretrained_weights=True
        "pretrained_weights": False,
        "audio_locator_tag": AUDIO_TAG,
        "prompt_format": "qwen",
        "prevent_freeze_params": [],  # required by SALM's LoRA installer
        # Same shape of LoRA as the released model (r=128, alpha=256 on q/v), only smaller.
        "lora": {"task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                 "target_modules": ["q_proj", "v_proj"]},
        "perception": {
            "output_dim": hidden,
            "preprocessor": {
                "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
                "window": "hann", "features": 128, "n_fft": 512, "log": True, "frame_splicing": 1,
                "dither": 1e-5, "pad_to": 0, "pad_value": 0.0,
            },
            "encoder": {
                "_target_": "nemo.collections.asr.modules.ConformerEncoder",
                "feat_in": 128, "feat_out": -1, "n_layers": 2, "d_model": d_enc, "n_heads": 4,
                "subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_conv_channels": 16,
                "ff_expansion_factor": 2, "self_attention_model": "rel_pos", "att_context_size": [-1, -1],
                "conv_kernel_size": 9, "conv_norm_type": "batch_norm", "xscaling": True,
                "dropout": 0.0, "dropout_pre_encoder": 0.0, "dropout_emb": 0.0, "dropout_att": 0.0,
            },
            # d_model without output_dim makes AudioPerceptionModule add the d_enc -> hidden projection.
            "modality_adapter": {
                "_target_": "nemo.collections.speechlm2.modules.perception.IdentityConnector",
                "d_model": d_enc,
            },
        },
    }


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint to out_dir, reload it through ``SALM.from_pretrained`` and verify it."""
    import torch
    from nemo.collections.speechlm2.models import SALM
    from transformers import Qwen3Config

    from .salm import missing_keys

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _build_tokenizer(out_dir)

    hidden = 64
    llm_cfg = Qwen3Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        # Unlike Qwen3-1.7B: untied and with a wider init, because a tied random model only echoes the last
        # prompt token ("\n" forever); this way the output depends on the audio and batching can be checked.
        tie_word_embeddings=False, initializer_range=0.1,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    llm_cfg.save_pretrained(out_dir / "llm_backbone")

    cfg = _salm_config(hidden)
    torch.manual_seed(seed)
    # Build from the absolute paths; the saved config keeps the portable, relative ones.
    model = SALM({**cfg, "pretrained_llm": str(out_dir / "llm_backbone"), "tokenizer_path": str(out_dir)})
    if model.text_vocab_size != len(model.tokenizer.tokenizer):
        raise RuntimeError("the audio tag was added to the tokenizer: the LLM vocab would not cover it")
    with torch.no_grad():  # peft starts LoRA B at zero; make the adapter actually matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    model.save_pretrained(out_dir, config=cfg)

    loaded = SALM.from_pretrained(str(out_dir))
    if missing := missing_keys(loaded, out_dir / "model.safetensors"):
        raise RuntimeError(f"keys missing from {out_dir}: {missing}")
    ref = model.state_dict()
    if any(not torch.equal(ref[k], v) for k, v in loaded.state_dict().items()):
        raise RuntimeError("reloaded weights differ from the written ones")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m server.backends.tiny_model OUT_DIR", file=sys.stderr)
        return 2
    out = write_tiny_checkpoint(argv[0])
    print(json.dumps({"checkpoint": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
