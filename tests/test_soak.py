"""CI-sized soak: `python -m bench.soak --clients 20 --seconds 10` against a real server with the tiny SALM."""
import json
import subprocess
import sys

from .helpers import ROOT


def test_soak_20_clients_lose_no_final(tmp_path, tiny_salm_dir):
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--clients", "20", "--seconds", "10",
                           "--model", str(tiny_salm_dir), "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["utterances"] == report["finals"] >= 40
    assert report["lost_finals"] == report["doubled_finals"] == report["errors"] == 0
    assert not report["crashed_clients"] and report["unended_streams"] == 0
    assert 0 < report["final_latency_p50"] <= report["final_latency_p95"]
    assert 0 < report["ping_rtt_ms_p50"] <= report["ping_rtt_ms_max"]
    lag = report["server"]["loop_lag"]
    assert 0 <= lag["recent_p99_ms"] <= lag["recent_max_ms"] <= lag["max_ms"]
    assert "PASS" in proc.stdout
