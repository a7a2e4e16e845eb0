"""Deepgram's live protocol on `/v1/listen` (being written: issue 15)."""
from __future__ import annotations

from .listen import Listener

DEEPGRAM_PARAMS = frozenset()


def asked_for(query: dict) -> bool:
    return bool(DEEPGRAM_PARAMS & set(query))


def handshake_refusal(cfg, query, request):
    return None


class DeepgramListener(Listener):
    resumable = False
