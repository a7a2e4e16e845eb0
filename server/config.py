"""One typed configuration object, loaded from configs/*.yaml, with CLI overrides applied on top."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .backends import BACKENDS
from .speakers import SpeakerOptions

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    web_root: str = "web"
    data_dir: str = "data"  # transcripts (JSONL per session and per room); relative to the repository root
    certfile: str = ""  # TLS: serve wss:// and https:// when both are set
    keyfile: str = ""
    # Proxies (nginx) whose X-Forwarded-For names the client: per-address limits then count clients, not the
    # proxy. Peers not listed are taken at their word: their own address.
    trusted_proxies: list = field(default_factory=list)


@dataclass
class BackendCommon:
    """What every backend's section shares; BackendConfig adds one typed section per backend, made from the
    registry at import time (so the type checker knows this part only: sections are read by name)."""

    name: str = "auto"  # auto (SALM on a CUDA GPU, Whisper otherwise) or a key of backends.BACKENDS
    model: str = ""  # empty: the chosen backend's own default (backend.<name>.model)
    device: str = "auto"  # auto | cuda | cpu
    max_tokens_per_second: float = 8.0  # generation cap per second of audio (repetition-loop guard)
    min_new_tokens_cap: int = 16


# The common settings plus one typed section per registered backend (backend.salm, backend.whisper, ...): a new
# backend's options appear here by its registry entry alone.
BackendConfig = dataclasses.make_dataclass(
    "BackendConfig", [(name, entry.options, field(default_factory=entry.options)) for name, entry in BACKENDS.items()],
    bases=(BackendCommon,))


@dataclass
class EngineConfig:
    max_batch: int = 16
    max_wait_ms: float = 10.0
    batch_timeout_s: float = 60.0  # a batch running longer fails its windows (backend_error); the server goes on
    bucket_by_length: bool = True  # partials batched with others of similar length (less padding)
    drafts: bool = True  # the previous partial is passed to backends that take drafts (SALM)


@dataclass
class SegmenterConfig:
    vad: str = "webrtc"  # webrtc | silero
    aggressiveness: int = 2
    frame_ms: int = 30
    silero_threshold: float = 0.5
    pre_roll_ms: int = 300
    hangover_ms: int = 600
    min_speech_ms: int = 120
    max_window_s: float = 10.0
    cut_search_s: float = 2.0
    partial_interval_s: float = 0.5


@dataclass
class RoomsConfig:
    backlog: int = 50  # recent finals a viewer gets on joining
    max_rooms: int = 1000  # idle rooms beyond this are forgotten, least recently used first


@dataclass
class LimitsConfig:
    max_connections: int = 1000
    max_connections_per_ip: int = 100
    max_session_s: float = 4 * 3600.0  # wall-clock length of one stream
    idle_timeout_s: float = 60.0  # no message at all for this long closes the stream (after flushing it)
    max_message_bytes: int = 1 << 20  # websocket frame limit; larger frames close the connection with 1009
    max_audio_rate: float = 20.0  # x real time, sustained; a faster client is throttled (reads pause)
    audio_burst_s: float = 30.0  # seconds of audio a client may send at once (e.g. a reconnect's backlog)
    max_frames_per_s: float = 500.0  # frames per second, sustained, whatever their size
    max_queued_finals: int = 500  # past this many finals waiting for the engine, new streams get 1013
    send_timeout_s: float = 30.0  # a client that does not read for this long is disconnected
    handshake_timeout_s: float = 10.0  # a connection that has not completed its handshake by then is closed
    shutdown_deadline_s: float = 15.0  # SIGTERM: flush every stream and stop within this, or exit non-zero
    resume_s: float = 300.0  # a dropped session can be resumed for this long (its open window is flushed at once)


@dataclass
class AuthConfig:
    speaker_tokens: list = field(default_factory=list)  # empty: anyone may stream audio
    viewer_tokens: list = field(default_factory=list)  # empty: anyone may watch rooms and read transcripts
    origins: list = field(default_factory=list)  # browser Origins allowed; empty: any


@dataclass
class RedisConfig:
    """Several replicas sharing rooms, transcripts and resumable sessions (docs/deploy.md). Empty url: one
    process, nothing shared, no Redis needed."""
    url: str = ""  # e.g. redis://127.0.0.1:6379/0
    prefix: str = "captions"  # key prefix: one Redis can serve several deployments
    replica: str = ""  # this replica's name in Redis (presence, resume ownership); empty: host-pid-random
    timeout_s: float = 0.5  # a Redis call taking longer counts as Redis away: a final never waits longer
    heartbeat_s: float = 2.0  # liveness refresh; a replica silent for 3 heartbeats is dead (its speakers go)
    transcript_max: int = 100_000  # finals kept per session and per room stream (approximate trim)
    transcript_ttl_s: float = 7 * 86400.0  # a transcript in Redis lives this long after its last final; 0: forever
    pending_max: int = 10_000  # finals kept to write once Redis is back; the oldest are dropped past this


@dataclass
class IntelligenceConfig:
    """Ask the meeting (server/intelligence/): summaries and questions over a room's or a session's transcript."""
    mode: str = "auto"  # auto | extractive | generative | off; auto: generative with llm_url or SALM, else extractive
    llm_url: str = ""  # an OpenAI-compatible chat API of your own (vLLM, llama.cpp): e.g. http://127.0.0.1:8000/v1
    llm_model: str = ""  # its model name; empty: the server's first model
    llm_api_key_env: str = "LLM_API_KEY"  # the environment variable holding its key (unset: no key sent)
    llm_timeout_s: float = 60.0
    embedder: str = ""  # extractive mode's sentence-embedding model; empty: all-MiniLM-L6-v2 from its PyPI wheel
    preload: bool = False  # load it at start (in the background) instead of on the first ask (~5 s of CPU)
    summary_interval_s: float = 30.0  # a summary is refreshed at most this often, and only after new finals
    summary_passages: int = 5  # extractive summaries: this many central passages
    top_k: int = 3  # passages cited by an extractive answer
    max_concurrent_asks: int = 4  # asks (and summary refreshes) running at once; past it, 429 with Retry-After
    max_answer_tokens: int = 256  # generative: the token budget of one answer
    context_tokens: int = 6000  # generative: the prompt's budget; the most recent lines that fit, the summary too
    max_question_chars: int = 1000
    ask_timeout_s: float = 120.0  # an ask (or summary refresh) not done by then is a 503 (captions kept the engine busy)


@dataclass
class OutputsConfig:
    """A room's captions pushed into Zoom, YouTube Live, Teams and webhooks (server/outputs/, docs/protocol.md)."""
    allowed_hosts: list = field(default_factory=list)  # beside each service's documented caption hosts; a webhook's
    #                                                    host must be here. An address here allows that address too
    max_age_s: float = 15.0  # a caption older than this is dropped and counted, not sent late
    timeout_s: float = 10.0  # every request's
    backoff_s: float = 0.5  # the first retry's wait, doubling per retry up to backoff_max_s
    backoff_max_s: float = 8.0
    queue: int = 1000  # captions waiting per output; past it the oldest is dropped and counted
    max_per_room: int = 8
    fixed: list = field(default_factory=list)  # outputs made at start: {room, kind, url, lang, secret}


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    backend: BackendCommon = field(default_factory=BackendConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    intelligence: IntelligenceConfig = field(default_factory=IntelligenceConfig)
    speakers: SpeakerOptions = field(default_factory=SpeakerOptions)  # live speaker labels (server/speakers/)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)

    def validate(self) -> "Config":
        s = self.segmenter
        if self.backend.name not in ("auto", *BACKENDS):
            raise ValueError(f"backend.name must be one of auto, {', '.join(BACKENDS)}, not {self.backend.name!r}")
        if self.backend.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"backend.device must be auto, cuda or cpu, not {self.backend.device!r}")
        if s.vad not in ("webrtc", "silero"):
            raise ValueError(f"segmenter.vad must be webrtc or silero, not {s.vad!r}")
        if s.vad == "webrtc" and s.frame_ms not in (10, 20, 30):
            raise ValueError("segmenter.frame_ms must be 10, 20 or 30 for webrtcvad")
        if not 0 <= s.aggressiveness <= 3:
            raise ValueError("segmenter.aggressiveness must be 0..3")
        if not 0 < s.cut_search_s < s.max_window_s:
            raise ValueError("segmenter.cut_search_s must be > 0 and < max_window_s")
        if self.engine.max_batch < 1:
            raise ValueError("engine.max_batch must be >= 1")
        # Values that would misbehave rather than fail: a partial every frame, a division by zero, no wait at all.
        positive = {f"{section}.{key}": getattr(getattr(self, section), key) for section, keys in (
            ("segmenter", ("partial_interval_s", "max_window_s")),
            ("limits", ("max_audio_rate", "audio_burst_s", "max_frames_per_s", "idle_timeout_s", "send_timeout_s",
                        "shutdown_deadline_s", "max_session_s", "handshake_timeout_s", "resume_s")),
            ("engine", ("batch_timeout_s",)),
            ("redis", ("timeout_s", "heartbeat_s", "transcript_max", "pending_max")),
            ("intelligence", ("llm_timeout_s", "summary_interval_s", "summary_passages", "top_k",
                              "max_concurrent_asks", "max_answer_tokens", "context_tokens", "max_question_chars",
                              "ask_timeout_s")),
            ("speakers", ("piece_s", "hop_s", "confirm", "max_speakers")),
            ("outputs", ("max_age_s", "timeout_s", "backoff_s", "backoff_max_s", "queue", "max_per_room")),
        ) for key in keys}
        for key, value in positive.items():
            if not value > 0:
                raise ValueError(f"{key} must be > 0, not {value!r}")
        if min(self.engine.max_wait_ms, s.hangover_ms, s.pre_roll_ms, s.min_speech_ms) < 0:
            raise ValueError("engine.max_wait_ms and the segmenter's *_ms settings must be >= 0")
        if self.backend.max_tokens_per_second < 0 or self.backend.min_new_tokens_cap < 1:
            raise ValueError("backend.max_tokens_per_second must be >= 0 and backend.min_new_tokens_cap >= 1")
        if self.redis.url and not self.redis.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis.url must be redis://HOST:PORT/DB, rediss://... or unix://PATH, "
                             f"not {self.redis.url!r}")
        if not 0 < self.speakers.threshold < 1:
            raise ValueError(f"speakers.threshold must be between 0 and 1, not {self.speakers.threshold!r}")
        if self.speakers.min_found_s < 0:
            raise ValueError(f"speakers.min_found_s must be >= 0, not {self.speakers.min_found_s!r}")
        if self.intelligence.mode not in ("auto", "extractive", "generative", "off"):
            raise ValueError(f"intelligence.mode must be auto, extractive, generative or off, "
                             f"not {self.intelligence.mode!r}")
        if self.intelligence.llm_url and not self.intelligence.llm_url.startswith(("http://", "https://")):
            raise ValueError(f"intelligence.llm_url must be an http(s) URL, not {self.intelligence.llm_url!r}")
        if bool(self.server.certfile) != bool(self.server.keyfile):
            raise ValueError("TLS needs both server.certfile and server.keyfile")
        if not all(isinstance(v, str) and v for v in self.server.trusted_proxies):
            raise ValueError("server.trusted_proxies must be a list of IP addresses")
        if not all(isinstance(v, str) and v.strip() for v in self.outputs.allowed_hosts):
            raise ValueError("outputs.allowed_hosts must be a list of host names or addresses")
        for out in self.outputs.fixed:
            if not isinstance(out, dict) or not {"room", "kind", "url"} <= set(out):
                raise ValueError("each of outputs.fixed needs room, kind and url (lang, secret optional)")
        for name in ("speaker_tokens", "viewer_tokens", "origins"):
            if not all(isinstance(v, str) and v for v in getattr(self.auth, name)):
                raise ValueError(f"auth.{name} must be a list of non-empty strings")
        return self


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _build(cls, data: dict, where: str):
    """Builds dataclass `cls` from a mapping, rejecting unknown keys so that typos do not pass silently."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown config key(s) in {where}: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}.{name}")
        elif isinstance(default, bool) and isinstance(value, str):
            word = value.strip().lower()
            if word not in TRUE + FALSE:
                raise ValueError(f"{where}.{name}: {value!r} is not a boolean (true/false, yes/no, on/off, 1/0)")
            kwargs[name] = word in TRUE
        elif isinstance(default, list):
            kwargs[name] = value.split(",") if isinstance(value, str) else list(value or [])
        elif isinstance(default, bool) or value is None:
            kwargs[name] = value
        else:
            kwargs[name] = type(default)(value)  # "8765" -> 8765, 10 -> 10.0
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Loads YAML `path` (default configs/default.yaml) and applies dotted overrides, e.g. {"server.port": 0}."""
    path = Path(path) if path else DEFAULT_CONFIG
    data = yaml.safe_load(path.read_text()) or {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return _build(Config, data, path.name).validate()
