"""The real SALM code path end to end: a tiny random-weight checkpoint loaded from a local directory through
SALM.from_pretrained by `python -m server --backend salm`, real speech over a loopback websocket.
Its words are meaningless (random weights); what is checked is the flow and the protocol's ordering rules."""
import asyncio

from client.stream import stream_audio

from .support.audio import RATE, join_with_silence, load_16k
from .support.v1 import check_protocol_order
from .support.servers import health, http_base, scrape


async def test_jfk_through_tiny_salm_gives_partials_then_finals_in_order(salm_url, tiny_salm_dir):
    result = await stream_audio(load_16k("jfk_16k.wav"), RATE, salm_url, speed=4.0)
    assert result.ready["backend"] == "salm" and result.ready["model"] == str(tiny_salm_dir)
    assert result.partials, "no partial arrived while the window was open"
    assert result.finals and all(f["text"] for f in result.finals)
    check_protocol_order(result.messages)
    assert result.finals[-1]["end"] == 11.0
    # SALM's generate gives no timestamps: each final's words are estimated from its text and audio, and say so.
    for f in result.finals:
        words = f["words"]
        assert " ".join(w["word"] for w in words) == " ".join(f["text"].split())
        assert all(w["estimated"] and w["probability"] is None for w in words)
        assert all(f["start"] <= a["start"] < a["end"] <= b["start"] + 1e-6 and b["end"] <= f["end"] + 1e-6
                   for a, b in zip(words, words[1:]))
    # Each partial after the first, and each final, went in with the window's previous partial as its draft.
    decode = health(salm_url)["decode"]
    assert decode["draft_tokens"] > 0 and 0 < decode["accepted_tokens"] <= decode["draft_tokens"]
    metrics = scrape(salm_url)  # the same counters, for Prometheus
    assert metrics["captions_decode_draft_tokens_total"] >= decode["draft_tokens"]
    assert metrics["captions_decode_steps_total"] >= decode["steps"] > 0


async def test_tiny_salm_batches_concurrent_sessions(salm_url):
    audio, _ = join_with_silence(["ldc93s1.wav", "uberi_one_two_three.wav"], [1.0, 1.0])
    results = await asyncio.gather(*[stream_audio(audio, RATE, salm_url, speed=4.0) for _ in range(4)])
    for r in results:
        check_protocol_order(r.messages)
        assert len(r.finals) == 2
    # Same audio, same deterministic model: every session gets the same finals, whatever it was batched with.
    assert len({tuple(f["text"] for f in r.finals) for r in results}) == 1


async def test_asking_a_room_runs_the_llm_with_the_adapter_off_while_captions_go_on(salm_url):
    """LLM mode through the server: the answer is generated (tokens stream as SSE, within the token budget) by the
    SALM's own LLM with the LoRA off, while a stream captioned at the same time gets the same finals as alone."""
    import json

    import aiohttp

    audio, _ = join_with_silence(["ldc93s1.wav", "uberi_one_two_three.wav"], [1.0, 1.0])
    alone = await stream_audio(audio, RATE, salm_url, speed=0, start_extra={"room": "salm-ask"})
    assert health(salm_url)["intelligence"]["mode"] == "generative"

    async def ask() -> list[str]:
        async with aiohttp.ClientSession() as s:
            async with s.post(http_base(salm_url) + "/v1/rooms/salm-ask/ask",
                              json={"question": "What was said?", "stream": True}) as r:
                assert r.status == 200
                return (await r.text()).strip().split("\n\n")

    events, during = await asyncio.gather(ask(), stream_audio(audio, RATE, salm_url, speed=0))
    tokens = [json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: token")]
    answer = json.loads(events[-1].split("data: ", 1)[1])
    assert events[-1].startswith("event: answer") and answer["mode"] == "generative", events[-1]
    assert len(tokens) >= 2 and "".join(tokens).strip() == answer["answer"]  # random weights: words mean nothing
    assert "LoRA off" in answer["model"] and answer["lines"] == len(alone.finals)
    assert [f["text"] for f in during.finals] == [f["text"] for f in alone.finals]  # captions unaffected
    assert health(salm_url)["engine"]["low_slices"] >= len(tokens) // 4
