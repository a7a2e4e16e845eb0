"""Who may open a connection now: shutdown, tokens, connection counts, and whether the engine can take a stream."""
from __future__ import annotations

from collections import Counter

from . import auth
from . import protocol as P
from ..config import Config
from ..core.engine import Engine

Refusal = tuple[int, str, str]  # (websocket close code, error code, message)


def admit(cfg: Config, engine: Engine, per_ip: Counter, closing: bool, ip: str, action: str,
          token: str | None) -> Refusal | None:
    """None, or why a connection from `ip` wanting `action` (auth.SPEAK / auth.WATCH) may not go on."""
    lim = cfg.limits
    if closing:
        return 1001, "shutting_down", "the server is shutting down"
    verdict = auth.check(cfg.auth, action, token)
    if verdict == auth.UNAUTHORIZED:
        return auth.UNAUTHORIZED, "unauthorized", "a valid token is required (Authorization: Bearer, ?token=, " \
                                                  "or the bearer.TOKEN subprotocol)"
    if verdict == auth.FORBIDDEN:
        return auth.FORBIDDEN, "forbidden", f"this token may not {action}"
    if sum(per_ip.values()) >= lim.max_connections:
        return 1013, "too_many_connections", f"the server has {lim.max_connections} connections; try later"
    if per_ip[ip] >= lim.max_connections_per_ip:
        return 1013, "too_many_connections", f"{lim.max_connections_per_ip} connections per address at most"
    if action == auth.SPEAK and engine.stalled:
        return 1013, P.BACKEND_STALLED, f"{engine.stalled}; no new streams until it recovers"
    if action == auth.SPEAK and engine.queued_finals >= lim.max_queued_finals:
        return 1013, "overloaded", "the server is behind on finals and takes no new streams now; try later"
    return None
