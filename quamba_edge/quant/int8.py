"""Symmetric int8 with zero-point 0, the one number format every backend shares (DESIGN.md).

    s = amax / 127,   q = clamp(round_half_even(x / s), -128, 127),   x̂ = s · q

`torch.round` rounds half to even, like ONNX QuantizeLinear and CUDA's `__float2int_rn`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

QMAX = 127
QMIN = -128
_EPS = 1e-12
_INT_MM_MIN_ROWS = 32  # torch._int_mm on CUDA wants more than 16 rows: fewer are zero-padded to 32


def scale_from_amax(amax: Tensor | float) -> Tensor:
    """Per-tensor (0-d) or per-channel scale; a zero amax gets a tiny scale instead of a division by 0."""
    return torch.clamp(torch.as_tensor(amax, dtype=torch.float32), min=_EPS) / QMAX


def quantize(x: Tensor, scale: Tensor | float) -> Tensor:
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    return torch.clamp(torch.round(x.float() / scale), QMIN, QMAX).to(torch.int8)


def dequantize(q: Tensor, scale: Tensor | float) -> Tensor:
    return q.float() * torch.as_tensor(scale, dtype=torch.float32, device=q.device)


def quantize_weight(w: Tensor, granularity: str = "tensor") -> tuple[Tensor, Tensor]:
    """Weight (out, in) -> int8 and its scale: 0-d for `tensor`, shape (out, 1) for `channel`."""
    w = w.detach().float()
    if granularity == "tensor":
        scale = scale_from_amax(w.abs().max())
    elif granularity == "channel":
        scale = scale_from_amax(w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True))
    else:
        raise ValueError(f"weight granularity must be 'tensor' or 'channel', not {granularity!r}")
    return quantize(w, scale), scale


# Every partial sum of k products of int8 values is an integer of magnitude <= k * 128**2; float32 holds
# integers exactly up to 2**24, float64 up to 2**53, so a float GEMM gives the int32 result exactly
# (in any summation order) when k is below these bounds.
_FP32_EXACT_K = 2**24 // 128**2  # 1024
_FP64_EXACT_K = 2**53 // 128**2


def int8_matmul(a: Tensor, b_t: Tensor) -> Tensor:
    """(m, k) int8 @ (n, k)ᵀ int8 -> (m, n) int32, exactly.

    On CUDA `torch._int_mm` (cuBLASLt int8; fewer than 32 rows are zero-padded to 32). On CPU a float
    GEMM that is exact by the bound above: torch 2.13's CPU `_int_mm` is a reference loop (~3 GMAC/s,
    85% of a quantized prefill), while the float32 GEMM is ~20x faster and returns the same integers.
    """
    (m, k), n = a.shape, b_t.shape[0]
    # torch._int_mm's CUDA path wants k and n multiples of 8, k >= 16 and m > 16 (m is padded below).
    if a.device.type == "cuda" and k % 8 == 0 and n % 8 == 0 and k >= 16:
        if m < _INT_MM_MIN_ROWS:  # decode: a few rows, zero-padded (the weight is still read once)
            padded = torch.zeros(_INT_MM_MIN_ROWS, k, dtype=a.dtype, device=a.device)
            padded[:m] = a
            return torch._int_mm(padded, b_t.t())[:m]
        return torch._int_mm(a.contiguous(), b_t.t())
    if k <= _FP32_EXACT_K:
        return (a.float() @ b_t.float().t()).to(torch.int32)
    if k <= _FP64_EXACT_K:
        return (a.double() @ b_t.double().t()).to(torch.int32)
    raise ValueError(f"int8 matmul with k={k} could overflow int32 accumulation")


def scalar_scale() -> Tensor:
    """A per-tensor scale buffer (0-d fp32), to be filled by calibration."""
    return torch.ones((), dtype=torch.float32)


def weight_scale_buffer(rows: int, granularity: str) -> Tensor:
    """A weight-scale buffer: (rows, 1) per output channel, else per tensor (0-d)."""
    return torch.ones(rows, 1) if granularity == "channel" else scalar_scale()


class QLinear(nn.Module):
    """int8 activation x int8 weight -> int32, rescaled; int8 out with `out_scale`, else fp32 out."""

    def __init__(self, in_features: int, out_features: int, *, granularity: str, bias: bool,
                 int8_output: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", weight_scale_buffer(out_features, granularity))
        self.register_buffer("in_scale", scalar_scale())
        self.register_buffer("out_scale", scalar_scale() if int8_output else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @torch.no_grad()
    def load_float(self, weight_q: Tensor, weight_scale: Tensor, in_scale: Tensor,
                   out_scale: Tensor | None, bias: Tensor | None = None) -> QLinear:
        self.weight.copy_(weight_q)
        self.weight_scale.copy_(weight_scale)
        self.in_scale.copy_(in_scale)
        if out_scale is not None:
            self.out_scale.copy_(out_scale)
        if bias is not None:
            self.bias.copy_(bias)
        return self

    def forward(self, x_q: Tensor) -> Tensor:
        lead = x_q.shape[:-1]
        acc = int8_matmul(x_q.reshape(-1, self.in_features), self.weight)  # (m, n) int32
        y = acc.float() * (self.in_scale * self.weight_scale.reshape(-1))
        if self.bias is not None:
            y = y + self.bias
        y = y.reshape(*lead, self.out_features)
        return quantize(y, self.out_scale) if self.out_scale is not None else y
