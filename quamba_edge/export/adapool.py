"""ONNX graph of a set model (AdaPool family): sets (batch, n, d_in) and mask (batch, n) -> (batch, d_out).

fp32, or int8 with Q/DQ around every linear layer where the quantized PyTorch model quantizes (graph.LayerGraph);
LayerNorm, softmax, GELU and the residual stream stay float. Masked elements get -inf attention scores and no
weight in the mean/max pools, as in PyTorch.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto

from quamba_edge.export.graph import LayerGraph, WeightFile
from quamba_edge.models.adapool import SetModel


@torch.no_grad()
def export_set_model(model: SetModel, activations: str = "int8", weights: WeightFile | None = None
                     ) -> onnx.ModelProto:
    """activations "uint8" stores the same int8 numbers as q + 128 (ONNX Runtime's exact path on x86 CPUs,
    see engine.activation_encoding); TensorRT takes "int8"."""
    lg = LayerGraph("set_model", model.eval(), activations, weights)
    g, m, cfg = lg.g, model, model.cfg
    x = g.input("sets", TensorProto.FLOAT, ["batch", "n", cfg.d_in])
    lg.mask = g.input("mask", TensorProto.BOOL, ["batch", "n"])
    h = lg.linear(x, m.embed, "embed")
    if m.query_emb is not None:  # the query flag on element 0
        first = g.op("Add", [g.slice(h, 0, 1, 1), g.initializer("query_emb", m.query_emb.detach())])
        h = g.op("Concat", [first, g.slice(h, 1, 2**62, 1)], axis=1)
    if m.cls is not None:
        h, batch = lg.prepend_cls(h, m.cls, cfg.d_model)
        lg.mask = g.op("Concat", [g.expand(g.const([[True]], np.bool_), batch, [1]), lg.mask], axis=1)
    neg_inf = g.op("Where", [lg.mask, g.const(0.0), g.const(-np.inf)])  # (b, n)
    lg.mask_bias = g.op("Unsqueeze", [neg_inf, g.const([1, 2], np.int64)])  # (b, 1, 1, n)
    lg.weight = g.op("Unsqueeze", [g.op("Cast", [lg.mask], to=TensorProto.FLOAT), g.const([-1], np.int64)])
    for i, layer in enumerate(m.layers):
        h = lg.encoder_layer(h, layer, cfg.d_model, f"l{i}")
    pooled = lg.pool(lg.layer_norm(h, m.norm, "norm"), cfg.pool, m.pool)
    g.output(lg.linear(pooled, m.head, "head"), "output", TensorProto.FLOAT, ["batch", cfg.d_out])
    precision = "int8" if lg.quantized else "fp32"
    return g.finish(f"quamba-edge set model ({cfg.pool}, {precision})", precision, graph="model", pool=cfg.pool)
