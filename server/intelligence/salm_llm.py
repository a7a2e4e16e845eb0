"""Answers and summaries from the captioning model itself: Canary-Qwen's Qwen3 with the LoRA adapter off.

Canary-Qwen's model card documents this "LLM mode" (``with model.llm.disable_adapter(): model.generate(...)``). Here
it runs on the already-loaded SalmBackend, never delaying captions: an LlmJob decodes in bounded slices (the
prefill, then a few tokens per step() call), each one blocking call meant for the engine's worker thread
(Engine.run_low), inside ``backend.llm_mode()``. So every slice swaps the base weights in and back out, and a caption
batch can run between any two slices: a final waits for at most one slice.

Greedy decoding, Qwen3's thinking off (a live answer cannot wait for a long hidden reasoning). The KV cache stays in
the job between slices: at full size (Qwen3-1.7B, 28 layers x 8 KV heads x 128 x K and V, bf16) it takes 112 KiB per
token, 450 MiB for a 4,096-token prompt, so the number of jobs alive at once is worth bounding by the caller.
"""
from __future__ import annotations

from ..backends import ChatModel

__all__ = ["LlmJob", "IncrementalDetokenizer", "chat_text", "THINK_OFF"]

THINK_OFF = "<think>\n\n</think>\n\n"  # what Qwen3's template puts in the assistant turn with enable_thinking=False
ASSISTANT = "<|im_start|>assistant\n"
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")  # Qwen3's end of turn and end of text
# Prompt tokens per prefill slice: what a final may wait behind. ~512 tokens of a 1.7B model is a few ms on an H200
# (about as long as a few decode steps of a caption batch); the whole prompt is not much slower in chunks.
PREFILL_CHUNK = 512


def chat_text(tokenizer, messages: list[dict]) -> str:
    """The prompt for ``messages``, ending with the assistant's turn opened with an empty think block.

    With the tokenizer's chat template (Qwen3's, shipped with the real checkpoint) and ``enable_thinking=False``.
    A tokenizer without one (the tiny test model's) gets the ChatML text that Qwen3's template renders, built here.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=False)
        if text.endswith(ASSISTANT):  # a template that does not know enable_thinking (Qwen2.5's) leaves it open
            text += THINK_OFF
        return text
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content'].strip()}<|im_end|>\n" for m in messages)
    return turns + ASSISTANT + THINK_OFF


def _neutralized(text: str) -> str:
    """Qwen's special tokens all read <|...|>: spoken text that spells one (or a transcript quoting a prompt) must
    not end a turn or open a new one, so "<|" never reaches the tokenizer whole."""
    return text.replace("<|", "< |")


class IncrementalDetokenizer:
    """Text of a growing token sequence, piece by piece, so that the pieces concatenate to the whole's decoding.

    Byte-level BPE splits a character of several UTF-8 bytes (é, 漢, an emoji) across tokens: decoding a token alone
    gives U+FFFD. As in TGI and vLLM, each new token is decoded together with the tokens since the last point where
    the text was whole, and nothing is emitted while it ends in U+FFFD; finish() emits what is left regardless.
    """

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the window decoded: a point where the text so far was whole
        self._read = 0  # end of what has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._emit(final=False)

    def finish(self) -> str:
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self._read == len(self.ids):
            return ""
        seen = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        if not final and (len(text) <= len(seen) or text.endswith("\ufffd")):
            return ""  # a character still incomplete (or nothing visible yet): wait for the next token
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(seen):]


class LlmJob:
    """One greedy generation over ``messages`` on the SALM's LLM with the adapter off, in bounded slices.

    ``prefill()`` runs the next PREFILL_CHUNK tokens of the prompt (one slice: a 6,000-token prompt at once took
    0.2 s on the tiny model on a CPU, and a final waited behind it) and, with the last chunk, picks the first
    token; each ``step(n)`` runs the rest of the prompt first, a chunk a call, then decodes up to n more tokens
    and returns the new text. Each call blocks, holds the backend (llm_mode) for its duration only, and is meant for
    the engine's worker thread: ``await engine.run_low(job.step, 8)``. Calls must not overlap (one job, one
    caller). Stops at end of turn / end of text or after ``max_new_tokens`` tokens; ``done`` then, and the last
    call's text includes whatever was held back for an incomplete character.
    """

    def __init__(self, backend: ChatModel, messages: list[dict], max_new_tokens: int):
        if not backend.llm_mode_available:
            raise RuntimeError(f"{backend.model}: no LLM mode (the model has no LoRA adapter to switch off)")
        self._backend = backend
        tok = backend.tokenizer
        self.prompt = chat_text(tok, [{"role": m["role"], "content": _neutralized(str(m["content"]))}
                                      for m in messages])
        self.prompt_ids: list[int] = tok.encode(self.prompt, add_special_tokens=False)
        self.max_new_tokens = max_new_tokens
        self._stop = {i for i in tok.convert_tokens_to_ids(list(STOP_TOKENS)) if i is not None}
        self._stop |= {i for i in (tok.eos_token_id,) if i is not None}
        self._detok = IncrementalDetokenizer(tok)
        self._cache = None
        self._fed = 0  # prompt tokens run through the model so far
        self._next: int | None = None  # the last token chosen, not yet fed to the model
        self.done = max_new_tokens <= 0
        self.text = ""  # everything returned so far

    @property
    def ids(self) -> list[int]:
        """The tokens generated so far (no stop token)."""
        return self._detok.ids

    @property
    def tokens(self) -> int:
        return len(self._detok.ids)

    @property
    def prefilled(self) -> bool:
        return self._fed >= len(self.prompt_ids)

    def prefill(self) -> str:
        """Runs the next chunk of the prompt; after the last one, picks the first token and returns its text
        (often ""). Returns "" while chunks remain."""
        if self.prefilled and self._fed:
            raise RuntimeError("already prefilled")
        if self.done:
            return self._out("")
        with self._backend.llm_mode():
            if self._cache is None:
                self._cache = self._backend.llm_cache()
            chunk = self.prompt_ids[self._fed:self._fed + PREFILL_CHUNK]
            logits = self._backend.llm_logits(chunk, self._cache)
            self._fed += len(chunk)
            return self._out(self._take(logits)) if self.prefilled else ""

    def step(self, n: int) -> str:
        """Decodes up to ``n`` more tokens; returns their text. Prompt left to run: its next chunk is this slice."""
        if self.done:
            return ""
        if not self.prefilled or not self._fed:
            return self.prefill()
        text = []
        with self._backend.llm_mode():
            for _ in range(n):
                if self.done:
                    break
                assert self._next is not None  # prefilled: the first token is chosen
                text.append(self._take(self._backend.llm_logits([self._next], self._cache)))
        return self._out("".join(text))

    def close(self) -> None:
        """Frees the KV cache (also freed with the job); the job is done."""
        self._cache = None
        self.done = True

    def _take(self, logits) -> str:
        token = int(logits.argmax())
        if token in self._stop:
            self.done = True
            return ""
        self._next = token
        piece = self._detok.push(token)
        self.done = self.tokens >= self.max_new_tokens
        return piece

    def _out(self, text: str) -> str:
        if self.done:
            text += self._detok.finish()
            self._cache = None  # nothing more to decode: freed now, not with the job
        self.text += text
        return text
