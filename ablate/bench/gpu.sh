#!/usr/bin/env bash
# The GPU measurements of issue #17, ready to run on a machine with one CUDA GPU (none was lent when this
# was written, so no figure from it is in docs/benchmarks.md yet):
#   1. a 9-job nano sweep (3 learning rates x 3 seeds, rates tuned: one group) under the basic launcher
#      (one job after another) and hydra/launcher=batched (one ensemble of 9), fp32 and train.dtype=auto,
#      side by side; the target is >= 10x in wall time, with the same losses;
#   2. the bf16 MFU of gpt2_124m (the gpt2 preset at 12 x 768, context 1024, vocab 50257, batch 16) against
#      the measured bf16 matmul peak, with fp32 (TF32) beside it.
# Usage: bash ablate/bench/gpu.sh [OUT_DIR]   (about 10 minutes on an H100-class GPU; writes OUT_DIR/*.json|txt)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-${OUT:-gpu-bench}}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled
python - <<'EOF' | tee "$OUT/device.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device: this script measures the GPU figures of issue #17"
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))
EOF

# 1. the 9-job nano sweep (300 steps a job, the nano model's own batch): basic vs batched, fp32 vs auto
python -m ablate.bench --sweep --device cuda --repeats "${REPEATS:-2}" --sweep-steps "${STEPS:-300}" --threads 4 \
  --sweep-grid "optim.lr=1e-3,3e-3,1e-2 train.seed=0,1,2 compare.tuned=[optim.lr]" \
  --run-overrides "train.device=cuda" --json "$OUT/sweep.json" | tee "$OUT/sweep.txt"

# 2. MFU of gpt2_124m, bf16 autocast and fp32 (TF32), interleaved in one process
python -m ablate.bench --models --device cuda --shapes G --presets gpt2 --no-peers --dtype bf16,fp32 \
  --steps 20 --warmup 3 --json "$OUT/gpt2_124m.json" | tee "$OUT/gpt2_124m.txt"
echo "results in $OUT/ (sweep.txt, gpt2_124m.txt): copy the figures into docs/benchmarks.md"
