"""What the tests share, one concern a module: clips and WER (audio), real servers and what they report (servers),
waiting on a condition instead of sleeping (waits), protocol v1 by hand and the checks every stream must pass (v1),
the mic client's resume link driven as the command drives it (link), websocket peers of a test's own and fake
backends (peers), OpenAI Realtime's event schemas (realtime), the tiny SALM's LLM-mode backends and ask (salm_llm),
Chromium (browser), a private PulseAudio and the mic command (pulse), an OpenAI-compatible stand-in (llm_standin) and
a server whose backend hangs at shutdown (stuck_server). No test module imports another: what two tests share lives
here."""
