"""SALM backend: NVIDIA Canary-Qwen-2.5B (or any NeMo speechlm2 SALM checkpoint).

The audio prompt is built as ``SALM.generate`` builds it; decoding is our greedy loop (salm_decode.py), which gives
the same tokens and can check the previous partial's text as a draft. Imports nothing from the rest of the server
package.

The same model also serves as a plain LLM (Canary-Qwen's "LLM mode": Qwen3 with the LoRA adapter off, for summaries
and questions over a transcript): ``SalmBackend.llm_mode()``; the decoding for it is server/intelligence/salm_llm.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .transcript import Transcript

if TYPE_CHECKING:
    import torch  # imported when a backend is built (self._torch): every backend module is cheap to import

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 10  # shorter inputs are zero-padded to 0.1 s so the encoder gets at least one frame
PROMPT = "Transcribe the following: {tag}"
# A stream's context (names and terms likely to be said) goes before the request, in the same user turn.
CONTEXT_PROMPT = "Names and terms that may be said: {context}\n" + PROMPT
MIN_ACCEPTANCE = 0.5  # drafts are used while at least this share of their tokens is accepted
PROBE_EVERY = 10  # below it, one batch in this many still tries them
RECENT_TEXTS = 4096  # outputs remembered as drafts: more than one per live window at any plausible load


@dataclass
class SalmOptions:
    model: str = "nvidia/canary-qwen-2.5b"  # hub id or local checkpoint directory
    static_cache_len: int = 0  # > 0 (e.g. 320 for 10 s windows): decode over preallocated KV caches
    cuda_graphs: bool = False  # on CUDA, with static_cache_len: the decode step replayed as a CUDA graph


def load(options: SalmOptions, model: str, device: str, max_tokens_per_second: float,
         min_new_tokens_cap: int) -> "SalmBackend":
    return SalmBackend(model, device=device, max_tokens_per_second=max_tokens_per_second,
                       min_new_tokens_cap=min_new_tokens_cap, static_cache_len=options.static_cache_len,
                       cuda_graphs=options.cuda_graphs)


class SalmBackend:
    name = "salm"
    uses_drafts = True  # transcribe() takes the previous partial of each window as a draft
    costly_batches = False  # on a GPU a batch of 16 costs little more than one window; on a CPU it is tests only
    reason = ""

    def __init__(self, model: str, device: str = "cuda", **options):
        """Loads `model` (hub id or local directory). `options`: see _setup."""
        # Imported here: loading speechlm2 takes ~10 s, which callers that never build this backend should not pay.
        from nemo.collections.speechlm2.models import SALM

        salm = SALM.from_pretrained(model).eval()
        # from_pretrained loads with strict=False: a checkpoint missing weights would load "fine" and emit noise.
        # Checked before any LoRA merge, which renames the LLM's keys.
        if missing := missing_keys(salm, _weights_file(model)):
            raise RuntimeError(f"{model}: {len(missing)} weights missing from the checkpoint, e.g. {missing[:3]}")
        self._setup(salm, model, device, **options)

    @classmethod
    def from_model(cls, salm, model: str = "in-memory SALM", device: str = "cuda", **options) -> "SalmBackend":
        """A backend around an already-built SALM, which it moves, casts and merges in place.

        For benchmarks that build a random-weight model on the GPU directly; servers load with the constructor.
        """
        backend = cls.__new__(cls)
        backend._setup(salm.eval(), model, device, **options)
        return backend

    def _setup(self, salm, model: str, device: str, max_tokens_per_second: float = 8.0, min_new_tokens_cap: int = 16,
               merge_lora: bool = True, static_cache_len: int = 0, cuda_graphs: bool = False) -> None:
        """max_tokens_per_second / min_new_tokens_cap: each window's generation cap. static_cache_len > 0:
        batches that fit decode over preallocated KV caches, with the step as a CUDA graph if `cuda_graphs`."""
        import torch
        from nemo.collections.common.prompts import PromptFormatter

        from .salm_decode import DecodeStats, GreedyDecoder

        self.model = model
        self.max_tokens_per_second = max_tokens_per_second
        self.min_new_tokens_cap = min_new_tokens_cap
        self._torch = torch
        self._device = torch.device(device)
        # bf16 halves memory and is what the model is run in on GPUs; CPUs get fp32 (bf16 matmuls are slow there).
        # The preprocessor still computes features in fp32 (it casts its input) and only casts its output.
        dtype = torch.bfloat16 if self._device.type == "cuda" else torch.float32
        if self._device.type == "cpu":
            # Leave a core to the event loop: with every core in torch's matmuls, pings and audio wait.
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))

        # Merged before the cast, so that W + BA is rounded to bf16 once. The pre-merge weights are kept for llm_mode.
        had_adapter = _has_adapter(salm)
        self._base_weights = merge_lora_into_llm(salm) if merge_lora else None
        self.lora_merged = self._base_weights is not None
        salm.to(device=self._device, dtype=dtype)
        # Cast as the model was: bf16(W) is what the unmerged model cast to bf16 runs with its adapter disabled.
        if self._base_weights is not None:
            self._base_weights = [(module, name, _frozen(weight.to(device=self._device, dtype=dtype)))
                                  for module, name, weight in self._base_weights]
        # Whether llm_mode() can run the LLM without the adapter: with an adapter, merged (the kept base weights)
        # or not (peft's disable_adapter). Without one there is no "unadapted" LLM to go back to.
        self.llm_mode_available = had_adapter
        self.chat: SalmBackend | None = self if had_adapter else None  # backends.ChatModel
        self.llm_base_bytes = sum(w.numel() * w.element_size() for _, _, w in self._base_weights or [])
        # eval() already skips dither, but zero it explicitly so features are deterministic whatever the mode.
        salm.cfg.perception.preprocessor.dither = 0.0
        salm.perception.preprocessor.featurizer.dither = 0.0
        self._salm = salm
        self._eos_id = salm.text_eos_id
        self._pad_id = salm.text_pad_id
        # Prompts are tokenized once per context (streams keep theirs), the one without context right away.
        self._formatter = PromptFormatter.resolve(salm.cfg.prompt_format)(salm.tokenizer)
        self._prompts: OrderedDict[str | None, list[int]] = OrderedDict()
        self.prompt_ids(None)
        self._decoder = GreedyDecoder(salm.llm, salm.embed_tokens, self._eos_id, self._pad_id,
                                      static_len=static_cache_len, cuda_graphs=cuda_graphs)
        self.ignore_eos = False  # benchmarks on random weights: every row decodes exactly to its cap
        # One batch at a time: the static KV caches are reused from batch to batch, and a batch the engine gave up
        # on (batch_timeout_s) may still be running when the next one starts.
        self._lock = threading.Lock()
        self._llm_thread: int | None = None  # the thread inside llm_mode(): llm_logits runs only there
        self.stats = DecodeStats()  # running totals, for benchmarks and logs
        # Texts this backend returned lately -> the ids it decoded them from. A draft comes back as text, and
        # re-tokenizing text need not give back the same ids (byte-level BPE is not canonical on model output).
        self._recent: OrderedDict[str, list[int]] = OrderedDict()
        self._acceptance = 1.0  # running share of draft tokens accepted (moving average over batches)
        self._batches = 0

    def max_new_tokens(self, audio: np.ndarray) -> int:
        """Generation cap for one clip: bounds the damage of a repetition loop to the audio's plausible length."""
        return max(self.min_new_tokens_cap, math.ceil(len(audio) / SAMPLE_RATE * self.max_tokens_per_second))

    def prompt_ids(self, context: str | None) -> list[int]:
        """The chat-formatted request with its audio placeholder, and the stream's context if it has one."""
        context = context.strip() if context and context.strip() else None
        if context not in self._prompts:
            tag = self._salm.audio_locator_tag
            content = CONTEXT_PROMPT.format(context=context, tag=tag) if context else PROMPT.format(tag=tag)
            turns = [{"role": "user", "content": content}]
            self._prompts[context] = list(self._formatter.encode_dialog(turns=turns)["input_ids"])
            if len(self._prompts) > RECENT_TEXTS:
                self._prompts.popitem(last=False)
        return self._prompts[context]

    def _prompt_tokens(self, rows: int, contexts) -> "torch.Tensor":
        """(rows, T) prompt ids, left-padded with pad where contexts differ in length (SALM un-pads them)."""
        prompts = [self.prompt_ids(c) for c in (contexts or [None] * rows)]
        width = max(map(len, prompts))
        tokens = [[self._pad_id] * (width - len(p)) + p for p in prompts]
        return self._torch.tensor(tokens, dtype=self._torch.long, device=self._device)

    def transcribe_ids(self, audios: Sequence[np.ndarray], drafts: list[list[int]] | None = None,
                       contexts: Sequence[str | None] | None = None) -> list[list[int]]:
        """Generated token ids per input, cut at the first EOS, pad dropped. ``drafts``: a guess at each output
        (the previous partial's ids), checked in the prefill; it changes the cost, never the result.
        ``contexts``: each window's stream context, which goes into its prompt."""
        if not audios:
            return []
        from .salm_decode import audio_prompt_embeds

        torch = self._torch
        clips = [np.asarray(a, dtype=np.float32).reshape(-1) for a in audios]
        lens = [max(len(c), MIN_SAMPLES) for c in clips]
        batch = np.zeros((len(clips), max(lens)), dtype=np.float32)  # right-padded; lengths tell the encoder
        for row, clip in zip(batch, clips):
            row[: len(clip)] = clip
        audio = torch.from_numpy(batch).to(self._device)
        audio_lens = torch.tensor(lens, dtype=torch.int64, device=self._device)
        # Each row stops at its own cap, so a clip's text does not depend on what it was batched with.
        caps = [self.max_new_tokens(c) for c in clips]
        with self._lock, torch.inference_mode():
            tokens = self._prompt_tokens(len(clips), contexts)
            embeds, mask = audio_prompt_embeds(self._salm, tokens, audio, audio_lens)
            ids, stats = self._decoder.decode(embeds, mask, caps, drafts, ignore_eos=self.ignore_eos)
        self.stats.steps += stats.steps
        self.stats.draft_tokens += stats.draft_tokens
        self.stats.accepted_tokens += stats.accepted_tokens
        if stats.draft_tokens:
            self._acceptance += 0.2 * (stats.accepted_tokens / stats.draft_tokens - self._acceptance)
        return [cut_at_eos(row, self._eos_id, self._pad_id) for row in ids]

    def transcribe(self, audios: Sequence[np.ndarray], drafts: Sequence[str | None] | None = None,
                   contexts: Sequence[str | None] | None = None,
                   timed: Sequence[bool] | None = None) -> list[Transcript]:
        """Text per window; ``drafts`` is the previous partial's text of each window, where there is one.
        ``generate`` gives no word timestamps: words are left to the session to estimate (``timed`` is moot)."""
        tok = self._salm.tokenizer
        draft_ids = [self._draft_ids(d) for d in drafts] if drafts and self._drafts_pay() else None
        texts = []
        for ids in self.transcribe_ids(audios, draft_ids, contexts):
            texts.append(tok.ids_to_text(ids).strip() if ids else "")
            self._recent[texts[-1]] = ids
            self._recent.move_to_end(texts[-1])
        while len(self._recent) > RECENT_TEXTS:
            self._recent.popitem(last=False)
        return [Transcript(t) for t in texts]

    def _drafts_pay(self) -> bool:
        """Drafts make the prefill longer and only pay when most of their tokens are accepted, as with a trained
        model re-reading a window. Where they are not (measured: random weights accept ~25 %, and a 100-stream
        CPU soak then ran 23 % slower), only every PROBE_EVERY-th batch tries them, to notice a change."""
        self._batches += 1
        return self._acceptance >= MIN_ACCEPTANCE or self._batches % PROBE_EVERY == 0

    def _draft_ids(self, text: str | None) -> list[int]:
        if not text:
            return []
        return self._recent.get(text) or self._salm.tokenizer.text_to_ids(text)

    def decode_stats(self) -> dict[str, int]:
        return dataclasses.asdict(self.stats)

    @contextmanager
    def llm_mode(self):
        """While inside: the LLM runs without the LoRA adapter (plain Qwen3), and no caption batch runs.

        Holds the backend's lock throughout, so a batch never sees the base weights; callers keep what they do
        inside to one bounded slice (a prefill, a few decode steps), as captions wait for it. With the adapter
        merged, the merged and the kept base Parameter objects of each adapted linear are swapped in and back out:
        no copy, well under a millisecond. Unmerged, peft's own ``disable_adapter()`` does it.

        CUDA graphs (salm_decode's static path) captured the addresses of the merged weights. Swapping Parameter
        objects never writes into those tensors, so after the swap back a replayed graph reads the merged weights
        unchanged; but a graph replayed inside this block would still read the merged ones, so LLM-mode work must
        take the dynamic path (plain forwards over its own DynamicCache, as salm_llm.LlmJob does), never
        ``self._decoder.decode``. Copying the base weights in (``weight.copy_``) would keep graphs valid too, but
        costs two 350 MB copies per slice at full size.
        """
        if not self.llm_mode_available:
            raise RuntimeError(f"{self.model}: no LoRA adapter, so no unadapted LLM to run")
        with self._lock, self._salm.llm.disable_adapter() if self._base_weights is None else self._base_weights_in():
            self._llm_thread = threading.get_ident()
            try:
                yield
            finally:
                self._llm_thread = None

    @property
    def tokenizer(self):
        """The LLM's own (Hugging Face) tokenizer, with its chat template if the checkpoint ships one."""
        return self._salm.tokenizer.tokenizer

    def llm_cache(self):
        """An empty KV cache for llm_logits: one text-only sequence, held by its caller between slices."""
        from transformers import DynamicCache

        return DynamicCache(config=self._decoder.config)

    def llm_logits(self, ids: list[int], cache) -> "torch.Tensor":
        """Float logits (vocab,) after the last of ``ids``, which are appended to ``cache``; only inside llm_mode.

        One sequence without padding, so positions simply continue from the cache's length. The plain dynamic
        forward (see llm_mode on why never the static/graph path)."""
        if self._llm_thread != threading.get_ident():
            raise RuntimeError("llm_logits outside llm_mode() would run the adapted (captioning) LLM")
        torch = self._torch
        past = cache.get_seq_length()
        tokens = torch.tensor([ids], dtype=torch.long, device=self._device)
        mask = torch.ones((1, past + len(ids)), dtype=torch.long, device=self._device)
        positions = torch.arange(past, past + len(ids), device=self._device)[None]
        with torch.inference_mode():
            logits = self._decoder.forward(self._salm.embed_tokens(tokens), mask, cache, keep=1, positions=positions)
        return logits[0, -1].float()

    @contextmanager
    def _base_weights_in(self):
        kept = self._base_weights  # the same list back out, even if close() drops it meanwhile
        assert kept is not None, "llm_mode() swaps the kept base weights only when the adapter was merged"
        _swap(kept)
        try:
            yield
        finally:
            _swap(kept)

    def close(self) -> None:
        device = self._device
        self._salm = None
        self._base_weights = None
        self.llm_mode_available, self.chat = False, None
        if device.type == "cuda":
            self._torch.cuda.empty_cache()


def _has_adapter(salm) -> bool:
    from peft import PeftModel

    return isinstance(salm.llm, PeftModel)


def merge_lora_into_llm(salm) -> list[tuple] | None:
    """Folds SALM's LoRA adapter into the LLM's weights (W += scale * B @ A) and drops the adapter layers.

    Inference then runs the plain LLM: no extra low-rank matmuls per projection and no peft wrappers. The model
    can no longer switch its adapter off (``llm.disable_adapter()``) nor be saved as a LoRA checkpoint; so that it
    can still run without the adapter (SalmBackend.llm_mode), the pre-merge weights of every adapted layer are
    kept. Returns them as (module, parameter name, pre-merge Parameter), the module being the plain linear left in
    the merged model; None if there was no adapter to merge.

    What is kept: a copy of W of each LoRA-targeted linear (peft merges in place, ``weight.data += delta``), and of
    its bias where the adapter has one (lora_bias; Canary-Qwen's has none). For Canary-Qwen (q_proj, v_proj of
    Qwen3-1.7B: 28 layers, hidden 2048; q 16 heads x 128 = 2048 out, v 8 KV heads x 128 = 1024 out) that is
    28 x (2048 + 1024) x 2048 = 176,160,768 parameters: 352,321,536 bytes in bf16 (336 MiB), about 7 % of the
    model's ~5 GB. The tiny test model keeps 2 x (64 + 32) x 64 = 12,288 parameters, 49,152 bytes in fp32.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not _has_adapter(salm):
        return None
    kept = []
    for layer in salm.llm.modules():
        if isinstance(layer, BaseTunerLayer):
            base = layer.get_base_layer()  # the module merge_and_unload puts back in the wrapper's place
            names = ["weight"] + (["bias"] if any(getattr(layer, "lora_bias", {}).values()) else [])
            kept += [(base, name, _frozen(getattr(base, name).detach().clone())) for name in names]
    # SALM keeps embed_tokens outside the LLM; merging touches only the LoRA-wrapped linear layers.
    salm.llm = salm.llm.merge_and_unload()
    return kept


def _swap(kept: list[tuple]) -> None:
    """Exchanges each adapted linear's current Parameter with the kept one: calling it twice restores both."""
    for i, (module, name, other) in enumerate(kept):
        kept[i] = (module, name, getattr(module, name))
        setattr(module, name, other)


def _frozen(tensor):
    """A Parameter (what nn.Module accepts in a parameter's slot), outside autograd: it only ever runs inference."""
    import torch

    return torch.nn.Parameter(tensor, requires_grad=False)


def cut_at_eos(ids: list[int], eos_id: int, pad_id: int | None) -> list[int]:
    """Keep what precedes the first EOS; rows that finished early are filled with pad after it, drop any pad."""
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return [t for t in ids if t != pad_id]


def _weights_file(model: str):
    """model.safetensors of a local checkpoint directory, or of a hub id (already in the cache after loading)."""
    from pathlib import Path

    if Path(model).is_dir():
        return Path(model) / "model.safetensors"
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(model, "model.safetensors"))


def missing_keys(model, weights_file) -> list[str]:
    """State-dict keys of ``model`` absent from the safetensors file.

    safetensors stores shared tensors once (with tied embeddings, as in Qwen3-1.7B, lm_head shares the
    embedding SALM moved out of the LLM), so a key sharing storage with a stored key is not missing.
    """
    from safetensors import safe_open

    with safe_open(str(weights_file), framework="pt") as f:
        stored = set(f.keys())
    sd = model.state_dict()
    stored_ptrs = {sd[k].data_ptr() for k in stored if k in sd}
    return [k for k, v in sd.items() if k not in stored and v.data_ptr() not in stored_ptrs]
