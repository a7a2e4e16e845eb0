"""`python -m bench.gpu`: the inference engine's speed on a full-size random-weight Canary-Qwen-2.5B (issue 7).

    python -m bench.gpu [--tiny] [--device cuda|cpu] [--json OUT] [--streams 1,50,100,200,500,1000] [--seconds S]

One run, with fixed output lengths (EOS never chosen, about 3 tokens per second of audio, since
random weights never end a transcript on their own), reports:
1. NeMo's plain `SALM.generate` on a batch of 10 s clips: RTFx (audio seconds / wall seconds).
2. Our engine (server.engine.Engine around SalmBackend, same model object) on the same clips, LoRA unmerged and
   merged, for a few max_batch values: RTFx and the ratio to 1.
3. Live load: N simulated streams at real-time pace (a partial every 0.5 s of a growing window, a final at the
   10 s cap, as continuous speech gives; each partial and final carries the window's previous partial as a
   draft, as sessions send them): partial/final latency, partial cadence, decode steps per batch, draft
   acceptance, memory, event-loop lag; the largest N whose p95 final latency stays within --slo-s.
   Before the ramp, one level (--ablate-n) runs with length bucketing off, drafts off and 4x max_batch.
4. NeMo's buffered SALM pipeline (nemo.collections.asr.inference) offline on the same clips, if it runs.
5. Drafts on one batch of growing windows: none / the previous partial's output / the window's own (ceiling).

The full-size model is built on the GPU directly from the shapes in ../shared/notes/salm.md (no hub, no
checkpoint). `--tiny` runs the tiny checkpoint of server/backends/tiny_model.py on the CPU so that CI checks the
benchmark works: its numbers are sanity checks, never performance results.

Modules, one section each: model (building the SALM and our backend around it), audio (what is decoded),
measure (device sync, percentiles, memory, the machine), offline (1, 2, 4 and 5), live (3, and asks beside the
captions), ask (LLM mode's jobs), report (the printed tables), __main__ (the flags and the order of the sections).
This package imports nothing from the rest of bench/ but bench.clips (audio only): the GPU machine has only the
carried wheels (bench/gpu_wheels.sh), and bench.metrics, for one, pulls in server modules it does not need.
"""
