"""bench.gpu's offline runs on one batch of clips: NeMo's plain `SALM.generate` (1), our engine on the same model
(2), NeMo's buffered SALM pipeline (4), and drafts on a batch of growing windows (5)."""
from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from server.config import EngineConfig
from server.core.engine import Engine

from .audio import RATE
from .measure import pct, sync
from .model import Shared
from .report import fmt


def nemo_generate(model, clips, new_tokens: int, device: str, repeats: int) -> dict:
    """NeMo's plain `SALM.generate` on the batch at fixed output lengths: RTFx, the median of `repeats` runs."""
    import torch
    from transformers import GenerationConfig

    prompt = [{"role": "user", "content": f"Transcribe the following: {model.audio_locator_tag}"}]
    gen_cfg = GenerationConfig(bos_token_id=model.text_bos_id, eos_token_id=model.text_eos_id,
                               pad_token_id=model.text_pad_id, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    batch = np.stack(clips)
    lens = torch.full((len(clips),), batch.shape[1], dtype=torch.int64)

    def once():  # from host audio to host ids, as our engine is timed
        with torch.inference_mode():
            out = model.generate(prompts=[[dict(t) for t in prompt] for _ in clips],
                                 audios=torch.from_numpy(batch).to(device), audio_lens=lens.to(device),
                                 generation_config=gen_cfg)
        return out.cpu()

    out = once()  # warm-up: kernels, allocator, autotuning
    if out.shape != (len(clips), new_tokens):
        raise RuntimeError(f"generate returned {tuple(out.shape)}, expected {(len(clips), new_tokens)}")
    walls = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        once()
        walls.append(time.perf_counter() - t)
    wall = float(np.median(walls))
    return {"batch": len(clips), "clip_s": len(clips[0]) / RATE, "new_tokens": new_tokens, "wall_s": walls,
            "rtfx": len(clips) * len(clips[0]) / RATE / wall}


# -- 2. our engine, offline ---------------------------------------------------------------------------------------

async def _engine_pass(backend, clips, max_batch: int, max_wait_ms: float) -> tuple[float, dict]:
    engine = Engine(Shared(backend), EngineConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, batch_timeout_s=600))
    engine.start()
    t = time.perf_counter()
    texts = await asyncio.gather(*(engine.submit(f"clip{i}", c, final=True) for i, c in enumerate(clips)))
    wall = time.perf_counter() - t
    await engine.close()
    if len(texts) != len(clips) or not all(isinstance(x.text, str) for x in texts):
        raise RuntimeError("the engine did not return one text per clip")
    return wall, {"batches": engine.stats.batches}


def engine_offline(backend, clips, max_batch: int, max_wait_ms: float, repeats: int, merged: bool,
                   decoder: str) -> dict:
    asyncio.run(_engine_pass(backend, clips, max_batch, max_wait_ms))  # warm-up
    runs = [asyncio.run(_engine_pass(backend, clips, max_batch, max_wait_ms)) for _ in range(repeats)]
    walls = [w for w, _ in runs]
    wall = float(np.median(walls))
    return {"lora_merged": merged, "decoder": decoder, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
            "batches": runs[0][1]["batches"], "wall_s": walls, "rtfx": len(clips) * len(clips[0]) / RATE / wall}


def draft_decoding(backend, source: np.ndarray, args, device: str) -> dict:
    """Growing windows decoded as one batch three ways: no draft, the previous partial's output as the draft (as
    live), and the window's own output (every draft token right: the ceiling). Random weights make the middle
    row's acceptance unlike a real model's, which lies between the other two rows."""
    rows = 32 if not args.tiny else 4
    step = int(args.partial_interval_s * RATE)
    # window i ends (2 + 8 * i / rows) s in, as a partial of a window opened at offset i * 3.7 s
    ends = [int((2.0 + 8.0 * i / rows) * RATE) // step * step for i in range(rows)]
    starts = [int(i * 3.7 * RATE) for i in range(rows)]
    now = [source[s:s + e] for s, e in zip(starts, ends)]
    before = [source[s:s + e - step] for s, e in zip(starts, ends)]
    prev_ids = backend.transcribe_ids(before)
    own_ids = backend.transcribe_ids(now)
    result = {"batch": rows, "window_s": [ends[0] / RATE, ends[-1] / RATE]}
    for label, drafts in [("none", None), ("previous partial", prev_ids), ("own output (ceiling)", own_ids)]:
        walls, st = [], None
        for _ in range(1 + args.repeats):  # the first is a warm-up
            s0 = dataclasses.replace(backend.stats)
            sync(device)
            t = time.perf_counter()
            out = backend.transcribe_ids(now, drafts)
            sync(device)
            walls.append(time.perf_counter() - t)
            st = {k: getattr(backend.stats, k) - getattr(s0, k) for k in ("steps", "draft_tokens", "accepted_tokens")}
        if out != own_ids:
            raise RuntimeError(f"drafts ({label}) changed the output: the decoder is not exact")
        result[label] = {"wall_s": float(np.median(walls[1:])), **st}
    base = result["none"]["wall_s"]
    print("\n| draft | wall s | vs none | decode steps | draft tokens accepted |")
    print("|---|---|---|---|---|")
    for label in ("none", "previous partial", "own output (ceiling)"):
        r = result[label]
        print(f"| {label} | {fmt(r['wall_s'], 3)} | {fmt(base / r['wall_s'])}x | {r['steps']} "
              f"| {r['accepted_tokens']}/{r['draft_tokens']} |", flush=True)
    return result


def nemo_pipeline(model, clips, device: str, tokens_per_s: float, workdir: Path) -> dict:
    """NeMo's own multi-stream pipeline (4 s buffer, 2 s chunk, LCS merge) on our model object, run offline."""
    try:
        import soundfile as sf
        import torch
        from nemo.collections.asr.inference.model_wrappers.salm_asr_inference_wrapper import SALMASRInferenceWrapper
        from nemo.collections.asr.inference.pipelines.buffered_salm_pipeline import BufferedSALMPipeline
        from omegaconf import OmegaConf

        class Wrapper(SALMASRInferenceWrapper):
            @staticmethod
            def load_model(model_name, device):  # NeMo loads by hub name; hand it the model we built
                return model

            def generate(self, prompts, audios, audio_lens, max_new_tokens=128):
                # NeMo's own call plus min_new_tokens: fixed lengths, as in every other run here
                with torch.amp.autocast(device_type=self.device.type, dtype=self.compute_dtype, enabled=self.use_amp), \
                        torch.inference_mode():
                    return self.salm_model.generate(prompts=prompts, audios=audios, audio_lens=audio_lens,
                                                    max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)

        chunk_s, buffer_s = 2.0, 4.0
        new_tokens = math.ceil(buffer_s * tokens_per_s)
        cfg = OmegaConf.create({
            "asr_output_granularity": "segment",
            "streaming": {"sample_rate": RATE, "batch_size": len(clips), "max_new_tokens": new_tokens,
                          "chunk_size": chunk_s, "buffer_size": buffer_s, "overlap_size": buffer_s - chunk_s,
                          "merging_strategy": "lcs", "request_type": "frame"},
            "endpointing": {"stop_history_eou": 800},
        })
        cuda = device.startswith("cuda")
        wrapper = Wrapper("in-memory", device="cuda" if cuda else "cpu", compute_dtype="bfloat16", use_amp=cuda)
        pipeline = BufferedSALMPipeline(cfg, wrapper)
        paths = []
        for i, clip in enumerate(clips):
            paths.append(str(workdir / f"clip{i}.wav"))
            sf.write(paths[-1], clip, RATE)
        steps: list[float] = []
        step = pipeline.transcribe_step

        def timed_step(requests):
            sync(device)
            t = time.perf_counter()
            out = step(requests)
            sync(device)
            steps.append(time.perf_counter() - t)
            return out

        pipeline.run(paths)  # warm-up: its own shapes (4 s buffers)
        pipeline.transcribe_step = timed_step
        t = time.perf_counter()
        out = pipeline.run(paths)
        wall = time.perf_counter() - t
        if len(out) != len(clips):
            raise RuntimeError(f"the pipeline returned {len(out)} transcripts for {len(clips)} streams")
        return {"chunk_s": chunk_s, "buffer_s": buffer_s, "new_tokens_per_step": new_tokens,
                "batch_size": len(clips), "steps": len(steps), "wall_s": wall,
                "rtfx": len(clips) * len(clips[0]) / RATE / wall,
                "step_s": {"p50": pct(steps, 50), "p95": pct(steps, 95)},
                "note": "offline, as fast as it goes; live, an update comes every chunk_s of audio, one step after "
                        "its chunk is complete (step_s, plus queueing when streams exceed the batch)"}
    except Exception as exc:  # noqa: BLE001 - report why rather than lose the other results
        return {"error": f"{type(exc).__name__}: {exc}"}
