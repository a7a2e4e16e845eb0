"""bench.gpu works end to end on the CPU with the tiny model (its speeds are not checked: they mean nothing here;
its counts, and the numbers derived from others, are), and its full-size model builder works with small shapes
(the GPU run uses the same code at full size)."""

import json
import os
import statistics
import subprocess
import sys

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a hub

from bench.gpu.ask import ASK_TOKENS  # noqa: E402
from bench.gpu.live import schedule  # noqa: E402
from bench.gpu.model import FULL_SHAPES, build_random_salm, make_backend  # noqa: E402
from server.config import IntelligenceConfig  # noqa: E402

from .support.audio import ROOT, load_16k  # noqa: E402


def test_tiny_run_reports_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--tiny", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| N |" in proc.stdout and "NeMo SALM.generate" in proc.stdout
    r = json.loads(out.read_text())
    assert r["mode"] == "tiny" and r["environment"]["device"] == "cpu" and r["model"]["kind"] == "tiny checkpoint"

    ng = r["nemo_generate"]  # a batch of 8 clips of 10 s, 3 tokens a second
    assert ng["new_tokens"] == 30 and ng["rtfx"] == pytest.approx(8 * 10.0 / statistics.median(ng["wall_s"]))
    assert {e["lora_merged"] for e in r["engine"]} == {False, True}
    # the static-cache decoder ran too (CUDA graphs only on a GPU), and the live sections name their decoder
    assert {e["decoder"] for e in r["engine"]} == {"dynamic KV cache", "static KV cache"}
    assert "static_decoder_error" not in r and r["live_decoder"] in {"dynamic KV cache", "static KV cache"}
    # the 8 clips, submitted at once, in batches of max_batch (2 and 8)
    assert [(e["max_batch"], e["batches"]) for e in r["engine"]] == [(2, 4), (8, 1)] * 3
    assert all(e["ratio_to_nemo"] == pytest.approx(e["rtfx"] / ng["rtfx"]) for e in r["engine"])

    live = r["live"]
    assert [lv["streams"] for lv in live["levels"]] == [1, 4] and "max_streams_within_slo" in live
    for lv in live["levels"]:
        due = schedule(lv["streams"], seconds=5.0, window_s=10.0, interval_s=0.5, offset_room_s=60.0)
        assert lv["finals"]["submitted"] == sum(e.final for e in due) >= 1
        assert lv["finals"]["errors"] == 0 and lv["partials"]["errors"] == 0
        assert lv["finals"]["delivered"] == lv["finals"]["submitted"] and lv["partials"]["delivered"] >= 1
        assert lv["final_latency_s"]["p50"] > 0 and lv["partial_latency_s"]["p50"] > 0
        # every caption delivered was decoded in one of the level's batches
        assert round(lv["mean_batch"] * lv["batches"]) >= lv["finals"]["delivered"] + lv["partials"]["delivered"]

    drafts = r["draft_decoding"]
    assert drafts["none"]["accepted_tokens"] == 0
    ceiling = drafts["own output (ceiling)"]  # every draft token right: nothing left to decode step by step
    assert ceiling["accepted_tokens"] == ceiling["draft_tokens"] > 0 and ceiling["steps"] == 0
    assert [a["label"] for a in r["ablation"]] == ["bucketing + drafts", "no bucketing", "no drafts",
                                                   "max_batch 64"]
    assert [(a["bucket_by_length"], a["drafts"], a["max_batch"]) for a in r["ablation"]] == [
        (True, True, 16), (False, True, 16), (True, False, 16), (True, True, 64)]
    assert all(a["finals"]["delivered"] == a["finals"]["submitted"] for a in r["ablation"])
    assert r["ablation"][0]["decode"]["draft_tokens"] > 0 and r["ablation"][2]["decode"]["draft_tokens"] == 0

    ask = r["ask_alone"]  # ask the meeting: LLM mode on the merged model, alone and beside the captions
    # a long meeting, cut to the server's prompt budget: more than one 512-token prefill slice
    assert "ask_error" not in r and 512 < ask["prompt_tokens"] <= IntelligenceConfig().context_tokens
    assert 1 <= ask["new_tokens"] <= ASK_TOKENS and ask["kept_base_weights_mb"] > 0
    [busy] = r["ask_beside_captions"]  # --tiny: the level with asks only
    assert busy["asks"]["askers"] == 10 and busy["asks"]["slices"] >= 1
    assert busy["asks"]["errors"] == [] and busy["finals"]["delivered"] == busy["finals"]["submitted"]

    pipe = r["nemo_pipeline"]  # the batch of 10 s clips in 2 s chunks
    assert "error" not in pipe and pipe["batch_size"] == 8 and pipe["steps"] == 10.0 / pipe["chunk_s"], pipe


def test_schedule_cuts_windows_like_continuous_speech():
    events = schedule(streams=4, seconds=25.0, window_s=10.0, interval_s=0.5, offset_room_s=60.0)
    assert [e.t for e in events] == sorted(e.t for e in events) and all(0 < e.t <= 25.0 for e in events)
    for s in range(4):
        mine = [e for e in events if e.stream == s]
        finals = [e for e in mine if e.final]
        # one final per 10 s, out of phase across streams; a full window between two finals
        assert len(finals) in (2, 3) and all(abs(b.t - a.t - 10.0) < 1e-9 for a, b in zip(finals, finals[1:]))
        assert all(e.end - e.start == 160000 for e in finals[1:])
        partials = [e for e in mine if not e.final]
        assert len(partials) + len(finals) == len(mine) and len(mine) == 50  # one window every 0.5 s of audio
    assert len({e.t for e in events if e.final}) == len([e for e in events if e.final])  # finals spread


def test_full_size_builder_with_small_shapes(tmp_path):
    """build_random_salm at small sizes: Qwen3 with tied embeddings and the real vocabulary, LoRA merged."""
    small = {**FULL_SHAPES, "hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2,
             "head_dim": 16, "enc_layers": 2, "enc_d": 32, "enc_heads": 4, "enc_channels": 16, "lora_r": 4,
             "lora_alpha": 8}
    model = build_random_salm(small, tmp_path, "cpu")
    assert model.text_vocab_size == 151936 and model.llm.config.tie_word_embeddings
    backend = make_backend(model, "cpu", tokens_per_s=3.0, merge=True)
    assert backend.lora_merged
    clip = load_16k("ldc93s1.wav")[:16000 * 2]
    ids = backend.transcribe_ids([clip, clip[:8000]])
    # fixed lengths: EOS is never chosen, each row decodes to its own cap (2 s and 0.5 s at 3 tokens/s)
    assert backend.ignore_eos and [len(row) for row in ids] == [6, 2]
    assert all(isinstance(t.text, str) for t in backend.transcribe([clip]))
