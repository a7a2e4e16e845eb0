#!/usr/bin/env bash
# Prepares ./.whl for the GPU machine (no package registry there): the shared starting list, plus what
# `import nemo.collections.speechlm2` (nemo_toolkit 3.0.0) and soundfile/librosa also need at import time there
# (found by running bench.gpu --tiny with every other package hidden). Then: bash bench/gpu_run.sh, carrying .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ../shared/gpu/fetch-wheels.sh
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform any)
extra=(
  cffi==2.1.1 decorator==5.3.1 datasets==5.2.0 multiprocess==0.70.19 dill==0.4.1 more-itertools==11.2.1
  nv-one-logger-core==2.3.1 nv-one-logger-pytorch-lightning-integration==2.3.1 nv-one-logger-training-telemetry==2.3.1
  pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0 strenum==0.4.15
  overrides==7.7.0 toml==0.10.2 wandb==0.31.0 platformdirs==4.14.8 opentelemetry-api==1.45.2
  opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-otlp-proto-http==1.45.2
  opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-exporter-http-transport==0.66b2 opentelemetry-exporter-otlp-common==0.66b2
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d .whl "${extra[@]}"
rm -f .whl/silero_vad-*.whl  # 11 MB the benchmark does not use: keeps the carry under 64 MiB
du -sh .whl
