"""Real caption servers for the tests and what they report: bench.server's launcher and free_port (the one place a
server subprocess is started and a port is picked, shared with the benchmarks), its HTTP base, /metrics, /healthz
and a room's stored transcript."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

from bench.server import free_port, health, run_server, server_process  # noqa: F401 - re-exported for the tests

from .waits import until


def http_base(ws_url: str) -> str:
    return ws_url.replace("ws", "http", 1).removesuffix("/v1/listen")


def watch_url(ws_url: str, room: str) -> str:
    return ws_url.replace("/v1/listen", f"/v1/watch?room={room}")


def scrape(ws_url: str) -> dict[str, float]:
    """The server's /metrics, read by Prometheus's own parser: {'name{label=value,...}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(http_base(ws_url) + "/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()

    def key(sample) -> str:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
        return sample.name + (f"{{{labels}}}" if labels else "")

    return {key(s): s.value for family in text_string_to_metric_families(text) for s in family.samples}


async def room_finals(ws_url: str, room: str, timeout: float = 20.0) -> list[dict]:
    """The finals of a room's transcript (GET /v1/transcripts/rooms/NAME.json), once it exists."""
    url = f"{http_base(ws_url.split('?')[0])}/v1/transcripts/rooms/{room}.json"
    found: list[list[dict]] = []

    def stored() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                found.append(json.load(r)["finals"])
            return True
        except urllib.error.HTTPError:
            return False

    await until(stored, timeout, f"the transcript of room {room}")
    return found[0]
