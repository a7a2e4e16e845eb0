"""A room's outputs through a real server: the HTTP API (speaker tokens only, the URL never shown), SSRF refusals
that send nothing, and a room's finals reaching a Zoom STAND-IN (tests/support/caption_standins.py: a local
server enforcing Zoom's documented caption contract) once each, in order, seq rising by one."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from client.stream import stream_audio

from .support.audio import RATE, join_with_silence
from .support.caption_standins import ZoomStandin
from .support.servers import http_base, server_process

SPEAKER, VIEWER = "speak-key", "view-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with server_process("--backend", "whisper", "--data-dir", str(data), "--set", f"auth.speaker_tokens={SPEAKER}",
                        "--set", f"auth.viewer_tokens={VIEWER}", "--set", "outputs.allowed_hosts=127.0.0.1",
                        log_path=log) as (url, _):
        yield url


def call(method: str, url: str, token: str | None = SPEAKER, body: dict | None = None) -> tuple[int, dict | None]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


async def test_a_rooms_finals_reach_a_zoom_output_once_each_in_order(server):
    outputs = f"{http_base(server)}/v1/rooms/town-hall/outputs"
    async with ZoomStandin() as zoom:
        status, created = call("POST", outputs, body={"kind": "zoom", "url": zoom.url(), "lang": "en-US"})
        assert status == 201 and created["kind"] == "zoom" and created["host"] == "127.0.0.1", created
        assert zoom.signature not in json.dumps(created)  # the caption URL is a credential: never shown
        audio, _ = join_with_silence(["ldc93s1.wav", "jfk_16k.wav"], [1.0, 1.0])
        spoken = await stream_audio(audio, RATE, f"{server}?token={SPEAKER}", speed=0,
                                    start_extra={"room": "town-hall", "speaker": "Ada"})
        said = [f["text"] for f in spoken.finals if f["text"].strip()]
        got = await zoom.accepted_count(len(said), timeout=30)
        assert [a["seq"] for a in got] == list(range(1, len(said) + 1)) and zoom.violations == []
        assert [a["text"] for a in got] == [f"Ada: {t}" for t in said] and zoom.langs == {"en-US"}

        status, listed = call("GET", outputs)
        assert status == 200 and zoom.signature not in json.dumps(listed)
        [shown] = listed["outputs"]
        assert shown["id"] == created["id"] and shown["state"] == "ok" and shown["last_seq"] == len(said)
        assert (shown["delivered"], shown["dropped"]) == (len(said), 0)

        assert call("GET", outputs, token=VIEWER)[0] == 403  # viewers watch; they do not send captions out
        assert call("POST", outputs, token=VIEWER, body={"kind": "zoom", "url": zoom.url()})[0] == 403
        assert call("GET", outputs, token=None)[0] == 401
        assert call("DELETE", f"{outputs}/{created['id']}")[0] == 204
        assert call("GET", outputs)[1]["outputs"] == []
        assert call("DELETE", f"{outputs}/{created['id']}")[0] == 404


async def test_urls_the_server_must_not_call_are_refused_and_nothing_is_sent(server):
    outputs = f"{http_base(server)}/v1/rooms/ssrf/outputs"
    async with ZoomStandin() as zoom:
        port = zoom.url().split(":")[2].split("/")[0]
        query = "/closedcaption?id=1&ns=2&expire=3&spparams=id&signature=4"
        for url in ("http://169.254.169.254/latest/meta-data/", "http://10.1.2.3" + query,
                    f"http://localhost:{port}{query}", "file:///etc/passwd", "gopher://127.0.0.1/x",
                    f"http://user:pw@127.0.0.1:{port}{query}"):
            status, refused = call("POST", outputs, body={"kind": "zoom", "url": url})
            assert status == 400 and refused["message"], (url, refused)
            assert "signature=4" not in refused["message"]  # a refused URL is named without its query
        for body in ({"kind": "fax", "url": zoom.url()}, {"kind": "webhook", "url": zoom.url()}, {"url": 3}, []):
            assert call("POST", outputs, body=body)[0] == 400, body  # a webhook needs its secret
        assert call("GET", outputs)[1]["outputs"] == []
        assert zoom.calls == 0  # nothing was sent anywhere
