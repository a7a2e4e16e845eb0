"""Greedy decoding for SALM, with the previous partial's tokens checked as a draft in the same forward pass.

A live window is re-run every partial_interval_s with 0.5 s more audio, and its transcript mostly repeats the
previous partial's. Plain greedy decoding spends one sequential LLM step per token regardless. Here the prompt
(text + audio embeddings) and the draft are prefilled together; where the model's own greedy choice agrees with
the draft, those tokens are accepted at once, and decoding continues step by step after the first disagreement.
The output is what plain greedy decoding gives (tested token for token against ``SALM.generate``): a rejected
draft token is masked out of the KV cache and the positions that follow are numbered as if it had never been
there. A draft that is all wrong costs one slightly longer prefill and nothing else.

Rows of a batch accept different lengths: the cache keeps every row's draft slots and the attention mask hides
each row's rejected ones, so the batch stays rectangular and steps on together.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


@dataclass
class DecodeStats:
    """What one batch cost: sequential LLM forward passes after the prefill, and draft tokens accepted."""

    steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0


def audio_prompt_embeds(salm, prompt_ids: torch.Tensor, audios: torch.Tensor, audio_lens: torch.Tensor):
    """Input embeddings and attention mask for one prompt (token ids with one audio placeholder) per clip,
    left-padded: exactly what ``SALM.generate`` hands to the LLM."""
    # The helpers SALM.generate itself uses, taken from its module so that they are the ones it calls.
    from nemo.collections.speechlm2.models.salm import (
        encode_audio_with_optional_chunking,
        replace_placeholders_and_build_targets,
    )

    tokens = prompt_ids.unsqueeze(0).expand(len(audios), -1)
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
    """Batched greedy decoding over an LLM that takes ``inputs_embeds``, as SALM's does."""

    def __init__(self, llm, embed_tokens, eos_id: int, pad_id: int):
        self.llm = llm
        self.embed = embed_tokens
        self.eos_id = eos_id
        self.pad_id = pad_id
        # transformers renamed the forward's cache argument (past_key_values -> cache); the GPU machine may
        # hold another version than this one.
        base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
        params = inspect.signature(base.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._config = base.config

    def _new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self._config)
        except TypeError:  # older transformers
            return DynamicCache()

    def _forward(self, embeds, mask, cache, keep: int) -> torch.Tensor:
        # Positions count only the attended tokens before each one: left padding and rejected draft tokens
        # do not shift what follows (as HF generate numbers left-padded rows).
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1]:]
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=keep, **{self._cache_arg: cache})
        return out.logits

    def _choose(self, logits: torch.Tensor, ignore_eos: bool) -> torch.Tensor:
        if ignore_eos:  # benchmarks: random weights, fixed output lengths
            logits = logits.clone()
            logits[..., self.eos_id] = float("-inf")
        return logits.argmax(-1)

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

        cache = self._new_cache()
        mask = torch.cat([mask, draft_mask], dim=1)
        x = torch.cat([embeds, self.embed(draft_ids).to(embeds.dtype)], dim=1)
        # Logits after the prompt's last token and after each draft token: the model's greedy choice at each.
        choice = self._choose(self._forward(x, mask, cache, keep=width + 1), ignore_eos).tolist()

        out: list[list[int]] = []
        for i, d in enumerate(drafts):
            n = 0
            while n < len(d) and choice[i][n] == d[n]:
                n += 1
            out.append(d[:n] + [choice[i][n]])
            stats.accepted_tokens += n
            mask[i, mask.shape[1] - width + n:] = 0  # rejected draft tokens: hidden from everything after them
        done = [ids[-1] == self.eos_id or len(ids) >= cap for ids, cap in zip(out, caps)]

        while not all(done):
            last = torch.tensor([ids[-1] if not fin else self.pad_id for ids, fin in zip(out, done)],
                                dtype=torch.long, device=device)
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
            step = self._choose(self._forward(self.embed(last)[:, None].to(embeds.dtype), mask, cache, keep=1),
                                ignore_eos)[:, -1].tolist()
            stats.steps += 1
            for i, t in enumerate(step):
                if not done[i]:
                    out[i].append(t)
                    done[i] = t == self.eos_id or len(out[i]) >= caps[i]
        return [ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids for ids in out], stats
