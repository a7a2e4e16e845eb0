"""OpenAI's Realtime transcription sessions on `/v1/realtime` (being written: issue 15)."""
from __future__ import annotations

from .listen import Listener


def handshake_refusal(cfg, query, request):
    return None


class RealtimeListener(Listener):
    resumable = False
