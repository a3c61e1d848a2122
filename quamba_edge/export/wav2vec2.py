"""ONNX graph of a keyword spotter (wav2vec 2.0 encoder + KWS head): audio (batch, samples) -> logits.

fp32, or int8 with Q/DQ around every linear and conv layer where the quantized PyTorch model quantizes
(quant/static.py; ONNX Runtime: QLinearConv, MatMulInteger; TensorRT: activations "int8", symmetric Q/DQ with
zero point 0 and float biases, its explicit quantization). Norms, GELU, softmax and the residual stream stay
float. Windows are unpadded: every clip in a batch has the engine's length, as the KWS windows do.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto
from torch import nn

from quamba_edge.export.graph import LayerGraph, WeightFile
from quamba_edge.models.kws import KeywordSpotter
from quamba_edge.models.wav2vec2 import PositionalConv
from quamba_edge.quant.static import QuantizedConv1d, QuantizedPositionalConv


class _SpeechGraph(LayerGraph):
    def __init__(self, model: KeywordSpotter, activations: str, probes: bool = False,
                 weights: WeightFile | None = None):
        super().__init__("keyword_spotter", model, activations, weights)
        self.probes, self.enc_cfg = probes, model.encoder.cfg
        # ONNX Runtime fuses Q/DQ around a Conv into an integer kernel only when the conv's output is
        # quantized too; ours is float (it feeds a norm or GELU), so for ONNX Runtime's uint8 coding the
        # conv is written as ConvInteger (exact int32, u8 x u8) and rescaled. TensorRT takes the Q/DQ form.
        self.conv_integer = activations == "uint8"

    def probe(self, value: str, name: str) -> None:
        """With probes on, expose an intermediate (rank 3) as an output: the layer-by-layer parity check feeds
        it to the next PyTorch layer (families/wav2vec2.py, layer_parity)."""
        if self.probes:
            self.g.output(value, name, TensorProto.FLOAT, [None] * 3)

    def conv(self, x: str, layer: nn.Module, hint: str) -> str:
        """(b, c_in, t) -> (b, c_out, t'): a Conv1d, PositionalConv or QuantizedConv1d (Q/DQ on the input and an
        int8 weight; for the uint8 coding, uint8 x (q + 128) ConvInteger uint8 w (q + 128) with both zero points
        128: the int8 conv, exactly)."""
        g = self.g
        if isinstance(layer, QuantizedConv1d) and self.conv_integer:
            xq = g.quantize(x, g.const(float(layer.in_scale), np.float32))
            wq = g.initializer(f"{hint}_u8", (layer.weight.to(torch.int16) + 128).to(torch.uint8))
            acc = g.op("ConvInteger", [xq, wq, g.const(128, np.uint8), g.const(128, np.uint8)],
                       strides=[layer.stride], pads=[layer.padding, layer.padding], group=layer.groups)
            scale = (layer.in_scale * layer.weight_scale.reshape(-1)).float()
            scale = g.const(float(scale), np.float32) if scale.numel() == 1 else \
                g.initializer(f"{hint}_scale", scale.reshape(-1, 1))
            y = g.op("Mul", [g.op("Cast", [acc], to=TensorProto.FLOAT), scale])
            bias = layer.bias
            return y if bias is None else g.op("Add", [y, g.initializer(f"{hint}_b", bias.float().reshape(-1, 1))])
        if isinstance(layer, QuantizedConv1d):
            x = g.qdq(x, g.const(float(layer.in_scale), np.float32))
            w = g.int8_weight(hint, layer.weight, layer.weight_scale, axis=0)
            stride, padding = layer.stride, layer.padding
        else:
            w = g.initializer(f"{hint}_w", layer.weight.detach().float())
            pos = isinstance(layer, PositionalConv)
            stride, padding = (1, layer.kernel // 2) if pos else (layer.stride[0], layer.padding[0])
        bias = [] if layer.bias is None else [g.initializer(f"{hint}_b", layer.bias.detach().float())]
        return g.op("Conv", [x, w, *bias], strides=[stride], pads=[padding, padding], group=layer.groups)

    def feature_encoder(self, x: str) -> str:
        g = self.g
        for i, layer in enumerate(self.model.encoder.feature_encoder.conv_layers):
            x = self.conv(x, layer.conv, f"conv{i}")
            if layer.norm_kind == "group":  # one group per channel = instance norm over time
                x = g.op("InstanceNormalization", [x, g.initializer(f"conv{i}_gn_g", layer.norm.weight.detach()),
                                                   g.initializer(f"conv{i}_gn_b", layer.norm.bias.detach())],
                         epsilon=float(layer.norm.eps))
            elif layer.norm_kind == "layer":
                y = self.layer_norm(g.op("Transpose", [x], perm=[0, 2, 1]), layer.norm, f"conv{i}_ln")
                x = g.op("Transpose", [y], perm=[0, 2, 1])
            x = self.gelu(x)
            self.probe(x, f"probe_conv{i}")
        return g.op("Transpose", [x], perm=[0, 2, 1])  # (b, t, c)

    def positional(self, h: str) -> str:
        g, pos = self.g, self.model.encoder.pos_conv
        x = g.op("Transpose", [h], perm=[0, 2, 1])
        y = self.conv(x, pos.conv if isinstance(pos, QuantizedPositionalConv) else pos, "pos_conv")
        if pos.kernel % 2 == 0:  # the even kernel's extra frame
            y = g.slice(y, 0, -1, 2)
        return g.op("Transpose", [self.gelu(y)], perm=[0, 2, 1])

    def transformer(self, h: str) -> str:
        g, cfg, enc = self.g, self.enc_cfg, self.model.encoder
        if not cfg.layer_norm_first:
            h = self.layer_norm(h, enc.encoder_norm, "enc_norm")
        self.probe(h, "probe_embed")
        for i, layer in enumerate(enc.layers):
            if cfg.layer_norm_first:
                y = self.layer_norm(h, layer.attn_norm, f"l{i}_ln1")
                h = g.op("Add", [h, self.self_attention(y, layer.attn, cfg.num_heads, cfg.hidden_size, f"l{i}")])
                y = self.layer_norm(h, layer.final_norm, f"l{i}_ln2")
                h = g.op("Add", [h, self.mlp(y, layer, f"l{i}", ("fc1", "fc2"))])
            else:
                y = self.self_attention(h, layer.attn, cfg.num_heads, cfg.hidden_size, f"l{i}")
                h = self.layer_norm(g.op("Add", [h, y]), layer.attn_norm, f"l{i}_ln1")
                h = g.op("Add", [h, self.mlp(h, layer, f"l{i}", ("fc1", "fc2"))])
                h = self.layer_norm(h, layer.final_norm, f"l{i}_ln2")
            self.probe(h, f"probe_layer{i}")
        if cfg.layer_norm_first:
            h = self.layer_norm(h, enc.encoder_norm, "enc_norm")
        return h

    def head(self, h: str) -> str:
        head, d = self.model.head, self.enc_cfg.hidden_size
        if head.cls is not None:
            h = self.prepend_cls(h, head.cls, d)[0]
        h = self.encoder_layer(h, head.layer, d, "head")  # the set models' pre-LN encoder layer
        self.probe(h, "probe_head")
        pooled = self.pool(h, self.model.cfg.pool, head.pool)
        return self.linear(self.layer_norm(pooled, head.norm, "head_norm"), head.classifier, "classifier")

    def build(self) -> onnx.ModelProto:
        g, enc, cfg = self.g, self.model.encoder, self.model.cfg
        audio = g.input("audio", TensorProto.FLOAT, ["batch", "samples"])
        centred = g.op("Sub", [audio, g.op("ReduceMean", [audio], axes=[-1], keepdims=1)])
        var = g.op("ReduceMean", [g.op("Mul", [centred, centred])], axes=[-1], keepdims=1)
        x = g.op("Div", [centred, g.op("Sqrt", [g.op("Add", [var, g.const(1e-7)])])])
        feats = self.feature_encoder(g.op("Unsqueeze", [x, g.const([1], np.int64)]))
        h = self.linear(self.layer_norm(feats, enc.feature_norm, "feature_norm"), enc.feature_proj, "feature_proj")
        h = g.op("Add", [h, self.positional(h)])
        g.output(self.head(self.transformer(h)), "logits", TensorProto.FLOAT, ["batch", len(cfg.labels)])
        precision = "int8" if self.quantized else "fp32"
        return g.finish(f"quamba-edge keyword spotter ({cfg.pool}, {precision})", precision, task="kws",
                        graph="model", pool=cfg.pool, labels=",".join(cfg.labels))


@torch.no_grad()
def export_keyword_spotter(model: KeywordSpotter, activations: str = "int8", probes: bool = False,
                           weights: WeightFile | None = None) -> onnx.ModelProto:
    """activations "int8": symmetric Q/DQ (TensorRT, ARM, CUDA); "uint8" stores the same int8 numbers as q + 128
    (ONNX Runtime's fast x86 path, its convs as ConvInteger); probes adds the intermediates the layer-by-layer
    parity check reads (a separate graph from the shipped one)."""
    return _SpeechGraph(model.eval(), activations, probes, weights).build()
