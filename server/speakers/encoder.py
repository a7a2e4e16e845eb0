"""The speaker encoder: Resemblyzer's GE2E model (resemblyzer==0.1.4 on PyPI, Apache-2.0), 256-d voice embeddings.

The wheel is pinned by hash in requirements-models.txt and installed --no-deps: only its weights file is used. The
network (a 3-layer LSTM of 256 over 40 mel bands, a linear layer, ReLU, L2 norm: 1.42 M parameters) is rebuilt
here, with the mels Resemblyzer computes (librosa's filterbank), so that its package code (which imports
`scipy.ndimage.morphology`, deprecated) is never imported. The weights' sha256 is checked on load.

It runs on the CPU with one torch thread (see `Encoder.pin_thread`): a 10 s window's 25 pieces take about 0.1 s,
and a second thread would take a core from the recognizer for little. Not thread-safe: one caller at a time.
"""
from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
PIECE_FRAMES = 160  # the model's partial utterance: 160 frames of 10 ms, 1.6 s (what it was trained on)
HOP = SAMPLE_RATE // 100  # 10 ms mel frames
N_FFT = SAMPLE_RATE * 25 // 1000  # 25 ms mel window
N_MELS = 40
DIMENSIONS = 256  # of an embedding
# Speech (silences left out) is brought up to this RMS level before its mels, which are power, not log: the level
# reaches the network. Resemblyzer raises whole utterances to -30 dBFS; on the benchmarks here speech at -20 dBFS
# separates similar voices better (docs/benchmarks.md, "Speaker labels"). Louder speech is not lowered.
TARGET_DBFS = -20.0

PACKAGE, VERSION = "resemblyzer", "0.1.4"
WEIGHTS_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"  # resemblyzer/pretrained.pt


def weights_path() -> Path:
    """resemblyzer/pretrained.pt from the installed wheel; a clear error if it is missing or not the pinned one."""
    try:  # found through the wheel's metadata: importing the package would import its code, which is not used
        dist = metadata.distribution(PACKAGE)
        version, path = dist.version, Path(str(dist.locate_file("resemblyzer/pretrained.pt")))
    except metadata.PackageNotFoundError:
        path, version = Path(), None
    if version is None or not path.is_file():
        raise RuntimeError(f"the speaker-embedding model is not installed: `pip install --no-deps --require-hashes "
                           f"-r requirements-models.txt` ({PACKAGE}=={VERSION}), or turn speakers.diarize off")
    if version != VERSION:
        raise RuntimeError(f"{PACKAGE} {version} is installed, but the server is pinned to {VERSION}: "
                           f"pip install --no-deps {PACKAGE}=={VERSION}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise RuntimeError(f"{path} is not the pinned GE2E encoder (sha256 {digest}); reinstall {PACKAGE}=={VERSION}")
    return path


def normalize_volume(audio: np.ndarray) -> np.ndarray:
    """Raises quiet audio to TARGET_DBFS (RMS), as Resemblyzer's preprocessing does (to its own level)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    if rms <= 1e-6:
        return audio
    gain = 10 ** (TARGET_DBFS / 20) / rms
    return (audio * gain).astype(np.float32) if gain > 1 else audio


class Encoder:
    """GE2E speaker embeddings of 1.6 s pieces of 16 kHz audio. Loading blocks (about 1 s): do it off the loop.
    Not thread-safe: one caller (the Diarizer's worker thread)."""

    def __init__(self):
        import librosa
        import torch

        self._torch = torch
        self._mel_basis = torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS))
        self._window = torch.hann_window(N_FFT)
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)["model_state"]
        self._lstm = torch.nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self._linear = torch.nn.Linear(256, DIMENSIONS)
        self._lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
        self._linear.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("linear.")})
        self._lstm.eval()
        self._linear.eval()
        self.name = f"GE2E ({PACKAGE}=={VERSION})"

    def pin_thread(self) -> int:
        """Call once from the thread that will embed: torch runs one thread there. Returns the default thread count
        it replaced: torch keeps a count per thread once that thread has run an op, but set_num_threads also sets
        the default new threads take, which the caller gives back from another thread (set_default_threads)."""
        previous = self._torch.get_num_threads()
        self._torch.set_num_threads(1)
        self.embed([np.zeros(PIECE_FRAMES * HOP, np.float32)])  # an op: this thread's count is now its own
        return previous

    def set_default_threads(self, n: int) -> None:
        self._torch.set_num_threads(n)

    def embed(self, pieces: list[np.ndarray]) -> np.ndarray:
        """(n, 256) unit vectors, one per piece (float32 16 kHz, about 1.6 s each), in one batched call. A piece of
        another length is cut or zero-padded to 1.6 s."""
        if not pieces:
            return np.zeros((0, DIMENSIONS), np.float32)
        torch = self._torch
        n = (PIECE_FRAMES - 1) * HOP  # samples that give PIECE_FRAMES centred frames
        batch = np.stack([p[:n] if len(p) >= n else np.pad(p, (0, n - len(p))) for p in pieces]).astype(np.float32)
        with torch.inference_mode():
            # librosa.feature.melspectrogram's power mels (centred, zero-padded, periodic Hann), as Resemblyzer
            # computes them, in torch: numpy's matmul would wake OpenBLAS's threads on every piece.
            spec = torch.stft(torch.from_numpy(batch), N_FFT, HOP, window=self._window, center=True,
                              pad_mode="constant", return_complex=True).abs() ** 2
            mels = (self._mel_basis @ spec).transpose(1, 2)  # (n, PIECE_FRAMES, 40)
            _, (hidden, _) = self._lstm(mels)
            raw = torch.relu(self._linear(hidden[-1]))
            out = raw / torch.linalg.vector_norm(raw, dim=1, keepdim=True).clamp_min(1e-12)
        return out.numpy()
