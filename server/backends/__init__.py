"""Backends turn windows of 16 kHz float32 audio into text. The whole interface (duck-typed):

    name: str                                   # "salm" | "sphinx"
    model: str                                  # what was loaded
    transcribe(audios: list[np.ndarray]) -> list[str]   # one batch, blocking; called from the engine's thread
    close() -> None

A backend with ``uses_drafts = True`` also takes ``transcribe(audios, drafts)``: per window, the text of the
previous partial of the same window (or None), which it may use to decode faster, never to change the result.
"""
from __future__ import annotations

import logging

from ..config import BackendConfig

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def choose(cfg: BackendConfig) -> tuple[str, str, str]:
    """Resolves `auto` into (backend name, device, the reason), without loading anything."""
    cuda = cuda_available()
    device = cfg.device if cfg.device != "auto" else ("cuda" if cuda else "cpu")
    if cfg.name != "auto":
        return cfg.name, device, f"backend {cfg.name!r} was asked for"
    if cuda:
        return "salm", "cuda", "a CUDA GPU is present"
    return "sphinx", "cpu", "no CUDA GPU: using the embedded CPU backend"


def create_backend(cfg: BackendConfig):
    name, device, reason = choose(cfg)
    log.info("backend %s on %s (%s)", name, device, reason)
    if name == "salm":
        from .salm import SalmBackend

        backend = SalmBackend(cfg.model, device=device, max_tokens_per_second=cfg.max_tokens_per_second,
                              min_new_tokens_cap=cfg.min_new_tokens_cap, static_cache_len=cfg.static_cache_len,
                              cuda_graphs=cfg.cuda_graphs)
    else:
        from .sphinx import SphinxBackend

        backend = SphinxBackend()
    backend.reason = reason
    return backend
