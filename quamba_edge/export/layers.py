"""ONNX emitters for the layers the transformer families share (linear with W8A8 Q/DQ, LayerNorm, GELU,
multi-head attention, masked mean): the set models and the speech models write them the same way, so
their int8 graphs put Q/DQ in the same places and ONNX Runtime fuses them the same way.
"""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from quamba_edge.export.graph import GraphBuilder
from quamba_edge.quant.static import QuantizedLinear


class LayerGraph:
    """Holds a GraphBuilder `g`; each method emits one layer and returns its output's name."""

    g: GraphBuilder

    def linear(self, x: str, layer: nn.Module, hint: str) -> str:
        g = self.g
        if isinstance(layer, nn.Identity):
            return x
        if isinstance(layer, QuantizedLinear):
            q = layer.q
            x = g.qdq(x, g.const(float(q.in_scale), np.float32))
            w = g.int8_weight(hint, q.weight, q.weight_scale)
            bias = q.bias
        else:
            w = g.initializer(f"{hint}_w", layer.weight.detach().t().contiguous())
            bias = layer.bias
        y = g.op("MatMul", [x, w])
        return y if bias is None else g.op("Add", [y, g.initializer(f"{hint}_b", bias.detach().float())])

    def layer_norm(self, x: str, norm: nn.Module, hint: str) -> str:
        if isinstance(norm, nn.Identity):
            return x
        g = self.g
        return g.op("LayerNormalization", [x, g.initializer(f"{hint}_g", norm.weight.detach()),
                                           g.initializer(f"{hint}_b", norm.bias.detach())], axis=-1,
                    epsilon=float(norm.eps))

    def heads(self, x: str, h: int, hd: int, perm: list[int]) -> str:
        g = self.g
        return g.op("Transpose", [g.op("Reshape", [x, g.const([0, 0, h, hd], np.int64)])], perm=perm)

    def attention(self, q: str, k: str, v: str, mask_bias: str, h: int, d: int) -> str:
        """q (b, m, d), k/v (b, n, d) -> (b, m, d); softmax over n with the mask's -inf bias."""
        g = self.g
        hd = d // h
        scores = g.op("MatMul", [self.heads(q, h, hd, [0, 2, 1, 3]), self.heads(k, h, hd, [0, 2, 3, 1])])
        scores = g.op("Add", [g.op("Mul", [scores, g.const(1.0 / math.sqrt(hd))]), mask_bias])
        out = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), self.heads(v, h, hd, [0, 2, 1, 3])])
        return g.op("Reshape", [g.op("Transpose", [out], perm=[0, 2, 1, 3]), g.const([0, 0, d], np.int64)])

    def gelu(self, x: str) -> str:
        g = self.g
        erf = g.op("Erf", [g.op("Mul", [x, g.const(1.0 / math.sqrt(2.0))])])
        return g.op("Mul", [g.op("Mul", [x, g.const(0.5)]), g.op("Add", [erf, g.const(1.0)])])

    def masked_mean(self, x: str, weight: str) -> str:
        g = self.g
        total = g.op("ReduceSum", [g.op("Mul", [x, weight]), g.const([1], np.int64)], keepdims=0)
        return g.op("Div", [total, g.op("ReduceSum", [weight, g.const([1], np.int64)], keepdims=0)])

