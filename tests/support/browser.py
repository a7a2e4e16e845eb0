"""Chromium for the browser tests: Debian's chromium driven by Playwright, headless, optionally with a WAV file as
its microphone; where screenshots go; a mark that skips a test where chromium is missing; page errors collected."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .audio import ROOT

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts" / "browser"  # screenshots and downloads a person can look at

needs_chromium = pytest.mark.skipif(shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists(),
                                    reason="Debian's chromium is not installed (make test installs it)")


def browser_args(wav: Path | None = None) -> list[str]:
    """Headless chromium's flags; with `wav`, that file is the microphone."""
    mic = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
           f"--use-file-for-fake-audio-capture={wav}"] if wav else []
    return ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", *mic]


def record_errors(page, errors: list[str], name: str = ""):
    """Page errors and console errors (CSP violations among them) of `page` go into `errors`; returns the page."""
    label = f"{name}: " if name else ""
    page.on("pageerror", lambda exc: errors.append(f"{label}{exc}"))
    page.on("console", lambda m: errors.append(f"{label}{m.text}") if m.type == "error" else None)
    return page
