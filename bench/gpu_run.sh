#!/usr/bin/env bash
# The one command for issue 7's GPU measurement, from the repository root on the GPU machine:
#     bash bench/gpu_run.sh
# with .whl carried (prepared here by `bash bench/gpu_wheels.sh`). It installs those wheels, prints the
# machine and versions, runs `python3 -m bench.gpu` under a time limit (the whole script fits in ~9 minutes) and
# leaves gpu.json and run.log in $OUT (/tmp/gpu-out where OUT is unset). Extra bench flags: BENCH_ARGS="...".
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"

main() {
start=$(date +%s)
echo "== wheels"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  || { echo "installing the carried wheels failed"; return 1; }
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

echo "== machine"
nvidia-smi
python3 - <<'EOF'
import importlib.metadata as md
import importlib.util
import platform

import torch

print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda, "|",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU VISIBLE")
for name in ["nemo_toolkit", "transformers", "peft", "lightning", "lhotse", "omegaconf", "librosa", "numpy",
             "huggingface_hub", "protobuf", "wandb", "datasets", "pydantic"]:
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
# What `import nemo.collections.speechlm2` and NeMo's SALM pipeline need at import time (nemo_toolkit 3.0.0,
# found by running bench.gpu with everything else hidden): all missing ones at once, before the first failure.
needed = ["nemo", "lhotse", "omegaconf", "hydra", "librosa", "soundfile", "soxr", "yaml", "peft", "lightning",
          "whisper_normalizer", "_cffi_backend", "decorator", "datasets", "multiprocess", "dill", "wandb",
          "platformdirs", "opentelemetry", "more_itertools", "nv_one_logger", "pydantic", "pydantic_core",
          "typing_inspection", "annotated_types", "strenum", "overrides", "toml"]
missing = [m for m in needed if importlib.util.find_spec(m) is None]
print("import preflight:", "all present" if not missing else "MISSING " + " ".join(missing))
EOF

echo "== bench"
# 460 s: the bench stops adding live-load levels after 390 s (its --budget-s default) and then finishes.
timeout -k 10 460 python3 -m bench.gpu --json "$OUT/gpu.json" ${BENCH_ARGS:-}
rc=$?
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
echo "bench exit $rc after $(( $(date +%s) - start )) s in all"
return $rc
}

main 2>&1 | tee "$OUT/run.log"  # the log comes back with $OUT
exit "${PIPESTATUS[0]}"
