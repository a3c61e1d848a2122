"""Mamba-1 as two ONNX graphs (DESIGN.md, "Graphs and engines").

    prefill: input_ids (b, l)                          -> logits (b, V) of the last position, conv_state, ssm_state
    decode:  input_ids (b, 1), conv_state, ssm_state   -> logits (b, V), conv_state, ssm_state

States are stacked over layers: conv_state (n_layer, b, d_inner, d_conv-1), ssm_state (n_layer, b, d_inner,
d_state) fp32. In the int8 graph the conv state is int8 (the int8 in_proj outputs x, as in the PyTorch
reference), and every quantization point of DESIGN.md is a QuantizeLinear -> DequantizeLinear pair around a
float tensor: symmetric, zero point 0, per-tensor activation scales, per-tensor or per-channel (axis 1 of the
transposed weight) weight scales, float biases. Each int8 matmul has the shape ONNX Runtime fuses:

    DQ(x_q) ─┐
             MatMul ── Q(out)       -> QLinearMatMul          (in_proj, x_proj, dt_proj)
    DQ(W_q) ─┘        (no Q)        -> MatMulIntegerToFloat   (out_proj: its output joins the fp32 residual)

The prompt recurrence is one ONNX `Scan` (batch and length dynamic); the decode graph has no loop. The
Hadamard rotation y·Mᵀ is one small matmul per Kronecker factor (H_K, Sylvester blocks of at most 64), never
a dense d_inner² matrix.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from quamba_edge.export.graph import GraphBuilder, WeightFile
from quamba_edge.models.mamba import MambaLM
from quamba_edge.quant.hadamard import factor, small_hadamard, sylvester
from quamba_edge.quant.int8 import dequantize
from quamba_edge.quant.quamba import QuantizedMambaLM

GRAPHS = ("prefill", "decode")
MAX_SYLVESTER_BLOCK = 64
FLOATS = {torch.float32: ("fp32", TensorProto.FLOAT, np.float32),  # precision, ONNX and numpy types
          torch.float16: ("fp16", TensorProto.FLOAT16, np.float16)}


class MambaGraph:
    """Shared by the fp and int8 exports; the layer bodies differ only in where int8 appears. export/mamba2.py
    subclasses it (its own layers, state shape and head; the graph around them is this one)."""

    quantized_type: type = QuantizedMambaLM

    def __init__(self, model: nn.Module, kind: str, dtype: torch.dtype, probes: bool = False,
                 activations: str = "int8", weights: WeightFile | None = None):
        if kind not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, not {kind!r}")
        self.quantized = isinstance(model, self.quantized_type)
        if self.quantized and dtype != torch.float32:
            raise ValueError("the int8 graph keeps its float parts in fp32 (DESIGN.md, CPU); use dtype float32")
        self.model, self.kind, self.cfg, self.dtype, self.probes = model, kind, model.cfg, dtype, probes
        precision, self.T, self.np_dtype = FLOATS[dtype]
        self.precision = "int8" if self.quantized else precision
        self.g = GraphBuilder(f"mamba_{kind}", activations, weights)
        # Boundaries of the subgraphs a TensorRT plugin replaces (export/plugins.py), recorded as they are
        # built: the plugin's inputs and outputs, by tensor name, per layer.
        self.plugin_regions: list[dict] = []

    def w(self, hint: str, t: torch.Tensor) -> str:
        return self.g.initializer(hint, t.detach().to(self.dtype))

    def scalar(self, t: torch.Tensor) -> str:
        return self.g.const(float(t), np.float32)

    def cast(self, x: str, to: int = TensorProto.FLOAT) -> str:
        """Between the graph's float type and fp32: a no-op in an fp32 graph."""
        return x if self.T == TensorProto.FLOAT else self.g.op("Cast", [x], to=to)

    def silu(self, x: str) -> str:
        return self.g.op("Mul", [x, self.g.op("Sigmoid", [x])])

    def rmsnorm(self, x: str, weight: torch.Tensor, eps: float) -> str:
        g = self.g
        ms = g.op("ReduceMean", [g.op("Mul", [x, x])], axes=[-1], keepdims=1)
        inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [ms, g.const(eps, self.np_dtype)])])])
        return g.op("Mul", [g.op("Mul", [x, inv]), self.w("norm_w", weight)])

    def linear(self, hint: str, x: str, lin: torch.nn.Linear) -> str:
        y = self.g.op("MatMul", [x, self.w(f"{hint}_w", lin.weight.t().contiguous())])
        return y if lin.bias is None else self.g.op("Add", [y, self.w(f"{hint}_b", lin.bias)])

    def qlinear(self, hint: str, x_dq: str, lin, quantize_out: bool) -> str:
        """MatMul of DQ'd activation and weight, + bias; Q'd (kept int8) when `quantize_out`, else float."""
        g = self.g
        y = g.op("MatMul", [x_dq, g.int8_weight(hint, lin.weight, lin.weight_scale)])
        if lin.bias is not None:
            y = g.op("Add", [y, self.w(f"{hint}_bias", lin.bias)])
        return g.quantize(y, self.scalar(lin.out_scale)) if quantize_out else y

    def hadamard(self, x: str, n: int) -> str:
        """x·Mᵀ with M = (H_K ⊗ H_P)/√n as a chain of small matmuls, one per Kronecker factor."""
        g = self.g
        K, P = factor(n)
        factors = [small_hadamard(K)] if K > 1 else []
        while P > 1:
            factors.append(sylvester(min(P, MAX_SYLVESTER_BLOCK)))
            P //= factors[-1].shape[0]
        dims, last = [f.shape[0] for f in factors], len(factors) - 1
        for i in reversed(range(len(factors))):
            outer = int(np.prod(dims[:i], dtype=np.int64))
            if i == last:  # last axis: X @ Hᵀ
                x = g.op("Reshape", [x, g.const([0, 0, outer, dims[i]], np.int64)])
                x = g.op("MatMul", [x, self.w("hadamard", (factors[i] / math.sqrt(n)).T.contiguous())])
            else:  # middle axis: H @ X over (dims[i], inner)
                inner = int(np.prod(dims[i + 1 :], dtype=np.int64))
                x = g.op("Reshape", [x, g.const([0, 0, outer, dims[i], inner], np.int64)])
                x = g.op("MatMul", [self.w("hadamard", factors[i]), x])
        return g.op("Reshape", [x, g.const([0, 0, n], np.int64)])

    def scan(self, u: str, delta: str, A: str, B: str, C: str, D: str, h0: str) -> tuple[str, str]:
        """fp32 in and out. Prefill: discretize in parallel, then one ONNX Scan over time."""
        g = self.g
        dA = g.op("Exp", [g.op("Mul", [g.op("Unsqueeze", [delta, g.const([-1], np.int64)]), A])])  # (b,l,d,n)
        du = g.op("Unsqueeze", [g.op("Mul", [delta, u]), g.const([-1], np.int64)])  # (b,l,d,1)
        dBu = g.op("Mul", [du, g.op("Unsqueeze", [B, g.const([2], np.int64)])])  # (b,l,d,n)
        if self.kind == "decode":  # one step, kept in the (b, 1, d, n) layout of dA
            t1 = g.const([1], np.int64)
            h = g.op("Add", [g.op("Mul", [dA, g.op("Unsqueeze", [h0, t1])]), dBu])  # (b,1,d,n)
            Ct = g.op("Unsqueeze", [C, g.const([2], np.int64)])  # (b,1,1,n)
            y = g.op("ReduceSum", [g.op("Mul", [h, Ct]), g.const([-1], np.int64)], keepdims=0)  # (b,1,d)
            h = g.op("Squeeze", [h, t1])
        else:
            h, y = g.op("Scan", [h0, dA, dBu, C], n_out=2, body=_scan_body(g.fresh("scan")), num_scan_inputs=3,
                        scan_input_axes=[1, 1, 1], scan_output_axes=[1])
        return g.op("Add", [y, g.op("Mul", [u, D])]), h

    def fp_layer(self, layer, h: str, conv_in: str, ssm_in: str) -> tuple[str, str, str]:
        g, cfg, mixer = self.g, self.cfg, layer.mixer
        x = self.rmsnorm(h, layer.norm.weight, layer.norm.eps)
        x, z = g.split(self.linear("in_proj", x, mixer.in_proj), [cfg.d_inner] * 2)
        x_pad = g.op("Concat", [conv_in, g.op("Transpose", [x], perm=[0, 2, 1])], axis=2)
        conv_out = g.slice(x_pad, 1 - cfg.d_conv, 2**62, 2)  # the last k-1 columns
        u = self.conv_silu(x_pad, mixer.conv1d.weight.reshape(cfg.d_inner, cfg.d_conv), mixer.conv1d.bias)
        dt, B, C = g.split(self.linear("x_proj", u, mixer.x_proj), [cfg.rank, cfg.d_state, cfg.d_state])
        delta = g.op("Softplus", [self.cast(self.linear("dt_proj", dt, mixer.dt_proj))])
        A = g.initializer("A", -torch.exp(mixer.A_log.float()))  # fp32 in an fp16 graph too
        D = g.initializer("D", mixer.D.float())
        y, ssm_out = self.scan(self.cast(u), delta, A, self.cast(B), self.cast(C), D, ssm_in)
        y = g.op("Mul", [self.cast(y, self.T), self.silu(z)])
        return g.op("Add", [h, self.linear("out_proj", y, mixer.out_proj)]), conv_out, ssm_out

    def int8_layer(self, layer, h: str, conv_in: str, ssm_in: str) -> tuple[str, str, str]:
        g, cfg, m = self.g, self.cfg, layer.mixer
        s_norm = self.scalar(layer.norm.out_scale)
        x_dq = g.qdq(self.rmsnorm(h, layer.norm.norm.weight, layer.norm.norm.eps), s_norm)
        x_q, z_q = g.split(self.qlinear("in_proj", x_dq, m.in_proj, quantize_out=True), [cfg.d_inner] * 2)
        s_xz = self.scalar(m.in_proj.out_scale)
        if self.kind == "prefill":  # a float zero state, quantized here: TensorRT wants int8 only out of Q nodes
            conv_in = g.quantize(conv_in, s_xz)
        elif g.activation_type == np.uint8:  # the state stays int8 at the graph boundary: re-encode, exactly
            conv_in = g.quantize(g.dequantize(conv_in, s_xz, int8=True), s_xz)
        x_pad_q = g.op("Concat", [conv_in, g.op("Transpose", [x_q], perm=[0, 2, 1])], axis=2)
        conv_out = g.slice(x_pad_q, 1 - cfg.d_conv, 2**62, 2)
        if g.activation_type == np.uint8:
            conv_out = g.quantize(g.dequantize(conv_out, s_xz), s_xz, to_int8=True)
        conv = m.conv1d  # int8 values x their scale, as the reference
        u = self.conv_silu(g.dequantize(x_pad_q, s_xz), dequantize(conv.weight, conv.weight_scale),
                           dequantize(conv.bias, conv.bias_scale))
        u_q = g.quantize(u, self.scalar(conv.out_scale))
        u_dq = g.dequantize(u_q, self.scalar(conv.out_scale))
        layer_index = len(self.plugin_regions) // 2
        self.plugin_regions.append({"plugin": "QuambaConv1dSiLU", "layer": layer_index,
                                    "inputs": [x_q, conv_in], "outputs": [u_q, conv_out]})
        dbc_q = self.qlinear("x_proj", u_dq, m.x_proj, quantize_out=True)
        dt_q, B_q, C_q = g.split(dbc_q, [cfg.rank, cfg.d_state, cfg.d_state])
        s_dbc = self.scalar(m.x_proj.out_scale)
        delta_q = self.qlinear("dt_proj", g.dequantize(dt_q, s_dbc), m.dt_proj, quantize_out=True)
        sc = m.scan
        delta_bias = self.w("delta_bias", dequantize(sc.delta_bias, sc.delta_bias_scale))
        delta = g.op("Softplus", [g.op("Add", [g.dequantize(delta_q, self.scalar(sc.delta_scale)), delta_bias])])
        A = self.w("A", -torch.exp(dequantize(sc.A_log, sc.A_log_scale)))
        D = self.w("D", dequantize(sc.D, sc.D_scale))
        y, ssm_out = self.scan(u_dq, delta, A, g.dequantize(B_q, s_dbc), g.dequantize(C_q, s_dbc), D, ssm_in)
        y = g.op("Mul", [y, self.silu(g.dequantize(z_q, s_xz))])
        self.plugin_regions.append({"plugin": "QuambaSelectiveScan", "layer": layer_index,
                                    "inputs": [u_q, delta_q, B_q, C_q, z_q, ssm_in], "outputs": [y, ssm_out]})
        if m.rotate.rotate_output:
            y = self.hadamard(y, cfg.d_inner)
        out = self.qlinear("out_proj", g.qdq(y, self.scalar(m.rotate.out_scale)), m.out_proj, quantize_out=False)
        return g.op("Add", [h, out]), conv_out, ssm_out

    def conv_silu(self, x_pad: str, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
        """Causal depthwise conv (b, d, k-1+l) as k shifted multiply-adds, + bias, SiLU -> u (b, l, d).

        ONNX Runtime's grouped Conv with one channel per group costs ~0.3 ms a layer at decode; the same
        sum written as elementwise ops costs a few microseconds and is just as portable.
        """
        g, k = self.g, self.cfg.d_conv
        if self.kind == "decode":  # x_pad is exactly the k-wide window
            prod = g.op("Mul", [x_pad, self.w("conv_w", weight.unsqueeze(0))])
            c = g.op("ReduceSum", [prod, g.const([-1], np.int64)], keepdims=1)
        else:
            for j in range(k):
                window = g.slice(x_pad, j, j - (k - 1) if j < k - 1 else 2**62, 2)
                term = g.op("Mul", [window, self.w("conv_w", weight[:, j : j + 1].unsqueeze(0))])
                c = term if j == 0 else g.op("Add", [c, term])
        if bias is not None:
            c = g.op("Add", [c, self.w("conv_b", bias.reshape(1, -1, 1))])
        return g.op("Transpose", [self.silu(c)], perm=[0, 2, 1])

    title = "Mamba-1"

    def head(self, normed: str, emb_name: str, body) -> str:
        """Logits (b, V) from the final norm's output: the int8 lm_head (--int8-head: MatMulIntegerToFloat in
        ORT) or the tied embedding."""
        if self.quantized and self.model.head is not None:
            return self.qlinear("head", self.g.qdq(normed, self.scalar(self.model.head.in_scale)), self.model.head,
                                quantize_out=False)
        return self.g.op("Gemm", [normed, emb_name], transB=1)

    def build(self) -> onnx.ModelProto:
        g, cfg, quantized = self.g, self.cfg, self.quantized
        body = self.model if quantized else self.model.backbone
        conv_type = TensorProto.INT8 if quantized else self.T
        channels, tail = cfg.conv_state_channels, list(cfg.ssm_state_shape)
        conv_shape = [cfg.n_layer, "batch", channels, cfg.d_conv - 1]
        ssm_shape = [cfg.n_layer, "batch", *tail]
        seq = "seq" if self.kind == "prefill" else 1
        ids = g.input("input_ids", TensorProto.INT64, ["batch", seq])
        if self.kind == "decode":
            conv_all = g.input("conv_state_in", conv_type, conv_shape)
            ssm_all = g.input("ssm_state_in", TensorProto.FLOAT, ssm_shape)
        else:
            batch = g.slice(g.op("Shape", [ids]), 0, 1)
            conv0 = g.expand(g.const(np.zeros((1, channels, cfg.d_conv - 1)), self.np_dtype), batch,
                             [channels, cfg.d_conv - 1])
            ssm0 = g.expand(g.const(np.zeros((1, *tail)), np.float32), batch, tail)
        emb_name = self.w("embedding", body.embedding.weight)
        h = g.op("Gather", [emb_name, ids], axis=0)  # (b, l, d_model)
        conv_outs, ssm_outs = [], []
        for i, layer in enumerate(body.layers):
            if self.probes:  # the residual stream entering each layer, for the layer-by-layer parity check
                g.output(h, f"probe_h{i}", self.T, ["batch", seq, cfg.d_model])
            if self.kind == "decode":
                idx = g.const(i, np.int64)
                conv_in = g.op("Gather", [conv_all, idx], axis=0)
                ssm_in = g.op("Gather", [ssm_all, idx], axis=0)
            else:
                conv_in, ssm_in = conv0, ssm0
            h, conv_out, ssm_out = (self.int8_layer if quantized else self.fp_layer)(layer, h, conv_in, ssm_in)
            conv_outs.append(g.op("Unsqueeze", [conv_out, g.const([0], np.int64)]))
            ssm_outs.append(g.op("Unsqueeze", [ssm_out, g.const([0], np.int64)]))
        if self.probes:
            g.output(h, f"probe_h{cfg.n_layer}", self.T, ["batch", seq, cfg.d_model])
        normed = self.rmsnorm(g.op("Gather", [h, g.const(-1, np.int64)], axis=1), body.norm_f.weight, body.norm_f.eps)
        g.output(self.cast(self.head(normed, emb_name, body)), "logits", TensorProto.FLOAT, ["batch", cfg.vocab_size])
        g.output(g.op("Concat", conv_outs, axis=0), "conv_state", conv_type, conv_shape)
        g.output(g.op("Concat", ssm_outs, axis=0), "ssm_state", TensorProto.FLOAT, ssm_shape)
        meta = {"graph": self.kind}
        if self.plugin_regions and g.activations == "int8":  # plugins read int8 tensors (not ORT's uint8 coding)
            meta["plugin_regions"] = json.dumps(self.plugin_regions)
        return g.finish(f"quamba-edge {self.title} {self.kind} graph ({self.precision})", self.precision, **meta)


def _scan_body(tag: str) -> onnx.GraphProto:
    """h_t = dA_t * h_{t-1} + dBu_t;  y_t = <h_t, C_t>  (b, d, n) state, (b, d) output.

    Value and node names carry `tag` so that the six (or 64) bodies stay distinguishable in TensorRT.
    """
    def node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, [f"{tag}_{i}" for i in inputs], [f"{tag}_{output}"], name=f"{tag}_{op}_{output}",
                                **attrs)

    def axis(output: str, name: str, value: int) -> onnx.NodeProto:
        return node("Constant", [], output, value=helper.make_tensor(f"{tag}_{name}", TensorProto.INT64, [1], [value]))

    def info(name: str, *shape: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(f"{tag}_{name}", TensorProto.FLOAT, ["batch", *shape])

    nodes = [node("Mul", ["dA_t", "h_prev"], "decayed"), node("Add", ["decayed", "dBu_t"], "h_next"),
             axis("axis1", "a1", 1), axis("axis_last", "al", -1), node("Unsqueeze", ["C_t", "axis1"], "C_row"),
             node("Mul", ["h_next", "C_row"], "hC"), node("ReduceSum", ["hC", "axis_last"], "y_t", keepdims=0),
             node("Identity", ["h_next"], "h_out")]
    inputs = [info("h_prev", "d", "n"), info("dA_t", "d", "n"), info("dBu_t", "d", "n"), info("C_t", "n")]
    return helper.make_graph(nodes, f"{tag}_selective_scan_step", inputs, [info("h_out", "d", "n"), info("y_t", "d")])


@torch.no_grad()
def export_mamba(model: MambaLM | QuantizedMambaLM, kind: str, dtype: torch.dtype = torch.float32,
                 probes: bool = False, activations: str = "int8", weights: WeightFile | None = None
                 ) -> onnx.ModelProto:
    """The `prefill` or `decode` graph of a fp model (fp32 or fp16) or a quantized model (int8).

    `probes` adds the residual stream entering each layer i as output `probe_h{i}`, and the one leaving
    the last layer as `probe_h{n_layer}` (layer-by-layer parity checks only). `weights`: write the large
    initializers to that external-data file (shared by the graphs that use it) instead of into the graph.
    """
    return MambaGraph(model.eval(), kind, dtype, probes, activations, weights).build()
