"""Calibration observers: they watch fp activations and produce one static int8 scale each.

- `AbsMaxObserver`: running max of |x| (every activation except the SSM input).
- `PercentileObserver`: Quamba's input-max suppression for the SSM input u: per calibration sample
  the α-quantile of |u|, combined across samples with an EMA (the first sample sets m, then
  m ← m + 0.01·(cur − m)). Clipping the rare huge values of u costs little and buys resolution for
  the rest.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from quamba_edge.quant.int8 import scale_from_amax

_TORCH_QUANTILE_LIMIT = 1 << 24


class AbsMaxObserver:
    def __init__(self) -> None:
        self.amax: float | None = None

    def observe(self, x: Tensor) -> None:
        cur = float(x.detach().abs().max())
        self.amax = cur if self.amax is None else max(self.amax, cur)

    def scale(self) -> Tensor:
        if self.amax is None:
            raise RuntimeError("observer saw no data")
        return scale_from_amax(self.amax)


def abs_quantile(x: Tensor, q: float) -> float:
    """The q-quantile of |x| with linear interpolation (torch.quantile's definition).

    For the high quantiles Quamba uses only the few largest values matter, so `topk` finds them
    without sorting the whole tensor.
    """
    flat = x.detach().abs().flatten().float()
    pos = q * (flat.numel() - 1)
    lo = int(pos)
    need = flat.numel() - lo  # values from the lo-th order statistic upwards
    if need <= 4096:
        top = torch.topk(flat, min(need, flat.numel())).values  # descending
        v_lo = top[need - 1]
        v_hi = top[need - 2] if need >= 2 else v_lo
        return float(v_lo + (pos - lo) * (v_hi - v_lo))
    if flat.numel() <= _TORCH_QUANTILE_LIMIT:
        return float(torch.quantile(flat, q))
    return float(np.quantile(flat.cpu().numpy(), q))


class PercentileObserver(AbsMaxObserver):
    """One `observe` call per calibration sample, shape (l, d): samples are sequences, not batches."""

    def __init__(self, percentile: float, momentum: float = 0.01) -> None:
        if not 0.0 < percentile <= 1.0:
            raise ValueError(f"percentile must be in (0, 1], got {percentile}")
        super().__init__()
        self.percentile, self.momentum = percentile, momentum

    def observe(self, x: Tensor) -> None:
        cur = abs_quantile(x, self.percentile)
        self.amax = cur if self.amax is None else self.amax + self.momentum * (cur - self.amax)
