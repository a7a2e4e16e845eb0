"""Who may open a connection now: shutdown, tokens, connection counts, and whether the engine can take a stream;
and who the client is, behind trusted proxies."""
from __future__ import annotations

from ..config import Config
from ..core.engine import Engine
from ..core.errors import BACKEND_STALLED
from . import auth
from .context import Live

Denied = tuple[int, str, str]  # (websocket close code, error code, message)


def admit(cfg: Config, engine: Engine, live: Live, ip: str, action: str, token: str | None) -> Denied | None:
    """None, or why a connection from `ip` wanting `action` (auth.SPEAK / auth.WATCH) may not go on."""
    lim = cfg.limits
    per_ip = live.per_ip
    if live.closing:
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
        return 1013, BACKEND_STALLED, f"{engine.stalled}; no new streams until it recovers"
    if action == auth.SPEAK and engine.queued_finals >= lim.max_queued_finals:
        return 1013, "overloaded", "the server is behind on finals and takes no new streams now; try later"
    return None


def client_ip(peer: str, headers, trusted_proxies: list[str]) -> str:
    """Who the client is: the peer, or, when the peer is a trusted proxy, the nearest address in its
    X-Forwarded-For that is not a trusted proxy itself (the rightmost one: a client can write anything to the
    left of it)."""
    if peer not in trusted_proxies:
        return peer
    hops = [h.strip() for h in ",".join(headers.getall("X-Forwarded-For", ())).split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted_proxies:
            return hop
    return peer
