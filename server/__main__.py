"""`python -m server`: loads the config, builds the backend and the engine, serves until interrupted."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading

from .app import CaptionServer
from .backends import BACKENDS, create_backend
from .config import load_config
from .core.engine import Engine

log = logging.getLogger("server")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m server", description="Live-captioning websocket server")
    p.add_argument("--config", help="YAML config (default: configs/default.yaml)")
    p.add_argument("--host")
    p.add_argument("--port", type=int, help="0 picks a free port")
    p.add_argument("--backend", choices=["auto", *BACKENDS],
                   help="auto: salm on a CUDA GPU, whisper otherwise. " + "; ".join(
                       f"{name}: {entry.describe}" for name, entry in BACKENDS.items()))
    p.add_argument("--model", help="the backend's model: a hub id / model name or a local directory "
                                   "(default: the backend's own, backend.<name>.model)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"])
    p.add_argument("--vad", choices=["webrtc", "silero"])
    p.add_argument("--certfile", help="TLS certificate (PEM): serve wss:// and https://")
    p.add_argument("--keyfile", help="TLS private key (PEM)")
    p.add_argument("--data-dir", help="where transcripts are kept (default: data/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set segmenter.partial_interval_s=1.0 (repeatable)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


# Each flag is a shorthand for one config key.
FLAG_KEYS = {"host": "server.host", "port": "server.port", "backend": "backend.name", "model": "backend.model",
             "device": "backend.device", "vad": "segmenter.vad", "certfile": "server.certfile",
             "keyfile": "server.keyfile", "data_dir": "server.data_dir"}


def overrides(args: argparse.Namespace) -> dict[str, str]:
    """The flags the user gave, then every --set on top: a flag left out never undoes a --set."""
    given = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        given[key] = value
    return given


async def serve(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, overrides(args))
    # Loading a model blocks for seconds to minutes: keep it off the event loop like all model work.
    backend = await asyncio.to_thread(create_backend, cfg.backend)
    server = CaptionServer(cfg, Engine(backend, cfg.engine))
    await server.start()
    log.info("backend %s, model %s (%s)", backend.name, backend.model, backend.reason)
    # Tests and scripts read this line to find the port: keep its shape.
    print(f"Serving captions at {server.url} (websocket {server.url.replace('http', 'ws', 1)}v1/listen)",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: exiting now, while %s", server.phase)
            _exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    deadline = cfg.limits.shutdown_deadline_s
    log.info("shutting down: flushing open streams within %.0f s (a second signal exits at once)", deadline)

    def past_deadline() -> None:
        log.error("shutdown passed its deadline of %.0f s while %s: exiting with status 3", deadline, server.phase)
        _exit(3)

    # Nothing should block the event loop; if something did, this thread still ends the process on time.
    watchdog = threading.Timer(deadline + 1.0, past_deadline)
    watchdog.daemon = True
    watchdog.start()
    try:
        await asyncio.wait_for(server.shutdown(), deadline)
    except asyncio.TimeoutError:
        past_deadline()
    watchdog.cancel()
    # A backend call stuck in its thread would keep the interpreter from exiting (it joins its threads): say so,
    # and go anyway, since every final is out.
    stuck = [t.name for t in threading.enumerate()
             if t.is_alive() and not t.daemon and t is not threading.current_thread()]
    log.info("stopped%s", f" (leaving stuck threads behind: {', '.join(stuck)})" if stuck else "")
    if stuck:
        _exit(0)


def _exit(status: int) -> None:
    """Exits now, without waiting for threads, once the log and stdout are out."""
    logging.shutdown()
    sys.stdout.flush()
    os._exit(status)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
