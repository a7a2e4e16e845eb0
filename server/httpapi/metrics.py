"""`GET /metrics`: Prometheus text format, for watching a server in production (how many streams, how late the
captions, how busy the model, whether anything blocks the event loop).

Counts and levels are read from the server's own state at scrape time (nothing to keep in step); only the
latency and batch-size histograms are observed as batches complete (Engine.on_batch).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .health import health
from .served import Served

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds from a window's submission to its text: captions are judged at 0.5 s (partials) and 1 s (finals).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _ServerState(Collector):
    def __init__(self, server: Served):
        self.server = server

    def collect(self):
        h, _ = health(self.server)
        for name, doc, value in [
            ("sessions", "live streams", h["sessions"]),
            ("viewers", "connected room viewers", h["viewers"]),
            ("rooms", "rooms in use", h["rooms"]),
            ("queue_depth", "windows waiting for the model", h["queue_depth"]),
            ("queued_finals", "finals waiting for the model", h["queued_finals"]),
            ("resumable", "dropped sessions that can still be resumed", h["resumable"]),
            ("up", "1 while taking new streams (ok or degraded), 0 while shutting down, stalled or overloaded",
             int(h["ready"])),
            ("stalled", "1 while the backend is stuck in a batch", int(h["status"] == "stalled")),
        ]:
            yield GaugeMetricFamily(f"captions_{name}", doc, value=value)
        if "redis" in h:
            yield GaugeMetricFamily("captions_redis_up", "1 while Redis answers (replicas share state)",
                                    value=int(h["redis"]["up"]))
            yield GaugeMetricFamily("captions_redis_pending_writes", "writes kept for Redis while it is away",
                                    value=h["redis"]["pending_writes"])
        if h["rss_mb"] is not None:
            yield GaugeMetricFamily("captions_resident_memory_bytes", "server RSS", value=h["rss_mb"] * 2**20)
        lag = h["loop_lag"]
        yield GaugeMetricFamily("captions_event_loop_lag_recent_max_seconds",
                                "longest event-loop delay over the last 60 s", value=(lag["recent_max_ms"] or 0) / 1000)
        yield CounterMetricFamily("captions_event_loop_blocked", "event-loop delays of 250 ms or more",
                                  value=lag["over_250ms"])
        e = h["engine"]
        for name, doc in [("batches", "model batches run"), ("windows", "windows transcribed"),
                          ("audio_seconds", "seconds of audio transcribed (partials re-run growing windows)"),
                          ("compute_seconds", "seconds the model spent on batches"),
                          ("superseded_partials", "queued partials replaced by a newer one before running"),
                          ("failed_windows", "windows whose batch failed or timed out (sent as backend_error)")]:
            yield CounterMetricFamily(f"captions_engine_{name}", doc, value=e[name])
        for name, value in h.get("decode", {}).items():
            yield CounterMetricFamily(f"captions_decode_{name}", f"SALM greedy decode: {name.replace('_', ' ')}",
                                      value=value)


class Metrics:
    def __init__(self, server: Served):
        # A registry of our own: several servers in one process (the tests) do not share counters.
        self.registry = CollectorRegistry()
        self.registry.register(_ServerState(server))
        self.latency = Histogram("captions_window_latency_seconds",
                                 "from a window's submission to its text (queue + model)", ["kind"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        for kind in ("final", "partial"):
            self.latency.labels(kind)  # listed (at zero) from the first scrape, before any window completes
        self.batch_size = Histogram("captions_batch_size", "windows per model batch", buckets=BATCH_BUCKETS,
                                    registry=self.registry)

    def on_batch(self, windows: list[tuple[bool, float]]) -> None:
        """(final, seconds since submission) for each window of a batch that just completed."""
        self.batch_size.observe(len(windows))
        for final, seconds in windows:
            self.latency.labels("final" if final else "partial").observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
