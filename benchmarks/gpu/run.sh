#!/usr/bin/env bash
# Everything a short GPU window should run, in one command, finishing in under 8 minutes on an H100/H200:
#
#   bash benchmarks/gpu/run.sh WHEEL_DIR OUT_DIR
#
# WHEEL_DIR holds the wheels from benchmarks/gpu/prepare.sh; OUT_DIR receives the results as markdown:
#   machine.md      nvidia-smi, torch/triton/CUDA versions
#   gpu_tests.md    the GPU tests of sparse-kernels-cuda (pytest -m gpu), their summary line and failures
#   smoke.md        benchmarks/kernels/gpu_layer.py --smoke on the GPU (tiny shapes: the script works end to end)
#   gpu_layer.md    the full table: layer fwd+bwd bf16, 4096x4096 weight, 8192 tokens, densities 0.5 -> 0.01,
#                   blocks 32/64/128 and 2:4, vs cuBLAS dense and masked dense; MLP training step at d = 0.1
# Each stage has its own time limit, so a slow or failing stage never costs the stages after it; results written
# before a limit is hit are kept. Smoke sizes run first so that a broken install shows within a minute.
set -uo pipefail
wheels="$(cd "${1:?usage: run.sh WHEEL_DIR OUT_DIR}" && pwd)"
out="$(mkdir -p "${2:?usage: run.sh WHEEL_DIR OUT_DIR}" && cd "$2" && pwd)"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
start=$SECONDS
stage() { echo "== $1 ($((SECONDS - start)) s)"; }

stage "install"
python -m pip install --quiet --no-deps --no-index "$wheels"/pluggy-*.whl "$wheels"/tqdm-*.whl \
  "$wheels"/sparsecore-*.whl "$wheels"/sparse_kernels_cuda-*.whl "$wheels"/sparsecore_swat-*.whl 2>&1 | tail -3

stage "machine"
{
  echo "# GPU machine"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python - <<'PY'
import torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "absent"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {tv}, "
      f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
PY
  echo '```'
} > "$out/machine.md" 2>&1
cat "$out/machine.md"

stage "GPU tests"
{
  echo "# sparse-kernels-cuda GPU tests"
  echo
  echo '```'
  timeout 150 python -m pytest -q -p no:randomly -p no:cacheprovider -m gpu packages/sparse-kernels-cuda/tests 2>&1 | tail -40
  echo '```'
} > "$out/gpu_tests.md"
tail -3 "$out/gpu_tests.md"

stage "smoke benchmark"
{
  echo "# gpu_layer.py --smoke (tiny shapes on the GPU)"
  echo
  timeout 90 python benchmarks/kernels/gpu_layer.py --smoke 2>&1
} > "$out/smoke.md"
tail -5 "$out/smoke.md"

stage "full benchmark"
{
  echo "# gpu_layer.py: layer fwd+bwd and MLP step (bf16)"
  echo
  echo "Command: \`python benchmarks/kernels/gpu_layer.py --reps 10\`; date $(date -u +%Y-%m-%dT%H:%MZ)."
  echo
  timeout 300 python benchmarks/kernels/gpu_layer.py --reps 10 2>&1
} > "$out/gpu_layer.md"
cat "$out/gpu_layer.md"
stage "done"
