"""Microphone audio in: a PortAudio input stream (Capture), and its blocks turned into the exact 16 kHz int16
frames the link sends (AudioFeed, on the event loop)."""
from __future__ import annotations

import asyncio
from typing import Callable

import numpy as np

from .link import Backlog
from .resample import RATE, Framer, MonoResampler, to_pcm16

FRAME_MS = 40              # live frames; the protocol takes 10 ms to 1 s
RATES = (48000, 44100, 32000, 16000, 96000, 22050, 8000)  # tried after the device's own default rate
SILENCE_HINT_S = 5.0       # digital silence this long at the start: the microphone is probably muted


# --- capture: PortAudio ----------------------------------------------------------------------------------

class NoInputDevice(Exception):
    pass


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # the Python package is there but the PortAudio library is not
        raise NoInputDevice(f"PortAudio is not available ({exc}); on Debian/Ubuntu: apt install libportaudio2")
    return sounddevice


def parse_device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def list_input_devices() -> str:
    sd = _sounddevice()
    try:
        default = sd.query_devices(kind="input")["index"]
    except sd.PortAudioError:
        default = None
    lines = [f"{'*' if d['index'] == default else ' '} {d['index']:3d}  {d['name']}  ({d['max_input_channels']} ch, "
             f"{d['default_samplerate']:.0f} Hz, {sd.query_hostapis(d['hostapi'])['name']})"
             for d in sd.query_devices() if d["max_input_channels"] > 0]
    return "\n".join(lines) if lines else "no audio input devices found"


class Capture:
    """One PortAudio input stream at a rate and channel count the device accepts. Each block is copied in the
    audio thread and handed to the event loop, which does everything else."""

    def __init__(self, device: int | str | None, on_block: Callable[[np.ndarray], None],
                 loop: asyncio.AbstractEventLoop):
        sd = _sounddevice()
        try:
            info = sd.query_devices(device, kind="input")
        except (ValueError, sd.PortAudioError) as exc:
            if not any(d["max_input_channels"] > 0 for d in sd.query_devices()):
                raise NoInputDevice("no audio input device found: is a microphone connected and enabled, and "
                                    "the sound server (PulseAudio/PipeWire) running?") from exc
            if device is None:
                raise NoInputDevice("no default input device; choose one with --device (`--list-devices` shows "
                                    "them)") from exc
            raise NoInputDevice(f"--device {device}: {exc} (`--list-devices` shows the choices)") from exc
        self.name = info["name"]
        self.rate, self.channels = self._pick_format(sd, info)
        self._on_block, self._loop = on_block, loop
        self.overflows = 0
        self.first_block = asyncio.Event()  # some devices (and PulseAudio monitors) take a second to deliver
        try:  # 20 ms blocks
            self._stream = sd.InputStream(device=info["index"], samplerate=self.rate, channels=self.channels,
                                          dtype="float32", blocksize=self.rate // 50, callback=self._callback)
        except sd.PortAudioError as exc:  # busy, unplugged, no permission
            raise NoInputDevice(f"cannot open {self.name!r}: {exc}") from exc

    @staticmethod
    def _pick_format(sd, info: dict) -> tuple[int, int]:
        """The device's own rate first (laptop mics run at 44.1 or 48 kHz and often refuse 16 kHz); stereo
        mics may refuse one channel, so ask for up to two and downmix."""
        rates = dict.fromkeys([int(info["default_samplerate"]), *RATES])
        for channels in dict.fromkeys([min(2, info["max_input_channels"]), 1]):
            for rate in rates:
                try:
                    sd.check_input_settings(info["index"], channels=channels, samplerate=rate, dtype="float32")
                    return rate, channels
                except Exception:  # noqa: BLE001 - PortAudio says no in several ways
                    continue
        raise NoInputDevice(f"{info['name']} accepts none of the rates {sorted(rates)} Hz")

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.overflows += 1
        try:
            self._loop.call_soon_threadsafe(self._deliver, indata.copy())  # PortAudio reuses indata
        except RuntimeError:
            pass  # the loop has closed: we are exiting

    def _deliver(self, block: np.ndarray) -> None:
        self.first_block.set()
        self._on_block(block)

    def start(self) -> None:
        self._stream.start()

    def close(self) -> None:
        """Returns once the audio thread has delivered its last block."""
        self._stream.stop()
        self._stream.close()


# --- on the event loop: resampling and framing into the backlog ---------------------------------------------

class AudioFeed:
    """Captured blocks -> mono 16 kHz -> exact 40 ms frames of int16 -> backlog; then wakes the sender."""

    def __init__(self, in_rate: int, backlog: Backlog, wake: Callable[[], None],
                 on_silence: Callable[[], None] | None = None):
        self.resampler = MonoResampler(in_rate)
        self.framer = Framer(RATE * FRAME_MS // 1000)
        self.backlog, self.wake, self.on_silence = backlog, wake, on_silence
        self._peak, self._seconds = 0.0, 0.0
        self.in_rate = in_rate

    def push(self, block: np.ndarray) -> None:
        self._check_silence(block)
        for frame in self.framer.push(self.resampler(block)):
            self.backlog.append(to_pcm16(frame))
        self.wake()

    def flush(self) -> None:
        """End of capture: the resampler's tail and the last short frame."""
        for frame in [*self.framer.push(self.resampler.flush()), self.framer.flush()]:
            self.backlog.append(to_pcm16(frame))
        self.wake()

    def _check_silence(self, block: np.ndarray) -> None:
        if self.on_silence is None or not len(block):
            return
        self._peak = max(self._peak, float(np.abs(block).max()))
        self._seconds += len(block) / self.in_rate
        if self._seconds >= SILENCE_HINT_S:
            if self._peak < 1e-4:
                self.on_silence()
            self.on_silence = None  # one hint at most
