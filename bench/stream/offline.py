"""bench.stream's offline reference: each whole clip through the same backend in this process (`offline_wer`)."""
from __future__ import annotations

from ..clips import RATE, Clip

OFFLINE_PIECE = 30 * RATE


def offline_transcripts(clips: list[Clip], backend_name: str, model: str, device: str) -> tuple[list | None, str]:
    """Each whole clip through the backend in this process: no VAD, no windows, no streaming."""
    from server.backends import create_backend
    from server.config import load_config

    try:
        overrides = {"backend.name": backend_name, "backend.model": model, "backend.device": device}
        backend = create_backend(load_config(overrides={k: v for k, v in overrides.items() if v}).backend)
    except Exception as exc:  # noqa: BLE001 - any failure to build it locally means: no offline number
        return None, f"backend {backend_name!r} could not be built here: {type(exc).__name__}: {exc}"
    try:
        texts: dict[str, str] = {}  # a clip repeated by cycling is the same audio: decode it once
        for clip in clips:
            if clip.name not in texts:
                # Models take at most 30 s (Whisper's window; SALM truncates past ~40 s): a longer clip is read
                # in consecutive 30 s pieces, as Whisper's own long-form transcription reads it.
                pieces = [clip.audio[i:i + OFFLINE_PIECE] for i in range(0, len(clip.audio), OFFLINE_PIECE)]
                texts[clip.name] = " ".join(t.text for t in backend.transcribe(pieces) if t.text)
        return [texts[c.name] for c in clips], ""
    finally:
        backend.close()

