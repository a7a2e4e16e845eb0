"""GET /healthz: what an operator or a load balancer needs to know about this server, as one JSON object.

`status`, and whether a load balancer should send this replica new streams (`ready`; HTTP 503 when not):
- "ok": ready;
- "degraded": ready, but Redis is away (`redis` says since when and what is not shared): the replica captions its
  own streams, so it still takes new ones;
- "shutting_down" (draining), "stalled" (the backend is stuck: `reason` says how long) or "overloaded" (more
  finals waiting than limits.max_queued_finals): not ready, 503.
"""
from __future__ import annotations

import dataclasses

from .served import Served


def health(server: Served) -> tuple[dict, int]:
    """(the report, HTTP status) for a CaptionServer."""
    ctx = server.streams
    engine, backend, cluster, live = ctx.engine, ctx.engine.backend, ctx.cluster, ctx.live
    status, reason = "ok", ""
    if live.closing:
        status, reason = "shutting_down", "the server is shutting down"
    elif engine.stalled:
        status, reason = "stalled", engine.stalled
    elif engine.queued_finals >= server.cfg.limits.max_queued_finals:
        status, reason = "overloaded", f"{engine.queued_finals} finals waiting for the engine"
    elif cluster is not None and not cluster.up:
        status, reason = "degraded", f"Redis is away ({cluster.link.error}): not shared now"
    ready = status in ("ok", "degraded")
    report = {"status": status, "ready": ready, **({"reason": reason} if reason else {}), "backend": backend.name,
              "model": backend.model, "sessions": len(live.streams), "resumable": len(ctx.resumable),
              "viewers": len(live.viewers), "rooms": len(ctx.rooms), "queue_depth": engine.queue_depth,
              "queued_finals": engine.queued_finals, "rss_mb": rss_mb(), "loop_lag": server.loop_lag.snapshot(),
              "engine": dataclasses.asdict(engine.stats)}
    if (stats := backend.decode_stats()) is not None:
        report["decode"] = stats
    report["intelligence"] = server.intelligence.describe()
    if cluster is not None:
        report["redis"] = cluster.health()
    return report, 200 if ready else 503


def rss_mb() -> float | None:
    """Resident memory of this process (Linux), for watching growth over long runs."""
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return round(kb / 1024, 1)
    except (OSError, StopIteration, ValueError):
        return None
