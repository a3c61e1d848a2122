"""Mamba-1 as two ONNX graphs (DESIGN.md, "Graphs and engines").

    prefill: input_ids (b, l)                          -> logits (b, V) of the last position, conv_state, ssm_state
    decode:  input_ids (b, 1), conv_state, ssm_state   -> logits (b, V), conv_state, ssm_state

States are stacked over layers: conv_state (n_layer, b, d_inner, d_conv-1), ssm_state (n_layer, b,
d_inner, d_state) fp32. In the int8 graph the conv state is int8 (it holds the int8 in_proj outputs
x, as in the PyTorch reference), and every quantization point of DESIGN.md is a
QuantizeLinear -> DequantizeLinear pair around a float tensor: symmetric, zero point 0, per-tensor
activation scales, per-tensor or per-channel (axis 1 of the transposed weight) weight scales, float
biases. Each int8 matmul has the shape ONNX Runtime fuses into an integer kernel:

    DQ(x_q) ─┐
             MatMul ── Q(out)       -> QLinearMatMul          (in_proj, x_proj, dt_proj)
    DQ(W_q) ─┘        (no Q)        -> MatMulIntegerToFloat   (out_proj: its output joins the fp32 residual)

The recurrence over the prompt is one ONNX `Scan` (any prompt length, batch and length dynamic);
the decode graph has no loop. The Hadamard rotation y·Mᵀ is applied as one small matmul per Kronecker
factor (H_K and Sylvester blocks of at most 64), never as a dense d_inner² matrix.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from quamba_edge import __version__
from quamba_edge.export.graph import ONNX_DTYPE, GraphBuilder, WeightFile
from quamba_edge.models.mamba import MambaConfig, MambaLM
from quamba_edge.quant.hadamard import factor, small_hadamard, sylvester
from quamba_edge.quant.int8 import dequantize
from quamba_edge.quant.quamba import QuantizedMambaLM

GRAPHS = ("prefill", "decode")
MAX_SYLVESTER_BLOCK = 64


def state_shapes(cfg: MambaConfig, batch) -> tuple[list, list]:
    return ([cfg.n_layer, batch, cfg.d_inner, cfg.d_conv - 1], [cfg.n_layer, batch, cfg.d_inner, cfg.d_state])


class _MambaGraph:
    """Shared by the fp and int8 exports; the layer bodies differ only in where int8 appears."""

    def __init__(self, model: MambaLM | QuantizedMambaLM, kind: str, dtype: torch.dtype, probes: bool = False,
                 activations: str = "int8", weights: WeightFile | None = None):
        if kind not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, not {kind!r}")
        self.model, self.kind, self.cfg = model, kind, model.cfg
        self.quantized = isinstance(model, QuantizedMambaLM)
        if self.quantized and dtype != torch.float32:
            raise ValueError("the int8 graph keeps its float parts in fp32 (DESIGN.md, CPU); use dtype float32")
        self.dtype, self.probes = dtype, probes
        self.T = ONNX_DTYPE[dtype]
        self.g = GraphBuilder(f"mamba_{kind}", activations, weights)
        self.activations = activations
        # Boundaries of the subgraphs a TensorRT plugin replaces (export/plugins.py), recorded as they are
        # built: the plugin's inputs and outputs, by tensor name, per layer.
        self.plugin_regions: list[dict] = []

    # --- helpers ------------------------------------------------------------------------------
    def w(self, hint: str, t: torch.Tensor) -> str:
        return self.g.initializer(hint, t.detach().to(self.dtype))

    def f32(self, hint: str, t: torch.Tensor) -> str:
        return self.g.initializer(hint, t.detach().float())

    def scalar(self, t: torch.Tensor) -> str:
        return self.g.const(float(t), np.float32)

    def rmsnorm(self, x: str, weight: torch.Tensor, eps: float) -> str:
        g = self.g
        eps_c = g.const(eps, self._np_dtype())
        ms = g.op("ReduceMean", [g.op("Mul", [x, x])], axes=[-1], keepdims=1)
        inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [ms, eps_c])])])
        return g.op("Mul", [g.op("Mul", [x, inv]), self.w("norm_w", weight)])

    def _np_dtype(self):
        return np.float16 if self.dtype == torch.float16 else np.float32

    def cast(self, x: str, to: int) -> str:
        return x if to == self.T else self.g.op("Cast", [x], to=to)

    def cast_back(self, x: str) -> str:
        return x if self.T == TensorProto.FLOAT else self.g.op("Cast", [x], to=self.T)

    # --- int8 pieces --------------------------------------------------------------------------
    def int8_weight(self, hint: str, q: torch.Tensor, scale: torch.Tensor) -> str:
        return self.g.int8_weight(hint, q, scale)

    def qlinear(self, hint: str, x_dq: str, lin, quantize_out: bool) -> str:
        """MatMul of a DQ'd activation and a DQ'd weight, + float bias, then Q (kept int8) or float."""
        g = self.g
        y = g.op("MatMul", [x_dq, self.int8_weight(hint, lin.weight, lin.weight_scale)])
        if lin.bias is not None:
            y = g.op("Add", [y, self.f32(f"{hint}_bias", lin.bias)])
        return g.quantize(y, self.scalar(lin.out_scale)) if quantize_out else y

    def hadamard(self, y: str, n: int) -> str:
        """y·Mᵀ with M = (H_K ⊗ H_P)/√n as a chain of small matmuls, one per Kronecker factor."""
        g = self.g
        K, P = factor(n)
        blocks = []
        while P > 1:
            b = min(P, MAX_SYLVESTER_BLOCK)
            blocks.append(b)
            P //= b
        factors = [small_hadamard(K)] if K > 1 else []
        factors += [sylvester(b) for b in blocks]
        dims = [f.shape[0] for f in factors]
        x = y
        for i in reversed(range(len(factors))):
            mat = factors[i] / math.sqrt(n) if i == len(factors) - 1 else factors[i]
            outer = int(np.prod(dims[:i], dtype=np.int64))
            inner = int(np.prod(dims[i + 1 :], dtype=np.int64))
            if i == len(factors) - 1:  # last axis: X @ Hᵀ
                x = g.op("Reshape", [x, g.const([0, 0, outer, dims[i]], np.int64)])
                x = g.op("MatMul", [x, self.f32("hadamard", mat.T.contiguous())])
            else:  # middle axis: H @ X over (dims[i], inner)
                x = g.op("Reshape", [x, g.const([0, 0, outer, dims[i], inner], np.int64)])
                x = g.op("MatMul", [self.f32("hadamard", mat), x])
        return g.op("Reshape", [x, g.const([0, 0, n], np.int64)])

    # --- the selective scan -------------------------------------------------------------------
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
        y = g.op("Add", [y, g.op("Mul", [u, D])])
        return y, h

    # --- layers -------------------------------------------------------------------------------
    def fp_layer(self, layer, h: str, conv_in: str, ssm_in: str) -> tuple[str, str, str]:
        g, cfg, mixer = self.g, self.cfg, layer.mixer
        x = self.rmsnorm(h, layer.norm.weight, layer.norm.eps)
        xz = g.op("MatMul", [x, self.w("in_proj_w", mixer.in_proj.weight.t().contiguous())])
        if mixer.in_proj.bias is not None:
            xz = g.op("Add", [xz, self.w("in_proj_b", mixer.in_proj.bias)])
        x, z = g.op("Split", [xz, g.const([cfg.d_inner] * 2, np.int64)], n_out=2, axis=-1)
        x_pad = g.op("Concat", [conv_in, g.op("Transpose", [x], perm=[0, 2, 1])], axis=2)
        conv_out = self.last_columns(x_pad)
        c = self.depthwise_conv(x_pad, mixer.conv1d.weight.reshape(cfg.d_inner, cfg.d_conv), self.w)
        if mixer.conv1d.bias is not None:
            c = g.op("Add", [c, self.w("conv_b", mixer.conv1d.bias.reshape(1, -1, 1))])
        u = g.op("Transpose", [g.op("Mul", [c, g.op("Sigmoid", [c])])], perm=[0, 2, 1])
        dbc = g.op("MatMul", [u, self.w("x_proj_w", mixer.x_proj.weight.t().contiguous())])
        dt, B, C = g.op("Split", [dbc, g.const([cfg.rank, cfg.d_state, cfg.d_state], np.int64)], n_out=3, axis=-1)
        dt = g.op("Add", [g.op("MatMul", [dt, self.w("dt_proj_w", mixer.dt_proj.weight.t().contiguous())]),
                          self.w("dt_proj_b", mixer.dt_proj.bias)])
        delta = g.op("Softplus", [self.cast(dt, TensorProto.FLOAT)])
        A = self.f32("A", -torch.exp(mixer.A_log.float()))
        D = self.f32("D", mixer.D.float())
        to32 = TensorProto.FLOAT
        y, ssm_out = self.scan(self.cast(u, to32), delta, A, self.cast(B, to32), self.cast(C, to32), D, ssm_in)
        y = g.op("Mul", [self.cast_back(y), g.op("Mul", [z, g.op("Sigmoid", [z])])])
        out = g.op("MatMul", [y, self.w("out_proj_w", mixer.out_proj.weight.t().contiguous())])
        if mixer.out_proj.bias is not None:
            out = g.op("Add", [out, self.w("out_proj_b", mixer.out_proj.bias)])
        return g.op("Add", [h, out]), conv_out, ssm_out

    def int8_layer(self, layer, h: str, conv_in: str, ssm_in: str) -> tuple[str, str, str]:
        g, cfg, m = self.g, self.cfg, layer.mixer
        s_norm = self.scalar(layer.norm.out_scale)
        x_dq = g.qdq(self.rmsnorm(h, layer.norm.norm.weight, layer.norm.norm.eps), s_norm)
        xz_q = self.qlinear("in_proj", x_dq, m.in_proj, quantize_out=True)
        x_q, z_q = g.op("Split", [xz_q, g.const([cfg.d_inner] * 2, np.int64)], n_out=2, axis=-1)
        s_xz = self.scalar(m.in_proj.out_scale)
        if self.kind == "prefill":  # a float zero state, quantized here: TensorRT wants int8 only out of Q nodes
            conv_in = g.quantize(conv_in, s_xz)
        elif g.activation_type == np.uint8:  # the state stays int8 at the graph boundary: re-encode, exactly
            conv_in = g.quantize(g.dequantize(conv_in, s_xz, weight=True), s_xz)
        x_pad_q = g.op("Concat", [conv_in, g.op("Transpose", [x_q], perm=[0, 2, 1])], axis=2)
        conv_out = self.last_columns(x_pad_q)
        if g.activation_type == np.uint8:
            conv_out = g.quantize(g.dequantize(conv_out, s_xz), s_xz, to_int8=True)
        conv = m.conv1d
        w_conv = dequantize(conv.weight, conv.weight_scale)  # int8 values x their scale, as the reference
        c = self.depthwise_conv(g.dequantize(x_pad_q, s_xz), w_conv, self.f32)
        bias = dequantize(conv.bias, conv.bias_scale).reshape(1, -1, 1)
        c = g.op("Add", [c, self.f32("conv_b", bias)])
        u = g.op("Transpose", [g.op("Mul", [c, g.op("Sigmoid", [c])])], perm=[0, 2, 1])
        u_q = g.quantize(u, self.scalar(conv.out_scale))
        u_dq = g.dequantize(u_q, self.scalar(conv.out_scale))
        layer_index = len(self.plugin_regions) // 2
        self.plugin_regions.append({"plugin": "QuambaConv1dSiLU", "layer": layer_index,
                                    "inputs": [x_q, conv_in], "outputs": [u_q, conv_out]})
        dbc_q = self.qlinear("x_proj", u_dq, m.x_proj, quantize_out=True)
        dt_q, B_q, C_q = g.op("Split", [dbc_q, g.const([cfg.rank, cfg.d_state, cfg.d_state], np.int64)],
                              n_out=3, axis=-1)
        s_dbc = self.scalar(m.x_proj.out_scale)
        delta_q = self.qlinear("dt_proj", g.dequantize(dt_q, s_dbc), m.dt_proj, quantize_out=True)
        sc = m.scan
        delta_bias = self.f32("delta_bias", dequantize(sc.delta_bias, sc.delta_bias_scale))
        delta = g.op("Softplus", [g.op("Add", [g.dequantize(delta_q, self.scalar(sc.delta_scale)), delta_bias])])
        A = self.f32("A", -torch.exp(dequantize(sc.A_log, sc.A_log_scale)))
        D = self.f32("D", dequantize(sc.D, sc.D_scale))
        y, ssm_out = self.scan(u_dq, delta, A, g.dequantize(B_q, s_dbc), g.dequantize(C_q, s_dbc), D, ssm_in)
        z = g.dequantize(z_q, s_xz)
        y = g.op("Mul", [y, g.op("Mul", [z, g.op("Sigmoid", [z])])])
        self.plugin_regions.append({"plugin": "QuambaSelectiveScan", "layer": layer_index,
                                    "inputs": [u_q, delta_q, B_q, C_q, z_q, ssm_in], "outputs": [y, ssm_out]})
        if m.rotate.rotate_output:
            y = self.hadamard(y, cfg.d_inner)
        y_dq = g.qdq(y, self.scalar(m.rotate.out_scale))
        out = self.qlinear("out_proj", y_dq, m.out_proj, quantize_out=False)
        return g.op("Add", [h, out]), conv_out, ssm_out

    def depthwise_conv(self, x_pad: str, weight: torch.Tensor, store) -> str:
        """Causal depthwise conv (b, d, k-1+l) -> (b, d, l) as k shifted multiply-adds.

        ONNX Runtime's grouped Conv with one channel per group costs ~0.3 ms a layer at decode; the same
        sum written as elementwise ops costs a few microseconds and is just as portable.
        """
        g, k = self.g, self.cfg.d_conv
        if self.kind == "decode":  # x_pad is exactly the k-wide window
            prod = g.op("Mul", [x_pad, store("conv_w", weight.unsqueeze(0))])
            return g.op("ReduceSum", [prod, g.const([-1], np.int64)], keepdims=1)
        out = None
        for j in range(k):
            end = j - (k - 1) if j < k - 1 else 2**62
            window = g.op("Slice", [x_pad, g.const([j], np.int64), g.const([end], np.int64), g.const([2], np.int64)])
            term = g.op("Mul", [window, store("conv_w", weight[:, j : j + 1].unsqueeze(0))])
            out = term if out is None else g.op("Add", [out, term])
        return out

    def last_columns(self, x_pad: str) -> str:
        k1 = self.cfg.d_conv - 1
        return self.g.op("Slice", [x_pad, self.g.const([-k1], np.int64), self.g.const([2**62], np.int64),
                                   self.g.const([2], np.int64)])

    # --- whole model --------------------------------------------------------------------------
    def build(self) -> onnx.ModelProto:
        g, cfg = self.g, self.cfg
        quantized = self.quantized
        conv_type = TensorProto.INT8 if quantized else self.T
        conv_shape, ssm_shape = state_shapes(cfg, "batch")
        seq = "seq" if self.kind == "prefill" else 1
        ids = g.input("input_ids", TensorProto.INT64, ["batch", seq])
        if self.kind == "decode":
            conv_all = g.input("conv_state_in", conv_type, conv_shape)
            ssm_all = g.input("ssm_state_in", TensorProto.FLOAT, ssm_shape)
        else:
            batch = g.op("Slice", [g.op("Shape", [ids]), g.const([0], np.int64), g.const([1], np.int64)])
            conv_zero = g.const(np.zeros((1, cfg.d_inner, cfg.d_conv - 1)), self._np_dtype())
            ssm_zero = g.const(np.zeros((1, cfg.d_inner, cfg.d_state)), np.float32)
            tail = g.const([cfg.d_inner, cfg.d_conv - 1], np.int64)
            conv0 = g.op("Expand", [conv_zero, g.op("Concat", [batch, tail], axis=0)])
            ssm0 = g.op("Expand", [ssm_zero, g.op("Concat", [batch, g.const([cfg.d_inner, cfg.d_state], np.int64)],
                                                  axis=0)])
        emb = self.model.embedding.weight if quantized else self.model.backbone.embedding.weight
        emb_name = self.w("embedding", emb)
        h = g.op("Gather", [emb_name, ids], axis=0)  # (b, l, d_model)
        layers = self.model.layers if quantized else self.model.backbone.layers
        conv_outs, ssm_outs = [], []
        for i, layer in enumerate(layers):
            if self.probes:  # the residual stream entering each layer, for the layer-by-layer parity check
                g.output(h, f"probe_h{i}", self.T, ["batch", seq, cfg.d_model])
            if self.kind == "decode":
                idx = g.const(i, np.int64)
                conv_in = g.op("Gather", [conv_all, idx], axis=0)
                ssm_in = g.op("Gather", [ssm_all, idx], axis=0)
            else:
                conv_in, ssm_in = conv0, ssm0
            body = self.int8_layer if quantized else self.fp_layer
            h, conv_out, ssm_out = body(layer, h, conv_in, ssm_in)
            conv_outs.append(g.op("Unsqueeze", [conv_out, g.const([0], np.int64)]))
            ssm_outs.append(g.op("Unsqueeze", [ssm_out, g.const([0], np.int64)]))
        if self.probes:
            g.output(h, f"probe_h{cfg.n_layer}", self.T, ["batch", seq, cfg.d_model])
        last = g.op("Gather", [h, g.const(-1, np.int64)], axis=1)  # (b, d_model)
        norm_f = self.model.norm_f if quantized else self.model.backbone.norm_f
        normed = self.rmsnorm(last, norm_f.weight, norm_f.eps)
        head = self.model.head if quantized else None
        if head is not None:  # int8 lm_head (--int8-head): MatMulIntegerToFloat in ONNX Runtime
            logits = self.qlinear("head", g.qdq(normed, self.scalar(head.in_scale)), head, quantize_out=False)
        else:
            logits = g.op("Gemm", [normed, emb_name], transB=1)
        g.output(self.cast(logits, TensorProto.FLOAT), "logits", TensorProto.FLOAT, ["batch", cfg.vocab_size])
        g.output(g.op("Concat", conv_outs, axis=0), "conv_state", conv_type, conv_shape)
        g.output(g.op("Concat", ssm_outs, axis=0), "ssm_state", TensorProto.FLOAT, ssm_shape)
        precision = "int8" if quantized else {torch.float32: "fp32", torch.float16: "fp16"}[self.dtype]
        meta = {"quamba_edge_version": __version__, "graph": self.kind,
                "precision": precision, "activations": self.activations if quantized else "float"}
        if quantized and self.activations == "int8":  # plugins read int8 tensors (not ORT's uint8 coding)
            meta["plugin_regions"] = json.dumps(self.plugin_regions)
        return g.model(f"quamba-edge Mamba-1 {self.kind} graph ({precision})", meta)


def _scan_body(tag: str) -> onnx.GraphProto:
    """h_t = dA_t * h_{t-1} + dBu_t;  y_t = <h_t, C_t>  (b, d, n) state, (b, d) output.

    Value and node names carry `tag` so that the six (or 64) bodies stay distinguishable in TensorRT.
    """
    def v(name: str) -> str:
        return f"{tag}_{name}"

    def node(op: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
        return helper.make_node(op, [v(i) for i in inputs], [v(o) for o in outputs], name=v(f"{op}_{outputs[0]}"),
                                **attrs)

    nodes = [
        node("Mul", ["dA_t", "h_prev"], ["decayed"]),
        node("Add", ["decayed", "dBu_t"], ["h_next"]),
        node("Constant", [], ["axis1"], value=helper.make_tensor(v("a1"), TensorProto.INT64, [1], [1])),
        node("Constant", [], ["axis_last"], value=helper.make_tensor(v("al"), TensorProto.INT64, [1], [-1])),
        node("Unsqueeze", ["C_t", "axis1"], ["C_row"]),
        node("Mul", ["h_next", "C_row"], ["hC"]),
        node("ReduceSum", ["hC", "axis_last"], ["y_t"], keepdims=0),
        node("Identity", ["h_next"], ["h_out"]),
    ]
    f = TensorProto.FLOAT
    return helper.make_graph(
        nodes, v("selective_scan_step"),
        [helper.make_tensor_value_info(v("h_prev"), f, ["batch", "d", "n"]),
         helper.make_tensor_value_info(v("dA_t"), f, ["batch", "d", "n"]),
         helper.make_tensor_value_info(v("dBu_t"), f, ["batch", "d", "n"]),
         helper.make_tensor_value_info(v("C_t"), f, ["batch", "n"])],
        [helper.make_tensor_value_info(v("h_out"), f, ["batch", "d", "n"]),
         helper.make_tensor_value_info(v("y_t"), f, ["batch", "d"])],
    )


@torch.no_grad()
def export_mamba(model: MambaLM | QuantizedMambaLM, kind: str, dtype: torch.dtype = torch.float32,
                 probes: bool = False, activations: str = "int8", weights: WeightFile | None = None
                 ) -> onnx.ModelProto:
    """The `prefill` or `decode` graph of a fp model (fp32 or fp16) or a quantized model (int8).

    `probes` adds the residual stream entering each layer i as output `probe_h{i}`, and the one leaving
    the last layer as `probe_h{n_layer}` (layer-by-layer parity checks only). `weights`: write the large
    initializers to that external-data file (shared by the graphs that use it) instead of into the graph.
    """
    return _MambaGraph(model.eval(), kind, dtype, probes, activations, weights).build()
