"""ONNX graph of a set model (AdaPool family): sets (batch, n, d_in) and mask (batch, n) -> (batch, d_out).

fp32, or int8 with Q/DQ around every linear layer exactly where the quantized PyTorch model quantizes
(its static input scale, its int8 weight): ONNX Runtime fuses them into integer kernels, TensorRT reads
them as explicit quantization. LayerNorm, softmax, GELU and the residual stream stay float. Masked
elements get -inf attention scores and no weight in the mean/max pools, as in PyTorch.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto

from quamba_edge import __version__
from quamba_edge.export.graph import GraphBuilder, WeightFile
from quamba_edge.export.layers import LayerGraph
from quamba_edge.models.adapool import SetModel
from quamba_edge.models.pooling import AdaPool
from quamba_edge.quant.static import is_quantized


class _SetGraph(LayerGraph):
    def __init__(self, model: SetModel, activations: str, weights: WeightFile | None = None):
        self.model, self.cfg = model, model.cfg
        self.g = GraphBuilder("set_model", activations, weights)
        self.activations = activations
        self.quantized = is_quantized(model)

    def build(self) -> onnx.ModelProto:
        g, cfg, m = self.g, self.cfg, self.model
        x = g.input("sets", TensorProto.FLOAT, ["batch", "n", cfg.d_in])
        mask = g.input("mask", TensorProto.BOOL, ["batch", "n"])
        h = self.linear(x, m.embed, "embed")
        if m.query_emb is not None:  # the query flag on element 0
            first = g.op("Slice", [h, g.const([0], np.int64), g.const([1], np.int64), g.const([1], np.int64)])
            rest = g.op("Slice", [h, g.const([1], np.int64), g.const([2**62], np.int64), g.const([1], np.int64)])
            h = g.op("Concat", [g.op("Add", [first, g.initializer("query_emb", m.query_emb.detach())]), rest], axis=1)
        if m.cls is not None:
            batch = g.op("Slice", [g.op("Shape", [h]), g.const([0], np.int64), g.const([1], np.int64)])
            shape = g.op("Concat", [batch, g.const([1, cfg.d_model], np.int64)], axis=0)
            h = g.op("Concat", [g.op("Expand", [g.initializer("cls", m.cls.detach()), shape]), h], axis=1)
            ones = g.op("Expand", [g.const([[True]], np.bool_), g.op("Concat", [batch, g.const([1], np.int64)],
                                                                             axis=0)])
            mask = g.op("Concat", [ones, mask], axis=1)
        neg_inf = g.op("Where", [mask, g.const(0.0), g.const(-np.inf)])  # (b, n)
        mask_bias = g.op("Unsqueeze", [neg_inf, g.const([1, 2], np.int64)])  # (b, 1, 1, n)
        weight = g.op("Unsqueeze", [g.op("Cast", [mask], to=TensorProto.FLOAT), g.const([-1], np.int64)])
        for i, layer in enumerate(m.layers):
            y = self.layer_norm(h, layer.norm1, f"l{i}_norm1")
            q, k, v = (self.linear(y, p, f"l{i}_{n}") for n, p in
                       (("q", layer.q_proj), ("k", layer.k_proj), ("v", layer.v_proj)))
            h = g.op("Add", [h, self.linear(self.attention(q, k, v, mask_bias, cfg.n_heads, cfg.d_model),
                                            layer.out_proj, f"l{i}_o")])
            ff = self.linear(self.gelu(self.linear(self.layer_norm(h, layer.norm2, f"l{i}_norm2"), layer.ff1,
                                                   f"l{i}_ff1")), layer.ff2, f"l{i}_ff2")
            h = g.op("Add", [h, ff])
        h = self.layer_norm(h, m.norm, "norm")
        pooled = self.pool(h, mask, mask_bias, weight)
        g.output(self.linear(pooled, m.head, "head"), "output", TensorProto.FLOAT, ["batch", cfg.d_out])
        precision = "int8" if self.quantized else "fp32"
        meta = {"quamba_edge_version": __version__, "graph": "model", "precision": precision,
                "pool": cfg.pool, "activations": self.activations if self.quantized else "float"}
        return g.model(f"quamba-edge set model ({cfg.pool}, {precision})", meta)

    def pool(self, h: str, mask: str, mask_bias: str, weight: str) -> str:
        g, pool = self.g, self.model.pool
        if self.cfg.pool == "avg":
            return self.masked_mean(h, weight)
        if self.cfg.pool == "max":
            keep = g.op("Unsqueeze", [mask, g.const([-1], np.int64)])
            return g.op("ReduceMax", [g.op("Where", [keep, h, g.const(-np.inf)])], axes=[1], keepdims=0)
        if self.cfg.pool == "cls":
            return g.op("Gather", [h, g.const(0, np.int64)], axis=1)
        assert isinstance(pool, AdaPool)
        if pool.query == "mean":
            query = self.masked_mean(h, weight)
        else:
            query = g.op("Gather", [h, g.const(int(pool.query), np.int64)], axis=1)
        q = g.op("Unsqueeze", [self.linear(query, pool.q_proj, "pool_q"), g.const([1], np.int64)])  # (b, 1, d)
        k, v = self.linear(h, pool.k_proj, "pool_k"), self.linear(h, pool.v_proj, "pool_v")
        attended = self.attention(q, k, v, mask_bias, pool.n_heads, pool.d)  # (b, 1, d)
        pooled = self.linear(g.op("Squeeze", [attended, g.const([1], np.int64)]), pool.out_proj, "pool_o")
        return pooled if pool.query == "mean" else g.op("Add", [pooled, query])


@torch.no_grad()
def export_set_model(model: SetModel, activations: str = "int8", weights: WeightFile | None = None
                     ) -> onnx.ModelProto:
    """activations "uint8" stores the same int8 numbers as q + 128 (ONNX Runtime's exact path on x86 CPUs,
    see engine.activation_encoding); TensorRT takes "int8"."""
    return _SetGraph(model.eval(), activations, weights).build()
