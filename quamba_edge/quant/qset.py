"""Static W8A8 for set models (AdaPool and its baselines): every linear layer of the encoder and of the
pool reads an int8 activation with a calibrated per-tensor scale and an int8 weight (per tensor or per
output channel), accumulates exactly in int32 and returns float; softmax, LayerNorms, GELU and the
residual stream stay float, as they do in Quamba's recipe for Mamba.

Calibration runs the fp model on calibration sets and records, per linear layer, the largest |input|
(abs-max).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from quamba_edge.models.adapool import SetModel
from quamba_edge.quant.int8 import quantize, quantize_weight, scale_from_amax
from quamba_edge.quant.observers import input_amax
from quamba_edge.quant.qmodels import QLinear


class QuantizedLinear(nn.Module):
    """float x -> int8 (static scale) -> QLinear (int8 x int8 -> int32 -> float + bias)."""

    def __init__(self, q: QLinear):
        super().__init__()
        self.q = q

    def forward(self, x: Tensor) -> Tensor:
        return self.q(quantize(x, self.q.in_scale))


def is_quantized(model: nn.Module) -> bool:
    """A set model whose linear layers are int8 (from `quantize_set_model` or an int8 artifact)."""
    return any(isinstance(m, QuantizedLinear) for m in model.modules())


def linear_layers(model: SetModel) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def observe_inputs(model: SetModel, batches: Iterable[tuple[Tensor, Tensor | None]]) -> dict[str, float]:
    """The largest |input| of every linear layer over the calibration sets."""
    return input_amax(linear_layers(model), (model(x, mask) for x, mask in batches), "sets")


def quantized_structure(model: SetModel, weight_granularity: str = "tensor") -> SetModel:
    """A copy of `model` with every nn.Linear replaced by an (unfilled) int8 layer of the same shape:
    what `quantize_set_model` fills and what an artifact's weights load into."""
    qmodel = copy.deepcopy(model)
    for name, layer in linear_layers(qmodel).items():
        parent_name, _, attr = name.rpartition(".")
        parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
        q = QLinear(layer.in_features, layer.out_features, granularity=weight_granularity,
                    bias=layer.bias is not None, int8_output=False)
        if layer.bias is not None:
            q.bias.copy_(layer.bias.detach())
        setattr(parent, attr, QuantizedLinear(q))
    return qmodel.eval()


@torch.no_grad()
def quantize_set_model(model: SetModel, batches: Iterable[tuple[Tensor, Tensor | None]],
                       weight_granularity: str = "tensor") -> tuple[SetModel, dict[str, float]]:
    """A copy of `model` whose linear layers are W8A8 (static per-tensor activation scales; weights per
    tensor or per output channel)."""
    model = model.eval()
    amax = observe_inputs(model, batches)
    layers = linear_layers(model)
    qmodel = quantized_structure(model, weight_granularity)
    for name, wrapper in qmodel.named_modules():
        if isinstance(wrapper, QuantizedLinear):
            w_q, w_scale = quantize_weight(layers[name].weight, weight_granularity)
            wrapper.q.load_float(w_q, w_scale, scale_from_amax(amax[name]), None)
    return qmodel, amax
