#!/usr/bin/env bash
# One call on a GPU machine (the device tool's H100/H200 image has torch+CUDA, nvcc, ninja, pytest, onnx,
# typer, rich, safetensors): build csrc/ with its CUDA kernels, run the CUDA tests, time the kernels.
#   device run:  bash benchmarks/gpu_check.sh        (results land in $OUT, else benchmarks/results)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 QUAMBA_EDGE_CACHE="${TMPDIR:-/tmp}/qe-cache"
out="${OUT:-benchmarks/results}"
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower())")  # h100, h200, ...
python3 -c "import quamba_edge.kernels as k; s = k.load(require=True); print(s); assert s.cuda"
python3 -m pytest -q -m cuda tests/test_kernels_cuda.py 2>&1 | tee "$out/pytest-cuda-$gpu.log"
python3 benchmarks/kernels.py --device cuda --repeats 5 --out "$out/kernels-$gpu.json" 2>&1 | tee "$out/kernels-$gpu.log"
