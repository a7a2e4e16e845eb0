"""bench.cluster with real processes: deploy/nginx.conf renders to a config nginx accepts; two Whisper replicas
behind nginx answer /healthz and take websocket streams through it, balanced by least connections, a dead replica
skipped; the cluster's Redis stops and starts again on the same port with its data."""
from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request

import redis
from websockets.asyncio.client import connect

from bench.cluster import cluster
from bench.nginx import nginx_command, render_nginx_conf
from bench.redis_server import ping
from bench.server import health
from client.stream import start_message


def test_the_nginx_template_renders_to_a_config_nginx_accepts(tmp_path):
    conf = tmp_path / "nginx.conf"
    text = render_nginx_conf([18001, 18002], "127.0.0.1:18000", tmp_path)
    conf.write_text(text)
    assert "${" not in text and "$connection_upgrade" in text and "$remote_addr" in text  # nginx's own, kept
    assert "server 127.0.0.1:18001 max_fails=1 fail_timeout=5s;\n        server 127.0.0.1:18002 " in text
    check = subprocess.run(nginx_command(conf, tmp_path, "-t"), capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert "test is successful" in check.stderr


async def open_stream(url: str):
    """A websocket through nginx, started: returns (connection, its `ready`)."""
    ws = await connect(url, open_timeout=10)
    await ws.send(json.dumps(start_message(16000)))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), timeout=10))


def test_two_replicas_behind_nginx(tmp_path):
    with cluster(2, tmp_path, server_args=("--backend", "whisper")) as c:
        assert c.url == f"ws://127.0.0.1:{c.nginx.port}/v1/listen"
        assert [r.name for r in c.replicas] == ["replica0", "replica1"] and c.redis_url == c.redis.url
        with urllib.request.urlopen(f"{c.nginx.http}/healthz", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
            report = json.load(r)
        assert report["status"] == "ok" and report["backend"] == "whisper", report

        async def two_at_once():
            streams = [await open_stream(c.url) for _ in range(2)]
            # least_conn with a shared zone: the second stream goes to the replica without one.
            sessions = [(await asyncio.to_thread(health, r.url))["sessions"] for r in c.replicas]
            for ws, _ in streams:
                await ws.close()
            return [ready for _, ready in streams], sessions

        readies, sessions = asyncio.run(two_at_once())
        assert all(m["type"] == "ready" and m["session"] for m in readies), readies
        assert sessions == [1, 1], sessions

        # A dead replica is skipped: its one failed connect marks it down, and the stream goes to the other.
        c.replicas[0].proc.kill()
        c.replicas[0].proc.wait()

        async def after_kill():
            readies = []
            for _ in range(3):
                ws, ready = await open_stream(c.url)
                readies.append(ready)
                await ws.close()
            return readies

        assert all(m["type"] == "ready" for m in asyncio.run(after_kill()))
        log = c.nginx.access_log.read_text()
        assert f"upstream=127.0.0.1:{c.replicas[1].port}" in log and " 101 " in log, log

        # Redis stops (for an outage) and starts again on the same port, with what it had.
        port = c.redis.port
        redis.Redis(port=port).set("cluster-test", "kept")
        c.redis.stop()
        assert not ping(c.redis.url) and c.redis.proc.returncode == 0
        c.redis.start()
        assert c.redis.port == port and ping(c.redis.url)
        assert redis.Redis(port=port).get("cluster-test") == b"kept"
    assert c.nginx.proc.poll() is not None and c.redis.proc.poll() is not None
    assert all(r.proc.poll() is not None for r in c.replicas)
