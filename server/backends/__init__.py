"""Backends turn windows of 16 kHz float32 audio into text, behind one typed interface and one registry.

Adding a backend is one module (its class and its options dataclass) plus one entry in BACKENDS. Its options
become the config section ``backend.<name>`` (see config.py), its name a choice of ``--backend``.

Every module here is cheap to import: heavy libraries (torch, NeMo, CTranslate2) are imported when a backend is
built, so that a server running one backend never pays for another.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import salm, whisper
from .transcript import Transcript

log = logging.getLogger(__name__)

class ChatModel(Protocol):
    """A backend whose LLM can also run as a plain chat model (SALM: Qwen3 with the LoRA off), as "ask the meeting"
    uses it (intelligence/salm_llm.py): token by token, in bounded slices between caption batches."""

    model: str
    llm_mode_available: bool  # llm_mode() can run (it cannot once the backend is closed)

    @property
    def tokenizer(self) -> Any:
        """The LLM's Hugging Face tokenizer (encode, decode, its chat template if the checkpoint ships one)."""
        ...

    def llm_mode(self) -> AbstractContextManager[None]:
        """While inside: the LLM runs as the chat model, and no caption batch runs."""
        ...

    def llm_cache(self) -> Any:
        """An empty KV cache for llm_logits, held by its caller between slices."""
        ...

    def llm_logits(self, ids: list[int], cache: Any) -> Any:
        """Float logits (vocab,) after the last of ``ids``, which are appended to ``cache``; only in llm_mode."""
        ...


class Backend(Protocol):
    """What the engine and the server use of a backend. Optional abilities are declared, never probed."""

    name: str  # its key in BACKENDS
    model: str  # what was loaded (a hub id, a directory), for `ready` and /healthz
    reason: str  # why this backend runs (set by create_backend), for `ready` and the log
    uses_drafts: bool  # transcribe() makes use of `drafts`; engines skip computing them otherwise
    costly_batches: bool  # a batch costs about what its windows cost one by one (no parallel hardware to fill)

    @property
    def chat(self) -> ChatModel | None:
        """Its LLM as a plain chat model, for "ask the meeting" (SALM with a LoRA adapter: itself); None: none."""
        ...

    def transcribe(self, audios: Sequence[np.ndarray], drafts: Sequence[str | None] | None = None,
                   contexts: Sequence[str | None] | None = None,
                   timed: Sequence[bool] | None = None) -> list[Transcript]:
        """One batch, blocking (the engine calls it from its worker thread): each window's Transcript.

        drafts: the text of each window's previous partial (or None), a hint to decode faster; it never changes
        the result. contexts: each window's stream context (names and terms likely to be said, or None).
        timed: the windows whose words are wanted with their times (finals); a backend that cannot time words
        gives its text only (words None), and the session estimates them (core/words.py).
        A window's transcript never depends on the other windows of its batch."""
        ...

    def decode_stats(self) -> dict[str, int] | None:
        """Running decode counters for /healthz and /metrics, or None if the backend keeps none."""
        ...

    def close(self) -> None:
        """Frees the model. Called once, from a worker thread, under the shutdown deadline."""
        ...


@dataclass(frozen=True)
class Entry:
    options: type  # a dataclass: the config section backend.<name>, with the backend's own default model
    load: Callable[[Any, str, str, float, int], Backend]  # (options, model, device, tokens/s, min cap) -> backend
    describe: str  # for --help


BACKENDS: dict[str, Entry] = {
    "salm": Entry(salm.SalmOptions, salm.load, "NVIDIA Canary-Qwen-2.5B (NeMo SALM); bf16 on CUDA"),
    "whisper": Entry(whisper.WhisperOptions, whisper.load,
                     "Whisper via faster-whisper/CTranslate2; int8 on CPU, float16 on CUDA"),
}
AUTO_GPU, AUTO_CPU = "salm", "whisper"  # what `auto` picks with and without a CUDA GPU


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def choose(name: str, device: str) -> tuple[str, str, str]:
    """Resolves `auto` into (backend name, device, the reason), without loading anything."""
    cuda = cuda_available()
    device = device if device != "auto" else ("cuda" if cuda else "cpu")
    if name != "auto":
        return name, device, f"backend {name!r} was asked for"
    if cuda:
        return AUTO_GPU, device, "a CUDA GPU is present"
    return AUTO_CPU, device, "no CUDA GPU: Whisper on the CPU"


def create_backend(cfg) -> Backend:
    """Builds the backend a BackendConfig asks for (blocking: loading a model takes seconds to minutes)."""
    name, device, reason = choose(cfg.name, cfg.device)
    options = getattr(cfg, name)
    model = cfg.model or options.model
    log.info("backend %s on %s (%s), model %s", name, device, reason, model or "(built in)")
    backend = BACKENDS[name].load(options, model, device, cfg.max_tokens_per_second, cfg.min_new_tokens_cap)
    backend.reason = reason
    return backend
