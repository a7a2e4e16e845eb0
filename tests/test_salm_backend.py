"""SalmBackend on a tiny random-weight SALM checkpoint written offline (server/backends/tiny_model.py).

Random weights make the text meaningless, so these tests check plumbing: loading through from_pretrained,
one string per input, determinism, batching invariance and the generation cap.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a hub

from server.backends.salm import SalmBackend, cut_at_eos  # noqa: E402  (cheap: NeMo is imported lazily)

from .support.audio import ROOT, load_16k  # noqa: E402


@pytest.fixture(scope="session")
def clips() -> list[np.ndarray]:
    jfk, ldc = load_16k("jfk_16k.wav"), load_16k("ldc93s1.wav")
    return [jfk, ldc, jfk[: 16000 * 3 // 2]]  # 11 s, 2.9 s, 1.5 s


@pytest.fixture(scope="session")
def checkpoint(tiny_salm_dir) -> Path:
    return tiny_salm_dir


@pytest.fixture(scope="session")
def backend(checkpoint) -> SalmBackend:
    b = SalmBackend(str(checkpoint), device="cpu")
    yield b
    b.close()


def test_loads_and_transcribes_a_batch(backend, checkpoint, clips):
    assert backend.name == "salm" and backend.model == str(checkpoint)
    texts = [t.text for t in backend.transcribe(clips, timed=[True] * 3)]
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert any(texts), "the tiny model should emit some non-blank text"
    # generate gives no word times: the SALM backend leaves words to the session to estimate (core/words.py)
    assert all(t.words is None for t in backend.transcribe(clips, timed=[True] * 3))


def test_deterministic_and_batch_invariant(checkpoint, clips):
    # A fixed cap (rate 0): otherwise a clip alone gets a smaller cap than in a batch with a longer one.
    b = SalmBackend(str(checkpoint), device="cpu", max_tokens_per_second=0.0, min_new_tokens_cap=24)
    batched = b.transcribe_ids(clips)
    assert b.transcribe_ids(clips) == batched
    # Left padding (SALM.generate) plus length masks in the encoder: each row matches its solo run exactly.
    assert [b.transcribe_ids([c])[0] for c in clips] == batched
    assert b.transcribe(clips) == b.transcribe(clips)


def test_generation_is_capped_per_clip(backend, clips):
    assert backend.max_new_tokens(clips[0]) == 88  # 11 s * 8 tokens/s
    assert backend.max_new_tokens(clips[1]) == 24  # ceil(2.9 s * 8)
    assert backend.max_new_tokens(clips[1][:4000]) == 16  # the floor
    # Random weights never emit EOS here, so each clip's own cap is what stops it, even beside a longer clip.
    lengths = [len(ids) for ids in backend.transcribe_ids(clips)]
    assert lengths == [backend.max_new_tokens(c) for c in clips]
    # ... so a clip's text does not depend on its batch-mates.
    assert backend.transcribe_ids([clips[2]]) == backend.transcribe_ids(clips)[2:]


def test_empty_and_tiny_inputs(backend):
    texts = backend.transcribe([np.zeros(0, np.float32), np.zeros(10, np.float32), np.ones(1, np.float32)])
    assert len(texts) == 3 and all(isinstance(t.text, str) for t in texts)
    assert backend.transcribe([]) == []


def test_cut_at_eos():
    assert cut_at_eos([5, 6, 2, 7, 0, 0], eos_id=2, pad_id=0) == [5, 6]
    assert cut_at_eos([5, 0, 6], eos_id=2, pad_id=0) == [5, 6]
    assert cut_at_eos([2, 5], eos_id=2, pad_id=None) == []


def test_cli_writes_a_movable_checkpoint(tmp_path, backend, clips):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "server.backends.tiny_model", str(tmp_path / "a")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Nothing in the checkpoint may point at where it was written.
    moved = tmp_path / "b"
    shutil.move(tmp_path / "a", moved)
    assert str(tmp_path / "a") not in (moved / "config.json").read_text()
    copy = SalmBackend(str(moved), device="cpu")
    # Same seed, same weights: the CLI's checkpoint behaves like the fixture's.
    assert copy.transcribe(clips) == backend.transcribe(clips)


def test_a_checkpoint_missing_weights_is_refused(tmp_path, checkpoint):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    weights = load_file(broken / "model.safetensors")
    dropped = next(k for k in weights if "encoder" in k)
    del weights[dropped]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="weights missing"):
        SalmBackend(str(broken), device="cpu")
