"""Builds csrc/ as a torch extension on first use (ninja, cached under the quamba-edge cache).

The CPU twins always build where a C++ compiler is present (~20 s once on 2 cores). The CUDA kernels join them
when torch has CUDA and nvcc is found: the same call on a GPU machine or in the Jetson image.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.paths import PACKAGE_DIR, cache_dir

CSRC = Path(os.environ.get("QUAMBA_EDGE_CSRC", PACKAGE_DIR.parent / "csrc"))
CPU_SOURCES = ("cpu/ops_cpu.cpp",)
CUDA_SOURCES = ("cuda/scan.cu", "cuda/conv1d.cu", "cuda/norm_hadamard.cu", "cuda/ssd_step.cu", "torch/ops_cuda.cpp")
# torch picks the C++ standard its headers need. OpenMP SIMD (not OpenMP threads) lets the scan's
# inner loops vectorize (-fno-trapping-math lets the exp's clamps become selects); no -ffast-math:
# the int8 rounding must match the reference.
CXX_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
NVCC_FLAGS = ["-O3", "-Xcompiler", "-Wall"]


def sources(cuda: bool) -> list[Path]:
    names = CPU_SOURCES + (CUDA_SOURCES if cuda else ())
    paths = [CSRC / n for n in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise QuambaEdgeError(f"kernel sources not found: {', '.join(missing)}. Fix: run from a quamba-edge "
                              "checkout, or set QUAMBA_EDGE_CSRC to its csrc/ directory.")
    return paths


def compile_extension(prefix: str, paths: list[Path], cflags: list[str], *, python_module: bool = False,
                      cuda: bool = False, verbose: bool = False):
    """Compile (or reuse) a torch extension from `paths` into the cache, in a directory named by `prefix` and a
    digest of the sources, every csrc/ header and the flags: an edited kernel never loads a stale library.
    Returns (build directory, the module when `python_module`, else None). Raises on a compiler error.

    A library already in the cache is loaded directly: torch.utils.cpp_extension (which imports setuptools and
    sympy: about 80 MB and a second per process) is only imported to compile."""
    h = hashlib.sha256(torch.__version__.encode())
    headers = list(CSRC.rglob("*.h"))
    for p in sorted(set(paths + headers)):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(" ".join(cflags).encode())
    name = f"{prefix}_{h.hexdigest()[:12]}"
    build_dir = cache_dir() / "kernels" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    library = build_dir / f"{name}.so"
    if library.exists():
        try:
            return build_dir, _load_library(name, library, python_module)
        except (ImportError, OSError):
            pass  # e.g. a library cut short: torch's load below rebuilds it if ninja finds it stale, else raises
    from torch.utils.cpp_extension import load

    module = load(name=name, sources=[str(p) for p in paths], extra_include_paths=[str(CSRC / "include")],
                  extra_cflags=cflags, extra_cuda_cflags=NVCC_FLAGS if cuda else None,
                  build_directory=str(build_dir), is_python_module=python_module, with_cuda=cuda, verbose=verbose)
    return build_dir, module if python_module else None


def _load_library(name: str, library: Path, python_module: bool):
    """Import a compiled extension (its PyInit is `name`, as torch's load built it) or load an op library."""
    if not python_module:
        torch.ops.load_library(str(library))
        return None
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_and_load(cuda: bool, verbose: bool = False) -> Path:
    """Compile (or reuse) and load the extension; its TORCH_LIBRARY_IMPL blocks register the kernels."""
    return compile_extension(f"quamba_edge_{'cuda' if cuda else 'cpu'}", sources(cuda), CXX_FLAGS, cuda=cuda,
                             verbose=verbose)[0]
