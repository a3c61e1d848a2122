"""Static W8A8 for any model's Linear and Conv1d layers (the AdaPool set models and the wav2vec 2.0 keyword
spotters): every covered layer reads an int8 activation with a calibrated per-tensor scale and an int8
weight (per tensor or per output channel), accumulates exactly in int32 and returns float. Softmax,
GroupNorm/LayerNorm, GELU, the pooling and the residual stream stay float (DESIGN.md, "Model families").
Calibration: scale = amax / 127, amax the largest |input| a layer sees on the fp model's calibration batches.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.models.wav2vec2 import PositionalConv
from quamba_edge.quant.int8 import QLinear, int8_matmul, quantize, quantize_weight, scale_from_amax
from quamba_edge.quant.observers import AbsMaxObserver
from quamba_edge.quant.recipes import StaticW8A8


class QuantizedLinear(nn.Module):
    """float x -> int8 (static scale) -> QLinear (int8 x int8 -> int32 -> float + bias)."""

    def __init__(self, q: QLinear):
        super().__init__()
        self.q = q

    def forward(self, x: Tensor) -> Tensor:
        return self.q(quantize(x, self.q.in_scale))


class QuantizedConv1d(nn.Module):
    """float x (b, c_in, t) -> int8 (static scale) -> int8 conv as an int32 GEMM over unfolded windows ->
    float (b, c_out, t'). Zero padding is exact in int8 (0 is 0.0)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1, padding: int = 0, groups: int = 1,
                 bias: bool, granularity: str):
        super().__init__()
        self.c_in, self.c_out, self.kernel = c_in, c_out, kernel
        self.stride, self.padding, self.groups = stride, padding, groups
        self.register_buffer("weight", torch.zeros(c_out, c_in // groups, kernel, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.zeros(()) if granularity == "tensor" else torch.zeros(c_out, 1, 1))
        self.register_buffer("in_scale", torch.zeros(()))
        self.register_buffer("bias", torch.zeros(c_out) if bias else None)

    load_float = QLinear.load_float  # the same buffers: weight, weight_scale, in_scale, bias

    def forward(self, x: Tensor) -> Tensor:
        q = quantize(x, self.in_scale)
        if self.padding:
            q = F.pad(q, (self.padding, self.padding))
        windows = q.unfold(2, self.kernel, self.stride)  # (b, c_in, t', k)
        b, _, t, _ = windows.shape
        g, cg, og = self.groups, self.c_in // self.groups, self.c_out // self.groups
        windows = windows.permute(0, 2, 1, 3).reshape(b * t, g, cg * self.kernel)
        weight = self.weight.reshape(g, og, cg * self.kernel)
        acc = torch.cat([int8_matmul(windows[:, i].contiguous(), weight[i]) for i in range(g)], dim=1)
        y = acc.float() * (self.in_scale * self.weight_scale.reshape(-1))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(b, t, self.c_out).transpose(1, 2)


class QuantizedPositionalConv(nn.Module):
    """PositionalConv with its effective (weight-normalised) kernel in int8: (b, t, d) -> (b, t, d)."""

    def __init__(self, pos: PositionalConv, granularity: str):
        super().__init__()
        d, self.kernel = pos.bias.shape[0], pos.kernel
        self.conv = QuantizedConv1d(d, d, pos.kernel, padding=pos.kernel // 2, groups=pos.groups, bias=True,
                                    granularity=granularity)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.kernel % 2 == 0:
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)


def targets(model: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """The layers W8A8 covers, by module name: every Linear, Conv1d and positional conv, except those under a
    module whose name is in `skip` (e.g. `feature_encoder`: recipes.StaticW8A8 says why)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, PositionalConv))
            and not any(f".{s}." in f".{name}." for s in skip)}


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (QuantizedLinear, QuantizedConv1d)) for m in model.modules())


def structure(model: nn.Module, config: StaticW8A8) -> nn.Module:
    """A copy of `model` with every covered layer replaced by its (unfilled) int8 twin: what `quantize_static`
    fills and what an artifact's weights load into."""
    qmodel, g = copy.deepcopy(model), config.weight_granularity
    for name, layer in targets(qmodel, config.skip).items():
        if isinstance(layer, nn.Linear):
            twin = QuantizedLinear(QLinear(layer.in_features, layer.out_features, granularity=g,
                                           bias=layer.bias is not None, int8_output=False))
        elif isinstance(layer, nn.Conv1d):
            twin = QuantizedConv1d(layer.in_channels, layer.out_channels, layer.kernel_size[0], stride=layer.stride[0],
                                   padding=layer.padding[0], groups=layer.groups, bias=layer.bias is not None,
                                   granularity=g)
        else:
            twin = QuantizedPositionalConv(layer, g)
        parent, _, attr = name.rpartition(".")
        setattr(qmodel.get_submodule(parent), attr, twin)
    return qmodel.eval()


@torch.no_grad()
def quantize_static(model: nn.Module, batches: Iterable[tuple], config: StaticW8A8, data: str = "batches",
                    on_batch: Callable[[int], None] | None = None) -> tuple[nn.Module, dict[str, float]]:
    """A W8A8 copy of `model`, calibrated on `batches` (each a tuple of the model's forward arguments:
    (sets, mask) for a set model, (audio,) for a keyword spotter; `data` names them in errors; on_batch(n) after
    each batch of n). Returns it and each layer's input amax (the largest |input| it saw). Raises
    QuambaEdgeError for no batches, or NaN/inf in a layer's input."""
    model = model.eval()
    layers = targets(model, config.skip)
    observers = {name: AbsMaxObserver() for name in layers}
    hooks = [layer.register_forward_pre_hook(lambda _m, args, n=name: observers[n].observe(args[0]))
             for name, layer in layers.items()]
    seen = 0
    try:
        for batch in batches:
            model(*batch)
            seen += 1
            if on_batch:
                on_batch(len(batch[0]))
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise QuambaEdgeError(f"calibration got no {data}. Fix: pass at least one batch of calibration {data}.")
    amax = {name: float(obs.amax) for name, obs in observers.items()}
    bad = [n for n, a in amax.items() if not math.isfinite(a)]
    if bad:
        raise QuambaEdgeError(f"calibration saw NaN/inf at {', '.join(bad[:4])}. Fix: check the calibration {data} "
                              "(a corrupt or silent input normalises to NaN).")
    qmodel = structure(model, config)
    for name, fp in layers.items():
        twin = qmodel.get_submodule(name)
        int8 = twin.q if isinstance(fp, nn.Linear) else twin if isinstance(twin, QuantizedConv1d) else twin.conv
        w_q, w_scale = quantize_weight(fp.weight, config.weight_granularity)
        int8.load_float(w_q, w_scale, scale_from_amax(amax[name]), None, fp.bias)
    return qmodel, amax
