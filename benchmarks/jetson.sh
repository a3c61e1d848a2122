#!/usr/bin/env bash
# The first real Orin numbers, in one command, on the Jetson (inside the image built from Dockerfile.jetson):
#
#   docker run --rm -it --runtime nvidia -v "$PWD/benchmarks/results:/work/benchmarks/results" \
#       quamba-edge:jetson bash benchmarks/jetson.sh [--llama-gguf model.gguf] [jetson_run.py options]
#
# It calibrates the bundled model (Quamba recipe), builds fp16 and int8 TensorRT engines for this board,
# benches both with board power, adds the roofline estimate and llama-bench when installed, and writes
# benchmarks/results/jetson-<profile>-<date>.json. Commit that file; no code change is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 - <<'PY'
from quamba_edge.bench.devices import this_jetson
profile = this_jetson()
if profile is None:
    raise SystemExit("benchmarks/jetson.sh: this is not a Jetson (no Orin in /proc/device-tree/model). Run it on "
                     "the board, in the container started with --runtime nvidia; for a dry run of the same steps "
                     "here: python benchmarks/jetson_run.py --backend ort --device cpu --target cpu")
print(f"jetson-bench: {profile.description}")
PY
python3 calib/build_corpus.py  # the calibration text (Jane Austen, from a Debian package); skips when present
exec python3 benchmarks/jetson_run.py "$@"
