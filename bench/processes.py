"""Local programs the benches and tests start beside the servers (redis-server, nginx): a missing one fails loudly,
a start on a port picked free is retried on a fresh one, and what went wrong is read from the end of its log."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .server import free_port

# A port picked free may be taken by someone else before the process binds it: try a fresh one this many times.
PORT_TRIES = 3
T = TypeVar("T")


def need(binary: str, package: str) -> None:
    """Missing programs fail loudly (like tests/pulse.py), never skip: .ci/apt-packages.txt installs them."""
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} not found: install the Debian package {package} (make sysdeps)")


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} was never written)"


def accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def start_on_port(start: Callable[[int], T], port: int | None) -> T:
    """`start(port)`, or with no port `start(a free port)`, again on a fresh port while the one picked was taken
    before the process bound it (its RuntimeError quotes the log's "Address already in use")."""
    for attempt in range(1 if port else PORT_TRIES):
        try:
            return start(port or free_port())
        except RuntimeError as exc:
            if port or attempt == PORT_TRIES - 1 or "Address already in use" not in str(exc):
                raise
    raise AssertionError("unreachable: the last try returns or raises")
