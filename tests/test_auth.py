"""Tokens, origins and TLS, against a real server."""
import asyncio
import json
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .support.servers import http_base, run_server

SPEAKER, VIEWER = "sp3aker-t0ken", "v1ewer-t0ken"
START = json.dumps({"type": "start", "sample_rate": 16000})


@pytest.fixture(scope="module")
def auth_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    with run_server("--backend", "whisper", "--data-dir", str(tmp), "--set", f"auth.speaker_tokens={SPEAKER}",
                    "--set", f"auth.viewer_tokens={VIEWER}", "--set", "auth.origins=http://good.example",
                    log_path=tmp / "server.log") as url:
        yield url


async def refused(url: str, close_code: int, error: str, **kw) -> None:
    async with connect(url, **kw) as ws:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert msg["type"] == "error" and msg["code"] == error
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == close_code


async def accepted(url: str, **kw) -> dict:
    async with connect(url, **kw) as ws:
        if "/v1/listen" in url:
            await ws.send(START)
        return json.loads(await asyncio.wait_for(ws.recv(), 10)) | {"subprotocol": ws.subprotocol}


async def test_speaker_tokens(auth_url):
    await refused(auth_url, 4401, "unauthorized")
    await refused(auth_url + "?token=wrong", 4401, "unauthorized")
    await refused(auth_url, 4401, "unauthorized", additional_headers={"Authorization": "Bearer " + SPEAKER[:-1]})
    await refused(auth_url + "?token=" + VIEWER, 4403, "forbidden")  # a viewer may not speak
    assert (await accepted(auth_url, additional_headers={"Authorization": f"Bearer {SPEAKER}"}))["type"] == "ready"
    assert (await accepted(auth_url + "?token=" + SPEAKER))["type"] == "ready"
    # Browsers cannot set headers: the token rides as a second subprotocol; the server picks `captions`.
    ready = await accepted(auth_url, subprotocols=["captions", "bearer." + SPEAKER])
    assert ready["type"] == "ready" and ready["subprotocol"] == "captions"


async def test_viewer_tokens(auth_url):
    watch = auth_url.replace("/v1/listen", "/v1/watch?room=stage")
    await refused(watch, 4401, "unauthorized")
    await refused(watch + "&token=nope", 4401, "unauthorized")
    assert (await accepted(watch + "&token=" + VIEWER))["type"] == "watching"
    assert (await accepted(watch + "&token=" + SPEAKER))["type"] == "watching"  # speakers may watch too


def test_transcripts_need_a_viewer_token(auth_url):
    url = http_base(auth_url) + "/v1/transcripts/0123456789ab.json"
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url, timeout=10)
    assert exc.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as exc:  # authorised, but there is no such session
        urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {VIEWER}"}))
    assert exc.value.code == 404


async def test_browser_origins_are_checked(auth_url):
    with pytest.raises(InvalidStatus) as exc:
        await connect(auth_url + "?token=" + SPEAKER, origin="http://evil.example")
    assert exc.value.response.status_code == 403
    ok = await accepted(auth_url + "?token=" + SPEAKER, origin="http://good.example")
    assert ok["type"] == "ready"


async def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with run_server("--backend", "whisper", "--data-dir", str(tmp_path), "--certfile", str(cert), "--keyfile",
                    str(key), log_path=tmp_path / "server.log") as url:
        assert url.startswith("wss://")
        trust = ssl.create_default_context(cafile=str(cert))
        assert (await accepted(url, ssl=trust))["type"] == "ready"
        health = json.loads(urllib.request.urlopen(http_base(url) + "/healthz", context=trust, timeout=10).read())
        assert health["status"] == "ok"


async def test_deepgram_and_openai_browser_clients_send_their_key_as_subprotocols(auth_url):
    """Browsers cannot set headers on a websocket: Deepgram's take ["token", KEY], OpenAI's ["realtime",
    "openai-insecure-api-key.KEY"]. The key is read from there and the protocol name selected, never the key."""
    base = auth_url.removesuffix("/v1/listen")
    deepgram = base + "/v1/listen?encoding=linear16&sample_rate=16000"
    async with connect(deepgram, subprotocols=["token", SPEAKER]) as ws:
        assert ws.subprotocol == "token"
        await ws.send(json.dumps({"type": "CloseStream"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "Metadata"
    with pytest.raises(InvalidStatus) as bad:
        await connect(deepgram, subprotocols=["token", "wrong-key"])
    assert bad.value.response.status_code == 401
    realtime = base + "/v1/realtime?intent=transcription"
    async with connect(realtime, subprotocols=["realtime", f"openai-insecure-api-key.{SPEAKER}"]) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"
    with pytest.raises(InvalidStatus) as bad:
        await connect(realtime, subprotocols=["realtime", "openai-insecure-api-key.wrong-key"])
    assert bad.value.response.status_code == 401
