"""What can be wrong with what a client sent, whatever its protocol: an error code (documented in
docs/protocol.md) and a message. Every adapter reports these in its own frames (v1 `error`, Deepgram `Error`,
OpenAI `error` events)."""
from __future__ import annotations

BAD_JSON = "bad_json"
BAD_MESSAGE = "bad_message"
UNKNOWN_TYPE = "unknown_type"
NOT_STARTED = "not_started"
ALREADY_STARTED = "already_started"
UNSUPPORTED_SAMPLE_RATE = "unsupported_sample_rate"
UNSUPPORTED_ENCODING = "unsupported_encoding"
UNSUPPORTED_CHANNELS = "unsupported_channels"
BAD_ROOM = "bad_room"
BAD_AUDIO = "bad_audio"
BACKEND_ERROR = "backend_error"
RESUME_UNKNOWN = "resume_unknown"
RESUME_REFUSED = "resume_refused"
BACKEND_STALLED = "backend_stalled"
DIARIZE_UNAVAILABLE = "diarize_unavailable"  # speaker labels asked for, but this server cannot give them


class ProtocolError(Exception):
    """A client's mistake: reported with its code, and the stream goes on (the message or frame is ignored)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
