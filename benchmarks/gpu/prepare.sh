#!/usr/bin/env bash
# Prepare a GPU window (run here, on a machine with hatch and the package index): build the wheels the GPU run
# installs and fetch their small pure-Python dependencies into carry/gpu-wheels/ (an ignored folder).
#
#   benchmarks/gpu/prepare.sh
#
# Then, on the GPU machine (no internet, no hatch; torch, triton and pytest present), carrying carry/gpu-wheels:
#
#   bash benchmarks/gpu/run.sh carry/gpu-wheels "$OUT"
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/carry/gpu-wheels"
mkdir -p "$out"
"$root/scripts/build_all.sh" "$out"
rm -f "$out"/*.tar.gz
# sparsecore's own runtime dependencies that a bare torch image may lack (no torch: the GPU machine has its own).
python3 -m pip download --quiet --no-deps --dest "$out" "pluggy>=1.5" "tqdm>=4.60"
ls -1 "$out"
