#!/usr/bin/env bash
# The GPU path end to end, for a machine with one CUDA GPU (about 10 minutes):
#   bash benchmarks/gpu_check.sh [out folder]
# 1. MNIST (latent refiner) and graph training for a minute each at fp32 and bf16, then sampling
#    and scoring on the GPU; 2. a 1-GPU torchrun (nccl) of the graph domain; 3. the speed table
#    (benchmarks/devices.py, CPU and GPU rows). Each step's metrics.json lands under the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/gpu_check}
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0))"
mnist="domain=image domain.data_dir=../shared/data/mnist domain.tokenizer.train.steps=300 sample.num_samples=500 sample.batch_size=250"
for precision in fp32 bf16; do
  python -m core.run $mnist device=cuda train.precision=$precision sample.precision=$precision \
      train.max_seconds=60 progress=false hydra.run.dir="$out/mnist_$precision"
  python -m core.run domain=graph device=cuda train.precision=$precision sample.precision=$precision \
      train.max_seconds=60 progress=false hydra.run.dir="$out/graph_$precision"
done
torchrun --standalone --nproc_per_node=1 -m core.run domain=graph device=cuda train.steps=200 \
    progress=false hydra.run.dir="$out/graph_torchrun"
python benchmarks/devices.py --devices cpu cuda --out "$out/devices"
python - "$out" <<'PY'
import json, sys
from pathlib import Path
for m in sorted(Path(sys.argv[1]).glob("*/metrics.json")):
    d = json.loads(m.read_text())
    keys = ("device", "train_steps", "train_seconds", "seconds_per_sample", "fd_over_floor", "ratio", "vun")
    print(m.parent.name, {k: d[k] for k in keys if k in d})
PY
