"""A soak client: one stream at real time, as a microphone sends it, that may drop its connection once mid-speech
and resume; what it received, checked; its finals' latencies. And the bystander that pings throughout."""
from __future__ import annotations

import asyncio
import bisect
import json
import random
import time
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.client import connect

from client.stream import encode, start_message

from .accounting import account
from .audio import RATE, SEND_FRAME, UTTERANCES, plan_drop, speech_and_pauses

OUTAGE_S = (0.2, 1.5)  # how long a dropped client waits before it reconnects


@dataclass
class SendLog:
    """How far into its audio a client has sent, and when each step forward was handed to the socket (before the
    send, on the clock the arrivals are stamped with): a final ending at sample n cannot exist before the frame
    holding sample n - 1 first left. A resumed client's resent backlog moves nothing forward."""
    ends: list[int] = field(default_factory=list)  # samples sent so far, increasing
    times: list[float] = field(default_factory=list)  # time.monotonic() at which each of those was reached

    def sending(self, end: int) -> None:
        """A frame that ends at sample `end` is about to leave."""
        if not self.ends or end > self.ends[-1]:
            self.ends.append(end)
            self.times.append(time.monotonic())

    def first_sent(self, sample: int) -> float | None:
        """When the audio up to `sample` had first all left; None: it never did."""
        i = bisect.bisect_left(self.ends, sample)
        return self.times[i] if i < len(self.ends) else None


def final_latencies(arrivals: list[tuple[float, dict]], sent: SendLog, seconds: float) -> tuple[list[float], int]:
    """Each final's latency: its arrival less the moment its last sample first left this client. Not counted:
    finals resent after a resume (delivered before the drop) and the one the stop flushes (it waits for the stop).
    Also returns how many finals arrived before the audio they end on had been sent: a server defect."""
    latencies, ahead = [], 0
    for arrived, m in arrivals:
        if m["type"] != "final" or m.get("resent") or m["end"] >= seconds - 0.01:
            continue
        since = sent.first_sent(round(m["end"] * RATE))
        if since is None or since > arrived:
            ahead += 1
        else:
            latencies.append(arrived - since)
    return latencies, ahead


async def send_audio(ws, audio: np.ndarray, first: int, last: int, t0: float, sent: SendLog) -> None:
    """audio[first:last] in 100 ms frames, each once all of its audio has been spoken on the clock that began at
    `t0`, like a microphone (what is past already, a resumed client's backlog, at once)."""
    for i in range(first, last, SEND_FRAME):
        end = min(i + SEND_FRAME, last)
        await asyncio.sleep(max(0.0, t0 + end / RATE - time.monotonic()))
        sent.sending(end)
        await ws.send(encode(audio[i:end], "pcm_s16le"))


async def hello(ws, **resume) -> dict:
    """Sends `start` (with `resume`'s fields, if any) and returns the server's first answer."""
    await ws.send(json.dumps(start_message(RATE, **resume)))
    return json.loads(await asyncio.wait_for(ws.recv(), timeout=30))


async def stream_at_real_time(url: str, audio: np.ndarray, record, sent: SendLog, drop_at: int | None = None,
                             outage_s: float = 0.0) -> tuple[list[dict], dict]:
    """Streams `audio` at real time to the end, then `stop`, and waits for the server to end the stream. With
    `drop_at`: at that sample it aborts the TCP connection (no close handshake), waits `outage_s`, resumes from
    the end of the last final received and resends from there (the backlog at once, then real time on the first
    connection's clock). Returns the messages received on both connections, in order, and what happened at the
    drop."""
    messages: list[dict] = []
    info: dict = {"resumed": False}
    live = True

    async def receive(ws) -> None:
        async for raw in ws:
            if not live:
                return  # what arrives after the drop never reached this client
            msg = json.loads(raw)
            messages.append(msg)
            record(msg)

    async with connect(url, max_size=None, open_timeout=30) as ws:
        ready = await hello(ws)
        if ready.get("type") != "ready":
            raise RuntimeError(f"server refused the stream: {ready}")
        t0 = time.monotonic()
        receiver = asyncio.create_task(receive(ws))
        if drop_at is None:
            await send_audio(ws, audio, 0, len(audio), t0, sent)
            await ws.send(json.dumps({"type": "stop"}))
            await asyncio.wait_for(receiver, timeout=300)
            return messages, info
        await send_audio(ws, audio, 0, drop_at, t0, sent)
        live = False
        ws.transport.abort()
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
    finals = [m for m in messages if m["type"] == "final"]
    offset = round(finals[-1]["end"] * RATE) if finals else 0  # the client's backlog begins at its last final's end
    await asyncio.sleep(outage_s)
    live = True
    async with connect(url, max_size=None, open_timeout=30) as ws:
        again = await hello(ws, resume=ready["session"], resume_token=ready["resume_token"], offset=offset)
        if again.get("type") != "ready" or again.get("session") != ready["session"] or not again.get("resumed"):
            messages.append(again)
            info["failure"] = again
            return messages, info
        info.update(resumed=True, position=again["position"], offset=offset)
        receiver = asyncio.create_task(receive(ws))
        await send_audio(ws, audio, offset, len(audio), t0, sent)
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(receiver, timeout=300)
    return messages, info


async def one_client(url: str, n: int, seconds: float, delay: float, drop_rng: random.Random | None) -> dict:
    """One client streaming at real time; with `drop_rng`, it drops once mid-speech and resumes."""
    await asyncio.sleep(delay)  # staggered starts, as real users arrive
    stream = speech_and_pauses(seconds, n % len(UTTERANCES))
    drop_at = plan_drop(stream, drop_rng) if drop_rng else None
    outage_s = drop_rng.uniform(*OUTAGE_S) if drop_at is not None else 0.0
    sent = SendLog()
    arrivals: list[tuple[float, dict]] = []
    messages, drop = await stream_at_real_time(url, stream.audio, lambda m: arrivals.append((time.monotonic(), m)),
                                               sent, drop_at, outage_s)
    finals = [m for m in messages if m["type"] == "final"]
    report = account(finals, stream, drop.get("position"))
    latencies, ahead = final_latencies(arrivals, sent, seconds)
    return {**report, "errors": [m for m in messages if m["type"] == "error"], "final_latencies": latencies,
            "finals_ahead_of_audio": ahead,
            "ended": bool(messages) and messages[-1]["type"] == "end", "dropped": drop_at is not None,
            "resumed": drop.get("resumed", False), "resume_failure": drop.get("failure"),
            "resent": sum(bool(m.get("resent")) for m in finals), "client": n, "drop_at": drop_at and drop_at / RATE,
            **{k: drop[k] for k in ("offset", "position") if k in drop},
            "finals_seen": [(m["segment"], m["start"], m["end"], bool(m.get("resent"))) for m in finals]}


async def ping_while(url: str, rtts: list[float], stop: asyncio.Event) -> None:
    """A bystander connection pinging every 100 ms: its round trips show whether the event loop ever stalls."""
    async with connect(url) as ws:
        while not stop.is_set():
            t = time.monotonic()
            await ws.send('{"type":"ping"}')
            assert json.loads(await ws.recv())["type"] == "pong"
            rtts.append((time.monotonic() - t) * 1000)
            await asyncio.sleep(0.1)
