"""Greedy decoding for SALM, with the previous partial's tokens checked as a draft in the same forward pass.

A live window is re-run every partial_interval_s with 0.5 s more audio, and its transcript mostly repeats the
previous partial's. Plain greedy decoding spends one sequential LLM step per token regardless. Here the prompt
(text + audio embeddings) and the draft are prefilled together; where the model's own greedy choice agrees with
the draft, those tokens are accepted at once, and decoding continues step by step after the first disagreement.
The output is what plain greedy decoding gives (tested token for token against ``SALM.generate``): a rejected
draft token is masked out of the KV cache and the positions that follow are numbered as if it had never been
there. A draft that is all wrong costs one slightly longer prefill and nothing else. (Exact in fp32; in bf16 a
draft, like a different batch, can flip a token where the two best logits tie within rounding.)

Rows of a batch accept different lengths: the cache keeps every row's draft slots and the attention mask hides
each row's rejected ones, so the batch stays rectangular and steps on together.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DecodeStats:
    """What one batch cost: sequential LLM forward passes after the prefill, and draft tokens accepted."""

    steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0


def audio_prompt_embeds(salm, tokens: torch.Tensor, audios: torch.Tensor, audio_lens: torch.Tensor):
    """Input embeddings and attention mask for one prompt per clip (``tokens``: (clips, T) ids with one audio
    placeholder each, left-padded with the pad id), left-padded: exactly what ``SALM.generate`` hands to the LLM."""
    # The helpers SALM.generate itself uses, taken from its module so that they are the ones it calls.
    from nemo.collections.speechlm2.models.salm import (
        encode_audio_with_optional_chunking,
        replace_placeholders_and_build_targets,
    )

    token_embeds = salm.embed_tokens(tokens.where(tokens != salm.audio_locator_tag_id, 0))
    audio_embeds = encode_audio_with_optional_chunking(
        salm.perception, audios, audio_lens,
        chunk_size_seconds=salm.cfg.get("encoder_chunk_size_seconds", None), sampling_rate=salm.sampling_rate,
    )
    embeds, _, mask = replace_placeholders_and_build_targets(
        input_ids=tokens, embeds=token_embeds, padding_id=salm.text_pad_id,
        placeholder_id=salm.audio_locator_tag_id, replacements=audio_embeds, target_ids=None,
    )
    return embeds, mask


class GreedyDecoder:
    """Batched greedy decoding over an LLM that takes ``inputs_embeds``, as SALM's does.

    static_len > 0: batches whose prompt, draft and output fit in that many positions decode over a preallocated
    KV cache (one per power-of-two batch size), and on CUDA with ``cuda_graphs`` the decode step is captured once
    per batch size as a CUDA graph and replayed: a step then costs one launch instead of hundreds of small kernels
    each issued from Python. Everything else decodes over a growing (dynamic) cache. Both give the same tokens.
    """

    def __init__(self, llm, embed_tokens, eos_id: int, pad_id: int, static_len: int = 0, cuda_graphs: bool = False):
        self.llm = llm
        self.embed = embed_tokens
        self.eos_id = eos_id
        self.pad_id = pad_id
        base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
        self.config = base.config
        # transformers 5.x renamed the forward's `past_key_values` to `cache` (the old name is an alias until 5.40);
        # the GPU machine's version may differ from this one's.
        self._cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        # The static path hands the model a ready boolean 4-D mask, which only SDPA attention reads that way.
        self.static_len = static_len if getattr(self.config, "_attn_implementation", "sdpa") == "sdpa" else 0
        self.cuda_graphs = cuda_graphs
        self._static: dict[int, _StaticRunner] = {}

    def forward(self, embeds, mask, cache, keep: int, positions=None) -> torch.Tensor:
        if positions is None:
            # Positions count only the attended tokens before each one: left padding and rejected draft tokens
            # do not shift what follows (as HF generate numbers left-padded rows).
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1]:]
        return self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=keep, **{self._cache_arg: cache}).logits

    def choose(self, logits: torch.Tensor, ignore_eos: bool) -> torch.Tensor:
        if ignore_eos:  # benchmarks: random weights, fixed output lengths
            logits = logits.clone()
            logits[..., self.eos_id] = float("-inf")
        return logits.argmax(-1)

    def _runner(self, rows: int, positions: int):
        if not self.static_len or positions > self.static_len:
            return _DynamicRunner(self)
        size = 1 << (rows - 1).bit_length()  # batches of 5..8 rows share the 8-row cache (and graph)
        if size not in self._static:
            self._static[size] = _StaticRunner(self, size, self.static_len, self.cuda_graphs)
        return self._static[size]

    def decode(self, embeds: torch.Tensor, mask: torch.Tensor, caps: list[int],
               drafts: list[list[int]] | None = None, ignore_eos: bool = False) -> tuple[list[list[int]], DecodeStats]:
        """New token ids per row (EOS and what follows dropped), each row stopped at its own cap.

        embeds/mask: the left-padded prompt of each row. drafts: a guess of each row's output (or []).
        """
        rows, device = len(caps), embeds.device
        mask = mask.long()
        stats = DecodeStats()
        # A draft is never longer than its row may emit, and holds no EOS (it is text the model emitted).
        drafts = [[t for t in d if t != self.eos_id][: max(cap - 1, 0)] for d, cap in
                  zip(drafts or [[]] * rows, caps)]
        width = max((len(d) for d in drafts), default=0)
        draft_ids = torch.full((rows, width), self.pad_id, dtype=torch.long, device=device)
        draft_mask = torch.zeros((rows, width), dtype=mask.dtype, device=device)
        for i, d in enumerate(drafts):
            draft_ids[i, : len(d)] = torch.tensor(d, dtype=torch.long)
            draft_mask[i, : len(d)] = 1
        stats.draft_tokens = sum(map(len, drafts))

        mask = torch.cat([mask, draft_mask], dim=1)
        x = torch.cat([embeds, self.embed(draft_ids).to(embeds.dtype)], dim=1)
        kv = self._runner(rows, x.shape[1] + max(caps))
        # Logits after the prompt's last token and after each draft token: the model's greedy choice at each.
        choice = kv.prefill(x, mask, keep=width + 1, ignore_eos=ignore_eos).tolist()

        out: list[list[int]] = []
        for i, d in enumerate(drafts):
            n = 0
            while n < len(d) and choice[i][n] == d[n]:
                n += 1
            out.append(d[:n] + [choice[i][n]])
            stats.accepted_tokens += n
            mask[i, mask.shape[1] - width + n:] = 0  # rejected draft tokens: hidden from everything after them
        done = [ids[-1] == self.eos_id or len(ids) >= cap for ids, cap in zip(out, caps)]

        if not all(done):
            # Finished rows go on being fed (their last token); their outputs are ignored, as HF generate does.
            kv.start(mask, torch.tensor([ids[-1] for ids in out], dtype=torch.long, device=device))
        while not all(done):
            step = kv.step(ignore_eos)
            stats.steps += 1
            for i, t in enumerate(step):
                if not done[i]:
                    out[i].append(t)
                    done[i] = t == self.eos_id or len(out[i]) >= caps[i]
        return [ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids for ids in out], stats


class _DynamicRunner:
    """A KV cache that grows by one position per step (HF's DynamicCache), for one batch."""

    def __init__(self, dec: GreedyDecoder):
        from transformers import DynamicCache

        self.dec = dec
        self.cache = DynamicCache(config=dec.config)

    def prefill(self, x, mask, keep: int, ignore_eos: bool) -> torch.Tensor:
        return self.dec.choose(self.dec.forward(x, mask, self.cache, keep), ignore_eos)

    def start(self, mask, last) -> None:
        self.mask, self.last = mask, last

    def step(self, ignore_eos: bool) -> list[int]:
        rows = self.mask.shape[0]
        self.mask = torch.cat([self.mask, self.mask.new_ones((rows, 1))], dim=1)
        x = self.dec.embed(self.last)[:, None]
        self.last = self.dec.choose(self.dec.forward(x, self.mask, self.cache, keep=1), ignore_eos)[:, -1]
        return self.last.tolist()


class _StaticRunner:
    """A preallocated KV cache of `size` rows x `length` positions, reused batch after batch. Rows past the batch
    are idle fillers. The step reads and writes only fixed buffers, so on CUDA it can be a CUDA graph."""

    def __init__(self, dec: GreedyDecoder, size: int, length: int, cuda_graphs: bool):
        from transformers import StaticCache

        self.dec, self.size, self.length = dec, size, length
        self.cache = StaticCache(config=dec.config, max_cache_len=length)
        self.cuda_graphs = cuda_graphs
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self.rows = 0
        # what a step reads and writes, at fixed addresses
        device = dec.embed.weight.device
        self.keys = torch.zeros((size, length), dtype=torch.bool, device=device)  # which cache slots each row sees
        self.ids = torch.full((size,), dec.pad_id, dtype=torch.long, device=device)
        self.pos = torch.zeros((size, 1), dtype=torch.long, device=device)
        self.slot = torch.zeros((1,), dtype=torch.long, device=device)
        self.out = torch.zeros((size,), dtype=torch.long, device=device)

    def prefill(self, x, mask, keep: int, ignore_eos: bool) -> torch.Tensor:
        rows, width, hidden = x.shape
        self.rows = rows
        filled = x.new_zeros((self.size, width, hidden))
        filled[:rows] = x
        valid = mask.new_zeros((self.size, width))
        valid[:rows] = mask
        self.cache.reset()
        # query i sees key j <= i where j is a real token; and always itself, so that no row is all masked
        # (a query with nothing to attend to would give NaN)
        causal = torch.ones((width, width), dtype=torch.bool, device=x.device).tril()
        allowed = torch.zeros((self.size, 1, width, self.length), dtype=torch.bool, device=x.device)
        allowed[:, 0, :, :width] = causal & valid.bool()[:, None, :]
        allowed[:, 0, :, :width] |= torch.eye(width, dtype=torch.bool, device=x.device)
        positions = (valid.cumsum(-1) - 1).clamp(min=0)
        logits = self.dec.forward(filled, {"full_attention": allowed}, self.cache, keep, positions=positions)
        self.width = width
        return self.dec.choose(logits[:rows], ignore_eos)

    def start(self, mask, last) -> None:
        rows = mask.shape[0]
        self.keys.zero_()
        self.keys[:rows, : self.width] = mask.bool()
        self.ids.fill_(self.dec.pad_id)
        self.ids[:rows] = last
        self.pos.zero_()
        self.pos[:rows, 0] = mask.sum(-1)  # the next token's position: the tokens attended so far
        self.slot.fill_(self.width)  # the cache position the next token is written to

    def _step(self, ignore_eos: bool) -> None:
        """Everything in place on fixed buffers, with no host sync: what a CUDA graph captures."""
        self.keys.index_fill_(1, self.slot, True)
        x = self.dec.embed(self.ids)[:, None]
        logits = self.dec.forward(x, {"full_attention": self.keys[:, None, None, :]}, self.cache, 1,
                                  positions=self.pos)
        self.out.copy_(self.dec.choose(logits, ignore_eos)[:, -1])
        self.ids.copy_(self.out)
        self.pos.add_(1)
        self.slot.add_(1)

    def step(self, ignore_eos: bool) -> list[int]:
        if self.cuda_graphs and self.keys.is_cuda:
            if ignore_eos not in self.graphs:
                self.graphs[ignore_eos] = self._capture(ignore_eos)
            self.graphs[ignore_eos].replay()
        else:
            self._step(ignore_eos)
        return self.out[: self.rows].tolist()

    def _capture(self, ignore_eos: bool):
        """Records one step. The warm-up steps that capturing needs run on this batch's state, so that state is
        saved first and put back after (the cache slots they wrote are rewritten by the real steps)."""
        saved = [t.clone() for t in (self.keys, self.ids, self.pos, self.slot)]
        lengths = [layer.cumulative_length.clone() for layer in self._static_layers()]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(ignore_eos)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(ignore_eos)
        for t, v in zip((self.keys, self.ids, self.pos, self.slot), saved):
            t.copy_(v)
        for layer, v in zip(self._static_layers(), lengths):
            layer.cumulative_length.copy_(v)
        return graph

    def _static_layers(self) -> list[Any]:
        """The StaticCache's layers, each with its `cumulative_length` tensor (transformers types `layers` as any
        kind of cache layer, some without one)."""
        return list(self.cache.layers)
