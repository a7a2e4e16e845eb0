"""A private PulseAudio for tests: a daemon in its own runtime directory with one null sink whose monitor is the
default source. A clip played into the sink with `paplay` is then what any PortAudio program hears from its
default input (PortAudio -> ALSA -> the `pulse` plugin of libasound2-plugins -> this daemon). `Mic` runs
`python -m client.mic` against it.

Runs as root too: without `--system`, pulseaudio only warns about it.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .audio import ROOT
from .waits import wait_until

PACKAGES = "libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins"


def missing_packages() -> list[str]:
    gone = [pkg for tool, pkg in (("pulseaudio", "pulseaudio"), ("pactl", "pulseaudio-utils"),
                                  ("paplay", "pulseaudio-utils")) if not shutil.which(tool)]
    if not any(glob.glob(f"{lib}/alsa-lib/libasound_module_pcm_pulse.so") for lib in ("/usr/lib/*", "/usr/lib*")):
        gone.append("libasound2-plugins")  # ALSA's `pulse` device: how PortAudio reaches PulseAudio
    return sorted(set(gone))


@dataclass
class Pulse:
    env: dict[str, str]  # pass to every process that should use this daemon
    sink: str
    log: Path

    def pactl(self, *args: str) -> str:
        return subprocess.run(["pactl", *args], env=self.env, check=True, capture_output=True, text=True,
                              timeout=10).stdout

    def play(self, path: Path) -> None:
        """Plays a file into the sink; returns once it has been played."""
        subprocess.run(["paplay", f"--device={self.sink}", str(path)], env=self.env, check=True, timeout=120)


@contextmanager
def pulseaudio(tmp: Path, rate: int = 48000, channels: int = 2, sink: str = "mic"):
    """Starts the daemon, yields a `Pulse`, stops the daemon. Raises (never skips) when the packages are missing:
    CI installs them (`make sysdeps`, .ci/apt-packages.txt)."""
    gone = missing_packages()
    if gone:
        raise RuntimeError(f"the PulseAudio test stack is not installed: missing Debian packages {' '.join(gone)}; "
                           f"`make sysdeps` (as root) or `apt-get install {PACKAGES}`")
    run = tmp / "run"
    (run / "pulse").mkdir(parents=True)
    run.chmod(0o700)
    client_conf = tmp / "client.conf"
    client_conf.write_text("autospawn = no\n")  # a client must never start a second daemon of its own
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(XDG_RUNTIME_DIR=str(run), PULSE_RUNTIME_PATH=str(run / "pulse"), PULSE_STATE_PATH=str(tmp / "state"),
               XDG_CONFIG_HOME=str(tmp / "config"), PULSE_CLIENTCONFIG=str(client_conf),
               PULSE_SERVER=f"unix:{run / 'pulse' / 'native'}")
    log = tmp / "pulseaudio.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "-n",  # -n: no default.pa, so no hardware modules
             "--exit-idle-time=-1", "--realtime=no", "--high-priority=no", "--log-target=stderr",
             "--load=module-native-protocol-unix auth-anonymous=1"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT)
    pulse = Pulse(env, sink, log)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pulseaudio did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        pulse.pactl("load-module", "module-null-sink", f"sink_name={sink}", f"rate={rate}", f"channels={channels}",
                    "sink_properties=device.description=test-microphone")
        pulse.pactl("set-default-sink", sink)
        pulse.pactl("set-default-source", f"{sink}.monitor")
        yield pulse
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Mic:
    """`python -m client.mic ARGS` in the background (env: a Pulse's); collects its output lines as they come."""

    def __init__(self, *args: str, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "client.mic", *args], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=lambda: self.out.extend(self.proc.stdout), daemon=True),
                         threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)]
        for reader in self._readers:
            reader.start()

    def wait_for(self, text: str, timeout: float = 30, lines: list[str] | None = None) -> None:
        """Until `text` shows in a line of stderr (or of `lines`, e.g. self.out); fails if the command exits first."""
        lines = self.err if lines is None else lines
        seen = lambda: any(text in line for line in lines)  # noqa: E731
        try:
            wait_until(lambda: seen() or self.proc.poll() is not None, timeout, repr(text))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the mic command's stderr: {''.join(self.err)}") from None
        assert seen(), (text, self.proc.returncode, self.err)

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return self.proc.returncode, "".join(self.out), "".join(self.err)
