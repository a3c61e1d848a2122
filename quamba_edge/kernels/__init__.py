"""The Python face of csrc/: torch ops in the `quamba_edge` namespace and which code runs them.

    torch.ops.quamba_edge.selective_scan / selective_scan_step   int8 scan, fp32 state, SiLU(z) gate
    torch.ops.quamba_edge.conv1d_silu / conv1d_silu_step         int8 causal depthwise conv -> SiLU -> int8
    torch.ops.quamba_edge.rmsnorm_quantize                       fp32 RMSNorm -> int8
    torch.ops.quamba_edge.hadamard_quantize                      y·Mᵀ (M = H_K ⊗ H_2^k / √n) -> int8
    torch.ops.quamba_edge.ssd_step                               Mamba-2's SSD decode step (int8 xBC, fp32 state)

The schemas are defined here, with the PyTorch reference as the fallback kernel for every device.
`load()` builds csrc/ (csrc/cpu always; csrc/cuda too when torch has CUDA), whose registrations then
take precedence on their devices: CUDA kernels on a GPU, else the CPU twins, else the reference.
`QUAMBA_EDGE_KERNELS=reference` skips the build (the fallback only), `cpu` builds the CPU twins only,
`cuda` builds the CUDA kernels too even without a visible GPU (docker build of the Jetson image).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

from quamba_edge.kernels import reference

_SCAN_ARGS = ("Tensor u, Tensor delta, Tensor B, Tensor C, Tensor z, Tensor A_log, Tensor D, Tensor delta_bias, "
              "Tensor scales")
_CONV_ARGS = "Tensor weight, Tensor bias, Tensor weight_scale, Tensor scales"
SCHEMAS = {
    "selective_scan": f"({_SCAN_ARGS}, Tensor ssm_state) -> (Tensor, Tensor)",
    "selective_scan_step": f"({_SCAN_ARGS}, Tensor(a!) ssm_state) -> Tensor",
    "conv1d_silu": f"(Tensor x, Tensor conv_state, {_CONV_ARGS}) -> (Tensor, Tensor)",
    "conv1d_silu_step": f"(Tensor x, Tensor(a!) conv_state, {_CONV_ARGS}) -> Tensor",
    "rmsnorm_quantize": "(Tensor x, Tensor weight, float eps, Tensor out_scale) -> Tensor",
    "hadamard_quantize": "(Tensor y, Tensor hadamard_K, Tensor out_scale) -> Tensor",
    "ssd_step": ("(Tensor xbc, Tensor xbc_scale, Tensor dt, Tensor dt_bias, Tensor A, Tensor D, Tensor(a!) ssm_state, "
                 "int ngroups, float dt_min, float dt_max) -> Tensor"),
}

_LIB = torch.library.Library("quamba_edge", "DEF")  # kept alive for the process: it owns the registrations
for _name, _schema in SCHEMAS.items():
    _LIB.define(_name + _schema)
    _LIB.impl(_name, getattr(reference, _name), "CompositeExplicitAutograd")

ops = torch.ops.quamba_edge


@dataclass
class KernelState:
    cpu: bool = False  # the CPU twins are registered
    cuda: bool = False  # the CUDA kernels are registered
    error: str | None = None  # why the build did not happen or failed
    build_dir: str | None = None


_STATE: KernelState | None = None


def load(*, require: bool = False, verbose: bool = False) -> KernelState:
    """Build (once, cached) and register the compiled kernels; on failure keep the reference and say why.

    require=True turns a failed build into an error (the tests use it: a silent fallback would let the
    twin go untested).
    """
    global _STATE
    if _STATE is not None and (_STATE.cpu or not require):
        return _STATE
    mode = os.environ.get("QUAMBA_EDGE_KERNELS", "auto")
    if mode == "reference" and not require:
        _STATE = KernelState(error="QUAMBA_EDGE_KERNELS=reference")
        return _STATE
    from quamba_edge.kernels.build import build_and_load

    # "cuda" builds the CUDA kernels even where no GPU is visible (the Jetson image's build stage).
    cuda = mode == "cuda" or (torch.cuda.is_available() and mode != "cpu")
    try:
        build_dir = build_and_load(cuda=cuda, verbose=verbose)
        _STATE = KernelState(cpu=True, cuda=cuda, build_dir=str(build_dir))
    except Exception as exc:  # a compiler or toolkit problem: the reference still gives right answers
        if require:
            raise
        _STATE = KernelState(error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
        warnings.warn(f"quamba-edge kernels not built ({_STATE.error}); using the PyTorch reference", stacklevel=2)
    return _STATE


def backend(device: str | torch.device = "cpu") -> str:
    """What runs the ops for tensors on `device`: "cuda", "cpu-twin" or "reference" (after `load()`)."""
    state = _STATE or KernelState()
    if torch.device(device).type == "cuda":
        return "cuda" if state.cuda else "reference"
    return "cpu-twin" if state.cpu else "reference"


def scan_scales(u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor, C: torch.Tensor, z: torch.Tensor,
                A_log: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor) -> torch.Tensor:
    """Pack the eight per-tensor scales in the order the scan kernels read them."""
    return torch.stack([torch.as_tensor(s, dtype=torch.float32).reshape(())
                        for s in (u, delta, B, C, z, A_log, D, delta_bias)]).contiguous()
