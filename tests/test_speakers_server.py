"""Word timings and live speaker labels against a real server (Whisper tiny.en, the GE2E voice encoder), real
speech of two people taking turns: every final's words are timed inside its window; with `diarize` each voice keeps
one label; a rename reaches the room's viewers and the exports (VTT voice tags, SRT prefixes, cues of at most two
lines of 42 characters cut at word times); a resumed session keeps its labels."""
from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections import Counter

import numpy as np
import srt
import webvtt
from websockets.asyncio.client import connect

from client.stream import encode

from .support.audio import RATE, TURNS, heard, load_16k, trim_silence, two_voices, voice_at
from .support.servers import http_base, watch_url
from .support.v1 import collect_until, read_all_sent, recv

FRAME = RATE // 10
ROOM = "voices-" + uuid.uuid4().hex[:8]  # the session-wide server's rooms outlive each test


async def send_audio(ws, audio) -> None:
    for i in range(0, len(audio), FRAME):
        await ws.send(encode(audio[i:i + FRAME], "pcm_s16le"))


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=20) as r:
        return r.read().decode()


def labels_by_voice(finals: list[dict], turns) -> dict[str, Counter]:
    """For each true voice, how often each label was given to its words (a word's voice: at its midpoint)."""
    seen: dict[str, Counter] = {}
    for f in finals:
        for w in f["words"]:
            voice = voice_at(turns, (w["start"] + w["end"]) / 2)
            if voice is not None:
                seen.setdefault(voice, Counter())[w.get("speaker")] += 1
    return seen


def check_words(finals: list[dict]) -> None:
    """Each final's words spell its text, in order, inside its window."""
    for f in finals:
        assert " ".join(w["word"] for w in f["words"]) == " ".join(f["text"].split())
        starts = [w["start"] for w in f["words"]]
        assert starts == sorted(starts)
        assert all(f["start"] - 1e-3 <= w["start"] <= w["end"] <= f["end"] + 1e-3 for w in f["words"])
        assert all(0 < w["probability"] <= 1 and not w.get("estimated") for w in f["words"])


def majority(counts: Counter) -> tuple[str | None, float]:
    label, n = counts.most_common(1)[0]
    return label, n / sum(counts.values())


async def test_diarized_stream_labels_voices_and_a_rename_reaches_viewers_and_exports(cpu_url):
    turns_spec = TURNS + [("jfk_16k.wav", "jfk", 1.0)]  # LJ, JFK, LJ, JFK
    audio, turns = two_voices(turns_spec)
    first_part = round(turns[1][1] * RATE) + RATE // 2  # LJ, then JFK, and the pause after him
    seen: list[dict] = []
    named = asyncio.Event()

    async def viewer() -> None:
        async with connect(watch_url(cpu_url, ROOM)) as ws:
            async for raw in ws:
                seen.append(json.loads(raw))
                if any(w.get("name") == "Priya" for w in seen[-1].get("words", ())):
                    named.set()
                if seen[-1]["type"] == "final" and seen[-1]["end"] >= turns[-1][1] - 0.5:
                    return

    watcher = asyncio.create_task(viewer())  # a room of its own: the shared server's other rooms are not its business
    await collect_until_joined(seen)
    mine: list[dict] = []
    async with connect(cpu_url) as ws:
        await ws.send(json.dumps({"type": "start", "diarize": True, "room": ROOM, "speaker": "Mic"}))
        ready = await recv(ws)
        assert ready["type"] == "ready", ready
        await send_audio(ws, audio[:first_part])
        await ws.send(json.dumps({"type": "finalize"}))  # JFK's window: closed now, not by the audio after it
        await read_all_sent(ws, mine)
        await collect_until(ws, lambda m: any(x["type"] == "final" and x["end"] >= turns[1][1] - 0.5 for x in m),
                            mine, timeout=120)
        before = labels_by_voice([m for m in mine if m["type"] == "final"], turns)
        lj, lj_share = majority(before["lj"])
        jfk, jfk_share = majority(before["jfk"])
        assert lj == "Speaker 1" and jfk == "Speaker 2", before  # numbered in the order voices are first heard
        assert lj_share >= 0.9 and jfk_share >= 0.9, before

        await ws.send(json.dumps({"type": "rename", "speaker": "Speaker 9", "name": "Nobody"}))
        await ws.send(json.dumps({"type": "rename", "speaker": jfk, "name": "Priya"}))
        answers: list[dict] = []
        await collect_until(ws, lambda m: any(x["type"] == "rename" for x in m), answers)
        assert {"type": "rename", "speaker": jfk, "name": "Priya"} in answers
        assert any(x["type"] == "error" and x["code"] == "bad_message" and "Speaker 9" in x["message"]
                   for x in answers), answers
        mine += answers
        await send_audio(ws, audio[first_part:])
        await ws.send(json.dumps({"type": "stop"}))
        await collect_until(ws, lambda m: m and m[-1]["type"] == "end", mine, timeout=120)
    finals = [m for m in mine if m["type"] == "final"]
    check_words(finals)
    after = [f for f in finals if f["start"] >= turns[2][0] - 0.5]
    later = labels_by_voice(after, turns)
    assert majority(later["lj"])[0] == "Speaker 1" and majority(later["jfk"])[0] == jfk, later  # no third voice
    assert {w["name"] for f in after for w in f["words"] if w.get("speaker") == jfk} == {"Priya"}
    assert all(w["name"] == w["speaker"] for f in finals for w in f["words"] if w.get("speaker") == "Speaker 1")

    await asyncio.wait_for(watcher, 60)
    assert named.is_set()
    shown = [m for m in seen if m["type"] == "final" and not m.get("backlog")]
    assert [(f["segment"], f["words"]) for f in shown] == [(f["segment"], f["words"]) for f in finals]
    assert all(f["speaker"] == "Mic" for f in shown)

    # The exports: voices as WebVTT voice tags and SRT prefixes, cues cut at word times (two lines of 42 at most).
    base = f"{http_base(cpu_url)}/v1/transcripts/{ready['session']}"
    vtt = list(webvtt.from_string(get(base + ".vtt"), strict=True))
    assert {c.voice for c in vtt} >= {"Speaker 1", "Speaker 2", "Priya"}, [c.raw_text for c in vtt]
    cues = list(srt.parse(get(base + ".srt")))
    assert len(cues) > len([f for f in finals if f["text"]])  # cut at word times, not one cue per window
    for cue in cues:
        lines = cue.content.split("\n")
        assert len(lines) <= 2 and all(len(line) <= 42 for line in lines[1:]), cue.content
        # a word no voice was found for shows the stream's own label
        assert lines[0].split(": ", 1)[0] in ("Speaker 1", "Speaker 2", "Priya", "Mic"), cue.content
    said = " ".join(c.content.split(": ", 1)[1] for c in cues).split()
    assert said == " ".join(f["text"] for f in finals).split()
    stored = json.loads(get(base + ".json"))["finals"]
    kept = {(w["speaker"], w["name"]) for f in stored for w in f["words"] if w.get("speaker") == jfk}
    assert kept == {(jfk, jfk), (jfk, "Priya")}  # the transcript keeps both: the label, and the name shown then


async def collect_until_joined(seen: list[dict]) -> None:
    """Waits for the viewer's `watching` (it is in the room before the speaker starts)."""
    async def joined() -> None:
        while not seen:
            await asyncio.sleep(0.02)
    await asyncio.wait_for(joined(), 30)


async def test_a_resumed_session_keeps_its_voices(cpu_url):
    audio, turns = two_voices()  # LJ, JFK, LJ
    cut = round(turns[1][1] * RATE) + RATE // 2
    first: list[dict] = []
    async with connect(cpu_url) as ws:
        await ws.send(json.dumps({"type": "start", "diarize": True}))
        ready = await recv(ws)
        await send_audio(ws, audio[:cut])
        await ws.send(json.dumps({"type": "finalize"}))
        await read_all_sent(ws, first)
        await collect_until(ws, lambda m: any(x["type"] == "final" and x["end"] >= turns[1][1] - 0.5 for x in m),
                            first, timeout=120)
        ws.transport.abort()
    got = [m for m in first if m["type"] == "final"]
    offset = round(got[-1]["end"] * RATE)
    rest: list[dict] = []
    async with connect(cpu_url) as ws:
        await ws.send(json.dumps({"type": "start", "resume": ready["session"], "resume_token": ready["resume_token"],
                                  "offset": offset}))
        assert (await recv(ws))["resumed"] is True
        await send_audio(ws, audio[offset:])
        await ws.send(json.dumps({"type": "rename", "speaker": "Speaker 2", "name": "Priya"}))  # a label from before
        await ws.send(json.dumps({"type": "stop"}))
        await collect_until(ws, lambda m: m and m[-1]["type"] == "end", rest, timeout=120)
    assert {"type": "rename", "speaker": "Speaker 2", "name": "Priya"} in rest
    before = labels_by_voice(got, turns)
    after = labels_by_voice([m for m in rest if m["type"] == "final" and m["start"] >= turns[2][0] - 0.5], turns)
    assert majority(before["lj"])[0] == "Speaker 1" and majority(before["jfk"])[0] == "Speaker 2", before
    label, share = majority(after["lj"])
    assert label == "Speaker 1" and share >= 0.9, after  # the same voice after the resume: its old label


async def test_music_noise_a_beep_a_short_yes_and_overlap_harm_nothing(cpu_url):
    """A diarized stream of things that are not one clear voice: each window still gets its final, none of the
    non-speech or too-short windows founds a voice, and a plain stream beside it gets its captions as usual.
    Bad requests get bad_message and the streams go on."""
    rng = np.random.default_rng(3)
    t = np.arange(int(1.5 * RATE)) / RATE
    music = 0.08 * sum(np.sin(2 * np.pi * f * t) for f in (262, 330, 392)) * (0.6 + 0.4 * np.sin(4 * np.pi * t))
    noise = 0.05 * rng.standard_normal(len(t))
    beep = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(RATE // 2) / RATE)
    yes = trim_silence(load_16k("uberi_one_two_three.wav"))[:int(0.4 * RATE)]
    both = (trim_silence(load_16k("lj001_0001.wav"))[:5 * RATE] + trim_silence(load_16k("jfk_16k.wav"))[:5 * RATE]) / 2
    gap = np.zeros(RATE, np.float32)
    parts = [music, gap, noise, gap, beep, gap, yes, gap]
    before_overlap = sum(len(p) for p in parts) / RATE
    audio = np.concatenate([*parts, both, gap]).astype(np.float32)

    async def diarized() -> list[dict]:
        got: list[dict] = []
        async with connect(cpu_url) as ws:
            await ws.send(json.dumps({"type": "start", "diarize": "yes"}))
            assert (await recv(ws))["code"] == "bad_message"
            await ws.send(json.dumps({"type": "start", "diarize": True}))
            assert (await recv(ws))["type"] == "ready"
            await send_audio(ws, audio)
            await ws.send(json.dumps({"type": "stop"}))
            await collect_until(ws, lambda m: m and m[-1]["type"] == "end", got, timeout=120)
        return got

    async def plain() -> list[dict]:
        got: list[dict] = []
        async with connect(cpu_url) as ws:
            await ws.send(json.dumps({"type": "start"}))
            await recv(ws)
            await ws.send(json.dumps({"type": "rename", "speaker": "Speaker 1", "name": "X"}))
            await send_audio(ws, load_16k("ldc93s1.wav"))
            await ws.send(json.dumps({"type": "stop"}))
            await collect_until(ws, lambda m: m and m[-1]["type"] == "end", got, timeout=120)
        return got

    labelled, beside = await asyncio.gather(diarized(), plain())
    finals = [m for m in labelled if m["type"] == "final"]
    assert finals and finals[-1]["end"] >= before_overlap + 5.0  # every window, the overlap's too, got its final
    assert not [w for f in finals for w in f["words"] if w.get("speaker") and w["end"] <= before_overlap]
    assert not [m for m in labelled if m["type"] == "error"]
    assert any(m["type"] == "error" and m["code"] == "bad_message" for m in beside)  # not a diarized stream
    assert heard("ldc93s1.wav", " ".join(m["text"] for m in beside if m["type"] == "final"), 0.5)
