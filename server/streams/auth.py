"""Who may do what: speaker tokens stream audio, viewer tokens watch rooms and read transcripts.

A token comes as `Authorization: Bearer T` (or `Token T`, as Deepgram's clients send it), as `?token=T`, or, since
browsers cannot set headers on a websocket, as websocket subprotocols: ours, `bearer.T` offered beside
`captions`; Deepgram's browser form, `token` then `T`; OpenAI's, `openai-insecure-api-key.T` beside `realtime`.
Tokens are compared in constant time.
"""
from __future__ import annotations

import hmac

from ..config import AuthConfig

SUBPROTOCOL = "captions"
BEARER_PREFIX = "bearer."
DEEPGRAM_SUBPROTOCOL = "token"  # new WebSocket(url, ["token", KEY]): the key is the next one offered
OPENAI_SUBPROTOCOL, OPENAI_KEY_PREFIX = "realtime", "openai-insecure-api-key."

SPEAK, WATCH = "speak", "watch"
OK, UNAUTHORIZED, FORBIDDEN = 0, 4401, 4403  # close codes


def token_from(headers, params: dict) -> str | None:
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "token"):  # Token: Deepgram's clients (server/deepgram.py)
        return value.strip()
    if params.get("token"):
        return params["token"]
    offered = [p.strip() for p in ",".join(headers.getall("Sec-WebSocket-Protocol", ())).split(",") if p.strip()]
    for i, proto in enumerate(offered):
        for prefix in (BEARER_PREFIX, OPENAI_KEY_PREFIX):
            if proto.startswith(prefix):
                return proto[len(prefix):]
        if proto == DEEPGRAM_SUBPROTOCOL and i + 1 < len(offered):
            return offered[i + 1]
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


def viewer_only(cfg: AuthConfig, token: str | None) -> bool:
    """A viewer's token that is no speaker's: it may watch, never speak nor send a room's captions elsewhere."""
    return token is not None and _matches(token, cfg.viewer_tokens) and not _matches(token, cfg.speaker_tokens)


# The protocol names a browser may offer beside its token, one of which the server selects (the token itself is
# never selected): `captions`, Deepgram's `token`, or OpenAI's `realtime`.
SUBPROTOCOLS = (SUBPROTOCOL, DEEPGRAM_SUBPROTOCOL, OPENAI_SUBPROTOCOL)
