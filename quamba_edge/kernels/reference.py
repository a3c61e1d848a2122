"""The PyTorch reference of every kernel op: the math of `quamba_edge.quant.quamba`, op for op.

Registered as the op's CompositeExplicitAutograd kernel, so `torch.ops.quamba_edge.*` runs it on any
device where no compiled kernel is loaded. It is also the ground truth the CPU twin and the CUDA kernels
are tested against (via the qmodels modules, which share these formulas).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from quamba_edge.models.scan import selective_scan as _scan
from quamba_edge.models.ssd import ssd_recurrent
from quamba_edge.quant.hadamard import rotate
from quamba_edge.quant.int8 import dequantize, quantize

# Order of the float32 `scales` argument of the scan ops (csrc/include/quamba_edge/kernel_math.h).
SCAN_SCALES = ("u", "delta", "B", "C", "z", "A_log", "D", "delta_bias")


def ssd_step(xbc: Tensor, xbc_scale: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor, ssm_state: Tensor,
             ngroups: int, dt_min: float, dt_max: float) -> Tensor:
    """Mamba-2's SSD decode step as QMamba2Mixer runs it (quant/quamba2.py): xbc (b, d + 2 G n) int8 with per-channel
    scales, dt (b, H) dequantized, ssm_state (b, H, p, n) fp32 updated in place; dt_max <= 0: no upper limit.
    Returns y (b, d) fp32 with the D skip (before the gate)."""
    b, H, p, n = ssm_state.shape
    x, B, C = dequantize(xbc, xbc_scale).split([H * p, ngroups * n, ngroups * n], dim=-1)
    dt = F.softplus(dt + dt_bias).clamp(dt_min, dt_max if dt_max > 0 else None)
    y, state = ssd_recurrent(x.reshape(b, 1, H, p), dt[:, None], A, B.reshape(b, 1, ngroups, n),
                             C.reshape(b, 1, ngroups, n), D, ssm_state)
    ssm_state.copy_(state)
    return y.reshape(b, H * p)


def selective_scan(u: Tensor, delta: Tensor, B: Tensor, C: Tensor, z: Tensor, A_log: Tensor, D: Tensor,
                   delta_bias: Tensor, scales: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor]:
    s = dict(zip(SCAN_SCALES, scales.unbind()))
    dt = F.softplus(dequantize(delta, s["delta"]) + dequantize(delta_bias, s["delta_bias"]))
    A = -torch.exp(dequantize(A_log, s["A_log"]))
    u_f = dequantize(u, s["u"])
    y, state = _scan(u_f, dt, A, dequantize(B, s["B"]), dequantize(C, s["C"]), dequantize(D, s["D"]),
                     ssm_state.clone())
    return y * F.silu(dequantize(z, s["z"])), state


def selective_scan_step(u: Tensor, delta: Tensor, B: Tensor, C: Tensor, z: Tensor, A_log: Tensor, D: Tensor,
                        delta_bias: Tensor, scales: Tensor, ssm_state: Tensor) -> Tensor:
    y, state = selective_scan(u[:, None], delta[:, None], B[:, None], C[:, None], z[:, None], A_log, D, delta_bias,
                              scales, ssm_state)
    ssm_state.copy_(state)
    return y[:, 0]


def _conv(padded: Tensor, weight: Tensor, bias: Tensor, weight_scale: Tensor, scales: Tensor) -> Tensor:
    """padded (b, d, k-1+l) int8 -> (b, l, d) int8, as QConv1dSiLU."""
    k = weight.shape[1]
    acc = (padded.unfold(2, k, 1).to(torch.int32) * weight.to(torch.int32)[:, None, :]).sum(-1)
    w_scale = weight_scale.reshape(-1, 1) if weight_scale.numel() > 1 else weight_scale.reshape(())
    y = acc.float() * (scales[0] * w_scale) + dequantize(bias, scales[1])[:, None]
    return quantize(F.silu(y), scales[2]).transpose(1, 2).contiguous()


def conv1d_silu(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor, weight_scale: Tensor,
                scales: Tensor) -> tuple[Tensor, Tensor]:
    padded = torch.cat([conv_state, x.transpose(1, 2)], dim=2)
    new_state = padded[:, :, padded.shape[2] - conv_state.shape[2]:].contiguous()
    return _conv(padded, weight, bias, weight_scale, scales), new_state


def conv1d_silu_step(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor, weight_scale: Tensor,
                     scales: Tensor) -> Tensor:
    out, new_state = conv1d_silu(x[:, None], conv_state, weight, bias, weight_scale, scales)
    conv_state.copy_(new_state)
    return out[:, 0]


def rmsnorm_quantize(x: Tensor, weight: Tensor, eps: float, out_scale: Tensor) -> Tensor:
    return quantize(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight, out_scale.reshape(()))


def hadamard_quantize(y: Tensor, hadamard_K: Tensor, out_scale: Tensor) -> Tensor:
    return quantize(rotate(y, y.shape[-1], hadamard_K), out_scale.reshape(()))
