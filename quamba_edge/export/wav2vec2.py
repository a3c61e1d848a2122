"""ONNX graph of a keyword spotter (wav2vec 2.0 encoder + KWS head): audio (batch, samples) -> logits.

fp32, or int8 with Q/DQ around every linear and conv layer exactly where the quantized PyTorch model
quantizes (qspeech.py): ONNX Runtime fuses them into integer kernels (QLinearConv, MatMulInteger),
TensorRT reads them as explicit quantization. Norms, GELU, softmax and the residual stream stay float.
Windows are unpadded: every clip in a batch has the engine's length, as the KWS windows do.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
from onnx import TensorProto
from torch import nn

from quamba_edge import __version__
from quamba_edge.export.graph import GraphBuilder, WeightFile
from quamba_edge.export.layers import LayerGraph
from quamba_edge.models.kws import KeywordSpotter
from quamba_edge.models.wav2vec2 import PositionalConv
from quamba_edge.quant.static import QuantizedConv1d, QuantizedPositionalConv, is_quantized


class _SpeechGraph(LayerGraph):
    def __init__(self, model: KeywordSpotter, activations: str, probes: bool = False,
                 weights: WeightFile | None = None):
        self.model, self.probes = model, probes
        # ONNX Runtime fuses Q/DQ around a Conv into an integer kernel only when the conv's output is
        # quantized too; ours is float (it feeds a norm or GELU), so for ONNX Runtime's uint8 coding the
        # conv is written as ConvInteger (exact int32, u8 x u8) and rescaled. TensorRT takes the Q/DQ form.
        self.conv_integer = activations == "uint8"
        self.enc_cfg = model.encoder.cfg
        self.g = GraphBuilder("keyword_spotter", activations, weights)
        self.activations = activations
        self.quantized = is_quantized(model)

    def probe(self, value: str, name: str, rank: int) -> None:
        """With probes on, expose an intermediate as an output: the layer-by-layer parity check feeds it to
        the next PyTorch layer (families/wav2vec2.py, layer_parity)."""
        if self.probes:
            self.g.output(value, name, TensorProto.FLOAT, [None] * rank)

    # --- layers ------------------------------------------------------------------------------------
    def conv(self, x: str, layer: nn.Module, hint: str, *, stride: int = 1, padding: int = 0, groups: int = 1,
             weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> str:
        """(b, c_in, t) -> (b, c_out, t'): Conv, with Q/DQ on the input and an int8 weight when quantized."""
        g = self.g
        if isinstance(layer, QuantizedConv1d) and self.conv_integer:
            return self.conv_integer_op(x, layer, hint)
        if isinstance(layer, QuantizedConv1d):
            x = g.qdq(x, g.const(float(layer.in_scale), np.float32))
            wq = g.initializer(f"{hint}_q", layer.weight)
            scale = layer.weight_scale
            if scale.numel() == 1:
                w = g.dequantize(wq, g.const(float(scale), np.float32), weight=True)
            else:
                w = g.dequantize(wq, g.initializer(f"{hint}_scale", scale.reshape(-1).float()), axis=0, weight=True)
            stride, padding, groups, bias = layer.stride, layer.padding, layer.groups, layer.bias
        else:
            w = g.initializer(f"{hint}_w", weight.detach().float())
        inputs = [x, w] + ([g.initializer(f"{hint}_b", bias.detach().float())] if bias is not None else [])
        return g.op("Conv", inputs, strides=[stride], pads=[padding, padding], group=groups)

    def conv_integer_op(self, x: str, layer: QuantizedConv1d, hint: str) -> str:
        """uint8 x (q + 128) conv uint8 w (q + 128) with both zero points 128 = the int8 conv, exactly."""
        g = self.g
        xq = g.quantize(x, g.const(float(layer.in_scale), np.float32))
        wq = g.initializer(f"{hint}_u8", (layer.weight.to(torch.int16) + 128).to(torch.uint8))
        acc = g.op("ConvInteger", [xq, wq, g.const(128, np.uint8), g.const(128, np.uint8)],
                   strides=[layer.stride], pads=[layer.padding, layer.padding], group=layer.groups)
        scale = (layer.in_scale * layer.weight_scale.reshape(-1)).float()
        scale = g.const(float(scale), np.float32) if scale.numel() == 1 else \
            g.initializer(f"{hint}_scale", scale.reshape(-1, 1))
        y = g.op("Mul", [g.op("Cast", [acc], to=TensorProto.FLOAT), scale])
        if layer.bias is not None:
            y = g.op("Add", [y, g.initializer(f"{hint}_b", layer.bias.detach().float().reshape(-1, 1))])
        return y

    def feature_encoder(self, x: str) -> str:
        g = self.g
        for i, layer in enumerate(self.model.encoder.feature_encoder.conv_layers):
            conv = layer.conv
            if isinstance(conv, nn.Conv1d):
                x = self.conv(x, conv, f"conv{i}", stride=conv.stride[0], weight=conv.weight, bias=conv.bias)
            else:
                x = self.conv(x, conv, f"conv{i}")
            if layer.norm_kind == "group":  # one group per channel = instance norm over time
                x = g.op("InstanceNormalization", [x, g.initializer(f"conv{i}_gn_g", layer.norm.weight.detach()),
                                                   g.initializer(f"conv{i}_gn_b", layer.norm.bias.detach())],
                         epsilon=float(layer.norm.eps))
            elif layer.norm_kind == "layer":
                y = self.layer_norm(g.op("Transpose", [x], perm=[0, 2, 1]), layer.norm, f"conv{i}_ln")
                x = g.op("Transpose", [y], perm=[0, 2, 1])
            x = self.gelu(x)
            self.probe(x, f"probe_conv{i}", 3)
        return g.op("Transpose", [x], perm=[0, 2, 1])  # (b, t, c)

    def positional(self, h: str) -> str:
        g, pos = self.g, self.model.encoder.pos_conv
        x = g.op("Transpose", [h], perm=[0, 2, 1])
        if isinstance(pos, QuantizedPositionalConv):
            y, kernel = self.conv(x, pos.conv, "pos_conv"), pos.kernel
        else:
            assert isinstance(pos, PositionalConv)
            y = self.conv(x, pos, "pos_conv", padding=pos.kernel // 2, groups=pos.groups, weight=pos.weight,
                          bias=pos.bias)
            kernel = pos.kernel
        if kernel % 2 == 0:  # the even kernel's extra frame
            y = g.op("Slice", [y, g.const([0], np.int64), g.const([-1], np.int64), g.const([2], np.int64)])
        return g.op("Transpose", [self.gelu(y)], perm=[0, 2, 1])

    def self_attention(self, x: str, attn: nn.Module, heads: int, d: int, hint: str) -> str:
        g = self.g
        q, k, v = (self.linear(x, p, f"{hint}_{n}") for n, p in
                   (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj)))
        hd = d // heads
        scores = g.op("MatMul", [self.heads(q, heads, hd, [0, 2, 1, 3]), self.heads(k, heads, hd, [0, 2, 3, 1])])
        probs = g.op("Softmax", [g.op("Mul", [scores, g.const(1.0 / math.sqrt(hd))])], axis=-1)
        out = g.op("MatMul", [probs, self.heads(v, heads, hd, [0, 2, 1, 3])])
        out = g.op("Reshape", [g.op("Transpose", [out], perm=[0, 2, 1, 3]), g.const([0, 0, d], np.int64)])
        return self.linear(out, attn.out_proj, f"{hint}_o")

    def transformer(self, h: str) -> str:
        g, cfg = self.g, self.enc_cfg
        enc = self.model.encoder
        if not cfg.layer_norm_first:
            h = self.layer_norm(h, enc.encoder_norm, "enc_norm")
        self.probe(h, "probe_embed", 3)
        for i, layer in enumerate(enc.layers):
            def ffn(y: str, layer=layer, i=i) -> str:
                return self.linear(self.gelu(self.linear(y, layer.fc1, f"l{i}_fc1")), layer.fc2, f"l{i}_fc2")

            if cfg.layer_norm_first:
                h = g.op("Add", [h, self.self_attention(self.layer_norm(h, layer.attn_norm, f"l{i}_ln1"), layer.attn,
                                                        cfg.num_heads, cfg.hidden_size, f"l{i}")])
                h = g.op("Add", [h, ffn(self.layer_norm(h, layer.final_norm, f"l{i}_ln2"))])
            else:
                h = g.op("Add", [h, self.self_attention(h, layer.attn, cfg.num_heads, cfg.hidden_size, f"l{i}")])
                h = self.layer_norm(h, layer.attn_norm, f"l{i}_ln1")
                h = self.layer_norm(g.op("Add", [h, ffn(h)]), layer.final_norm, f"l{i}_ln2")
            self.probe(h, f"probe_layer{i}", 3)
        if cfg.layer_norm_first:
            h = self.layer_norm(h, enc.encoder_norm, "enc_norm")
        return h

    def head(self, h: str) -> str:
        g, head = self.g, self.model.head
        d = self.enc_cfg.hidden_size
        if head.cls is not None:
            batch = g.op("Slice", [g.op("Shape", [h]), g.const([0], np.int64), g.const([1], np.int64)])
            shape = g.op("Concat", [batch, g.const([1, d], np.int64)], axis=0)
            h = g.op("Concat", [g.op("Expand", [g.initializer("cls", head.cls.detach()), shape]), h], axis=1)
        layer = head.layer  # the set models' pre-LN encoder layer
        y = self.layer_norm(h, layer.norm1, "head_norm1")
        h = g.op("Add", [h, self.self_attention(y, layer, head.cfg.n_heads, d, "head")])
        ff = self.linear(self.gelu(self.linear(self.layer_norm(h, layer.norm2, "head_norm2"), layer.ff1, "head_ff1")),
                         layer.ff2, "head_ff2")
        h = g.op("Add", [h, ff])
        self.probe(h, "probe_head", 3)
        pooled = self.pool(h, d)
        return self.linear(self.layer_norm(pooled, head.norm, "head_norm"), head.classifier, "classifier")

    def pool(self, h: str, d: int) -> str:
        g, kind, pool = self.g, self.model.cfg.pool, self.model.head.pool
        if kind == "avg":
            return g.op("ReduceMean", [h], axes=[1], keepdims=0)
        if kind == "max":
            return g.op("ReduceMax", [h], axes=[1], keepdims=0)
        if kind == "cls":
            return g.op("Gather", [h, g.const(0, np.int64)], axis=1)
        query = g.op("ReduceMean", [h], axes=[1], keepdims=0)  # AdaPool's mean query
        q = g.op("Unsqueeze", [self.linear(query, pool.q_proj, "pool_q"), g.const([1], np.int64)])
        k, v = self.linear(h, pool.k_proj, "pool_k"), self.linear(h, pool.v_proj, "pool_v")
        hd = d // pool.n_heads
        scores = g.op("MatMul", [self.heads(q, pool.n_heads, hd, [0, 2, 1, 3]),
                                 self.heads(k, pool.n_heads, hd, [0, 2, 3, 1])])
        probs = g.op("Softmax", [g.op("Mul", [scores, g.const(1.0 / math.sqrt(hd))])], axis=-1)
        out = g.op("MatMul", [probs, self.heads(v, pool.n_heads, hd, [0, 2, 1, 3])])  # (b, h, 1, hd)
        out = g.op("Reshape", [g.op("Transpose", [out], perm=[0, 2, 1, 3]), g.const([0, d], np.int64)])
        return self.linear(out, pool.out_proj, "pool_o")

    # --- graph ------------------------------------------------------------------------------------
    def build(self) -> onnx.ModelProto:
        g, enc = self.g, self.model.encoder
        audio = g.input("audio", TensorProto.FLOAT, ["batch", "samples"])
        mean = g.op("ReduceMean", [audio], axes=[-1], keepdims=1)
        centred = g.op("Sub", [audio, mean])
        var = g.op("ReduceMean", [g.op("Mul", [centred, centred])], axes=[-1], keepdims=1)
        x = g.op("Div", [centred, g.op("Sqrt", [g.op("Add", [var, g.const(1e-7)])])])
        feats = self.feature_encoder(g.op("Unsqueeze", [x, g.const([1], np.int64)]))
        h = self.linear(self.layer_norm(feats, enc.feature_norm, "feature_norm"), enc.feature_proj, "feature_proj")
        h = g.op("Add", [h, self.positional(h)])
        logits = self.head(self.transformer(h))
        g.output(logits, "logits", TensorProto.FLOAT, ["batch", len(self.model.cfg.labels)])
        precision = "int8" if self.quantized else "fp32"
        meta = {"quamba_edge_version": __version__, "task": "kws", "graph": "model",
                "precision": precision, "pool": self.model.cfg.pool, "labels": ",".join(self.model.cfg.labels),
                "activations": self.activations if self.quantized else "float"}
        return g.model(f"quamba-edge keyword spotter ({self.model.cfg.pool}, {precision})", meta)


@torch.no_grad()
def export_keyword_spotter(model: KeywordSpotter, activations: str = "int8", probes: bool = False,
                           weights: WeightFile | None = None) -> onnx.ModelProto:
    """activations "uint8" stores the same int8 numbers as q + 128 (ONNX Runtime's fast x86 path); probes
    adds the intermediates the layer-by-layer parity check reads (a separate graph from the shipped one)."""
    return _SpeechGraph(model.eval(), activations, probes, weights).build()
