"""Who may do what: speaker tokens stream audio, viewer tokens watch rooms and read transcripts.

A token comes as `Authorization: Bearer T` (or `Token T`, as Deepgram's clients send it), as `?token=T`, or (browsers cannot set headers on a websocket) as
a websocket subprotocol `bearer.T` offered beside `captions`. Tokens are compared in constant time.
"""
from __future__ import annotations

import hmac

from .config import AuthConfig

SUBPROTOCOL = "captions"
BEARER_PREFIX = "bearer."

SPEAK, WATCH = "speak", "watch"
OK, UNAUTHORIZED, FORBIDDEN = 0, 4401, 4403  # close codes


def token_from(headers, params: dict) -> str | None:
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "token"):  # Token: Deepgram's clients (server/deepgram.py)
        return value.strip()
    if params.get("token"):
        return params["token"]
    for proto in headers.get("Sec-WebSocket-Protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith(BEARER_PREFIX):
            return proto[len(BEARER_PREFIX):]
    return None


def _matches(token: str, tokens: list[str]) -> bool:
    # Compare against every token without stopping early, so timing does not tell which one nearly matched.
    found = False
    for t in tokens:
        found |= hmac.compare_digest(token.encode(), t.encode())
    return found


def check(cfg: AuthConfig, action: str, token: str | None) -> int:
    """OK, UNAUTHORIZED (no or unknown token) or FORBIDDEN (a valid token that may not do this)."""
    allowed = cfg.speaker_tokens if action == SPEAK else cfg.speaker_tokens + cfg.viewer_tokens
    if not (cfg.viewer_tokens if action == WATCH else cfg.speaker_tokens):
        return OK  # this action is open: no tokens configured for it
    if token is None:
        return UNAUTHORIZED
    if _matches(token, allowed):
        return OK
    return FORBIDDEN if _matches(token, cfg.speaker_tokens + cfg.viewer_tokens) else UNAUTHORIZED


def select_subprotocol(connection, offered) -> str | None:
    """Accept `captions` when a browser offers it (the token travels as a second, unselected subprotocol)."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None
