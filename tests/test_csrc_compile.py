"""Every CUDA source compiles for Orin (sm_87) and Hopper (sm_90) with warnings as errors, and the torch
CUDA bindings pass a syntax check against this torch's headers. Nothing CUDA runs here; this catches
what a compiler can catch before a GPU machine or the Jetson image builds the extension.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_ext

from quamba_edge.kernels.build import CSRC, CUDA_SOURCES, CXX_FLAGS

NVCC = shutil.which("nvcc")
ARCHS = ("87", "90")

needs_nvcc = pytest.mark.skipif(NVCC is None and not os.environ.get("CI"),
                                reason="nvcc not installed (CI has it and runs these)")


@needs_nvcc
@pytest.mark.parametrize("source", [s for s in CUDA_SOURCES if s.endswith(".cu")])
def test_cuda_kernel_compiles_for_orin_and_hopper(source, tmp_path):
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = [NVCC or "nvcc", "-std=c++17", "-O3", *gencode, "-I", str(CSRC / "include"), "-Werror", "all-warnings",
           "-Xcompiler", "-Wall,-Wextra,-Werror", "-c", str(CSRC / source), "-o", str(tmp_path / "k.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    cuobjdump = shutil.which("cuobjdump", path=str(Path(NVCC or "nvcc").resolve().parent) + os.pathsep +
                             os.environ.get("PATH", ""))
    if cuobjdump:  # where the toolkit has it: the object holds code for both GPUs
        listing = subprocess.run([cuobjdump, "--list-elf", str(tmp_path / "k.o")], capture_output=True, text=True)
        assert all(f"sm_{a}" in listing.stdout for a in ARCHS), listing.stdout


@needs_nvcc
def test_torch_cuda_bindings_pass_a_syntax_check(tmp_path):
    """csrc/torch/ops_cuda.cpp against torch's C++ headers and the CUDA runtime headers.

    The CPU torch wheel ships c10/cuda headers but not the CMake-generated cuda_cmake_macros.h (a file
    of build options); an empty one stands in for it, for this syntax check only.
    """
    shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n")
    homes = [os.environ.get("CUDA_HOME"), cpp_ext.CUDA_HOME, "/usr/local/cuda"]
    cuda_include = next(Path(h) / "include" for h in homes
                        if h and (Path(h) / "include" / "cuda_runtime_api.h").exists())
    system = [*cpp_ext.include_paths(), str(tmp_path / "shim"), str(cuda_include), sysconfig.get_paths()["include"]]
    cmd = [os.environ.get("CXX", "g++"), "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
           "-I", str(CSRC / "include")]
    for path in system:
        cmd += ["-isystem", path]
    result = subprocess.run([*cmd, str(CSRC / "torch" / "ops_cuda.cpp")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_cpu_twin_compiles_without_warnings(tmp_path):
    """The CPU twins with the build's flags and -Wall -Wextra -Werror (the extension build does not use -Werror)."""
    cmd = [os.environ.get("CXX", "g++"), "-std=c++20", "-fsyntax-only", *CXX_FLAGS, "-Wall", "-Wextra", "-Werror",
           "-I", str(CSRC / "include")]
    for path in [*cpp_ext.include_paths(), sysconfig.get_paths()["include"]]:
        cmd += ["-isystem", path]
    result = subprocess.run([*cmd, str(CSRC / "cpu" / "ops_cpu.cpp")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def _tensorrt_include() -> str | None:
    candidates = [os.environ.get("TENSORRT_INCLUDE_DIR"), "/usr/include/aarch64-linux-gnu",
                  "/usr/include/x86_64-linux-gnu", "/usr/local/tensorrt/include"]
    return next((c for c in candidates if c and (Path(c) / "NvInferRuntime.h").exists()), None)


@pytest.mark.tensorrt
@pytest.mark.skipif(_tensorrt_include() is None or NVCC is None or shutil.which("cmake") is None,
                    reason="needs the TensorRT C++ headers (set TENSORRT_INCLUDE_DIR), nvcc and cmake: the "
                           "Jetson image builds the plugins; this CPU machine has no TensorRT headers")
def test_tensorrt_plugin_library_builds(tmp_path):
    """csrc/CMakeLists.txt builds libquamba_edge_trt.so, exporting only TensorRT's two entry points."""
    build = tmp_path / "build"
    configure = subprocess.run(["cmake", "-S", str(CSRC), "-B", str(build),
                                f"-DTENSORRT_INCLUDE_DIR={_tensorrt_include()}", "-DCMAKE_CUDA_ARCHITECTURES=87;90"],
                               capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout[-2000:] + configure.stderr[-2000:]
    compiled = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout[-3000:] + compiled.stderr[-2000:]
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(build / "libquamba_edge_trt.so")],
                             capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    assert {"getCreators", "setLoggerFinder"} <= exported
    assert not any("quamba_edge" in name for name in exported)  # everything else stays hidden
