#!/usr/bin/env bash
# One call on a GPU machine (the device tool's H100/H200 image has torch+CUDA, nvcc, ninja, pytest, onnx,
# typer, rich, safetensors): build csrc/ with its CUDA kernels, run the CUDA tests (and under compute-sanitizer where
# the image has it), time the kernels (Mamba-1's and Mamba-2's SSD step).
#   device run:  bash benchmarks/gpu_check.sh        (results land in $OUT, else benchmarks/results)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 QUAMBA_EDGE_CACHE="${TMPDIR:-/tmp}/qe-cache"
out="${OUT:-benchmarks/results}"
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower())")  # h100, h200, ...
python3 -c "import quamba_edge.kernels as k; s = k.load(require=True); print(s); assert s.cuda"
python3 -m pytest -q -m cuda tests/test_kernels_cuda.py 2>&1 | tee "$out/pytest-cuda-$gpu.log"
if command -v compute-sanitizer > /dev/null; then  # memory errors in the kernels (not the whole-model test: slow)
  compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest -q -m cuda tests/test_kernels_cuda.py \
      -k "not kernel_model" 2>&1 | tee "$out/sanitizer-$gpu.log" || echo "compute-sanitizer reported errors: see the log"
fi
python3 benchmarks/kernels.py --device cuda --repeats 5 --out "$out/kernels-$gpu.json" 2>&1 | tee "$out/kernels-$gpu.log"
