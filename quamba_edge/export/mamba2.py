"""Mamba-2 as two ONNX graphs, as Mamba-1 (export/mamba.py, whose graph around the layers this one shares):

    prefill: input_ids (b, l)                          -> logits (b, V) of the last position, conv_state, ssm_state
    decode:  input_ids (b, 1), conv_state, ssm_state   -> logits (b, V), conv_state, ssm_state

States are stacked over layers: conv_state (n_layer, b, e, d_conv-1) with e = d_inner + 2·ngroups·d_state
(the conv runs over x, B and C; int8 in the int8 graph, as in quant/quamba2.py), ssm_state (n_layer, b, h, p, n)
fp32.

The SSD layer (models/ssd.py) is written without a loop. Prefill is the chunked form: the prompt is padded to
chunks of Q = chunk_size steps; inside a chunk y = (C·Bᵀ ∘ L)·(dt·x) with the decay mask L = exp(segsum(dt·A));
the states entering the chunks are one product of the chunks' own decay mask with [initial state, each chunk's
contribution]. Every product is a batched MatMul over (b, groups, heads per group, chunks); B and C are never
repeated per head. Decode is one step of the recurrence, also as MatMuls per group.

int8 graph (quant/quamba2.py): in_proj's output is quantized per channel (Quamba2's per-head x and per-group
B/C scales are per-channel scale vectors: QuantizeLinear with axis), the conv reads the int8 xBC and the int8
state, its output x, B, C is quantized per channel; the gated norm's output, Hadamard-rotated, feeds out_proj
through a per-tensor Q/DQ pair (MatMulIntegerToFloat in ONNX Runtime).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from quamba_edge.export.graph import WeightFile
from quamba_edge.export.mamba import MambaGraph
from quamba_edge.models.mamba2 import Mamba2LM
from quamba_edge.quant.int8 import dequantize
from quamba_edge.quant.quamba2 import QuantizedMamba2LM

LAST = 2**62  # a Slice end past any axis


class Mamba2Graph(MambaGraph):
    quantized_type = QuantizedMamba2LM
    title = "Mamba-2"

    def __init__(self, model: Mamba2LM | QuantizedMamba2LM, kind: str, dtype: torch.dtype = torch.float32,
                 probes: bool = False, activations: str = "int8", weights: WeightFile | None = None):
        if dtype != torch.float32:
            raise ValueError("Mamba-2 graphs are built in fp32 (fp16 is not implemented); use dtype float32")
        super().__init__(model, kind, dtype, probes, activations, weights)
        cfg = self.cfg
        self.G, self.hg = cfg.ngroups, cfg.nheads // cfg.ngroups

    def head(self, normed: str, emb_name: str, body) -> str:
        if self.quantized and self.model.head is not None:  # --int8-head
            return super().head(normed, emb_name, body)
        lm_head = self.model.lm_head
        weight = emb_name if self.cfg.tie_embeddings else self.w("lm_head", lm_head.weight)
        return self.g.op("Gemm", [normed, weight], transB=1)

    # ------------------------------------------------------------------------------------------ pieces

    def ints(self, *values: int) -> str:
        return self.g.const(list(values), np.int64)

    def reshape(self, x: str, *shape: int) -> str:
        return self.g.op("Reshape", [x, self.ints(*shape)])

    def decay_mask(self, a: str, size: int | None) -> str:
        """exp(segsum(a)) masked to the lower triangle (models/ssd.py: decay_mask), a (..., T) -> (..., T, T).
        `size`: T when it is fixed (the chunk), else None (the number of chunk boundaries, from a's shape)."""
        g = self.g
        if size is not None:
            strict = g.const(np.tril(np.ones((size, size)), -1), np.float32)
            tril = g.const(np.tril(np.ones((size, size))), np.float32)
        else:
            length = g.op("Squeeze", [g.slice(g.op("Shape", [a]), -1, LAST), self.ints(0)])
            idx = g.op("Range", [g.const(0, np.int64), length, g.const(1, np.int64)])
            rows, cols = g.op("Unsqueeze", [idx, self.ints(1)]), g.op("Unsqueeze", [idx, self.ints(0)])
            strict = g.op("Cast", [g.op("Greater", [rows, cols])], to=onnx.TensorProto.FLOAT)
            tril = g.op("Cast", [g.op("GreaterOrEqual", [rows, cols])], to=onnx.TensorProto.FLOAT)
        spread = g.op("Mul", [g.op("Unsqueeze", [a, self.ints(-1)]), strict])  # [i, j] = a_i for i > j
        return g.op("Mul", [g.op("Exp", [g.op("CumSum", [spread, g.const(-2, np.int64)])]), tril])

    def ssd(self, x: str, dt: str, B: str, C: str, A: torch.Tensor, D: torch.Tensor, h0: str) -> tuple[str, str]:
        """x (b, l, d), dt (b, l, h) (softplus'd), B and C (b, l, G·n), h0 (b, h, p, n), all fp32 -> y (b, l, d)
        with the D skip, and the final state (b, h, p, n)."""
        g, cfg = self.g, self.cfg
        G, hg, h, p, n, d = self.G, self.hg, cfg.nheads, cfg.headdim, cfg.d_state, cfg.d_inner
        A_name = g.initializer("A", -torch.exp(A.float()))
        skip = g.op("Mul", [x, g.initializer("D", D.float().repeat_interleave(p))])
        if self.kind == "decode":  # H = exp(dt·A)·H + (dt·x) Bᵀ;  y = H·C
            decay = g.op("Exp", [g.op("Mul", [dt, A_name])])
            step = self.reshape(dt, 0, G, hg, 1, 1)
            xdt = g.op("Mul", [self.reshape(x, 0, G, hg, p, 1), step])
            H = g.op("Add", [g.op("Mul", [self.reshape(decay, 0, G, hg, 1, 1), self.reshape(h0, 0, G, hg, p, n)]),
                             g.op("Mul", [xdt, self.reshape(B, 0, G, 1, 1, n)])])
            y = self.reshape(g.op("MatMul", [H, self.reshape(C, 0, G, 1, n, 1)]), 0, 1, d)
            return g.op("Add", [y, skip]), self.reshape(H, 0, h, p, n)
        Q = cfg.chunk_size
        length = g.slice(g.op("Shape", [x]), 1, 2)  # (1,)
        q = self.ints(Q)
        pad = g.op("Mod", [g.op("Sub", [q, g.op("Mod", [length, q])]), q])
        pads = g.op("Concat", [self.ints(0, 0, 0, 0), pad, self.ints(0)], axis=0)
        x_p, dt_p, B_p, C_p = (g.op("Pad", [t, pads]) for t in (x, dt, B, C))  # zeros: dt = 0 keeps the state
        chunked = (0, 3, 4, 1, 2, 5)  # (b, c, Q, G, hg, ·) -> (b, G, hg, c, Q, ·)
        xdt = g.op("Mul", [self.reshape(x_p, 0, -1, h, p), g.op("Unsqueeze", [dt_p, self.ints(-1)])])
        xdt = g.op("Transpose", [self.reshape(xdt, 0, -1, Q, G, hg, p)], perm=list(chunked))  # (b, G, hg, c, Q, p)
        a = g.op("Transpose", [self.reshape(g.op("Mul", [dt_p, A_name]), 0, -1, Q, h)], perm=[0, 3, 1, 2])
        a = self.reshape(a, 0, G, hg, -1, Q)  # (b, G, hg, c, Q): log-decay per step
        cum = g.op("CumSum", [a, g.const(-1, np.int64)])
        Bg, Cg = (g.op("Unsqueeze", [g.op("Transpose", [self.reshape(t, 0, -1, Q, G, n)], perm=[0, 3, 1, 2, 4]),
                                     self.ints(2)]) for t in (B_p, C_p))  # (b, G, 1, c, Q, n)
        swap = [0, 1, 2, 3, 5, 4]
        scores = g.op("Mul", [g.op("MatMul", [Cg, g.op("Transpose", [Bg], perm=swap)]), self.decay_mask(a, Q)])
        y_diag = g.op("MatMul", [scores, xdt])  # (b, G, hg, c, Q, p)
        cum_last = g.slice(cum, -1, LAST, -1)  # (b, G, hg, c, 1)
        to_end = g.op("Exp", [g.op("Sub", [cum_last, cum])])
        weighted = g.op("Mul", [xdt, g.op("Unsqueeze", [to_end, self.ints(-1)])])
        own = g.op("MatMul", [g.op("Transpose", [weighted], perm=swap), Bg])  # (b, G, hg, c, p, n)
        boundaries = g.op("Pad", [g.op("Squeeze", [cum_last, self.ints(-1)]), self.ints(0, 0, 0, 1, 0, 0, 0, 0)])
        states = g.op("Concat", [self.reshape(h0, 0, G, hg, 1, p * n), self.reshape(own, 0, G, hg, -1, p * n)],
                      axis=3)  # (b, G, hg, c+1, p·n): the initial state, then each chunk's contribution
        states = g.op("MatMul", [self.decay_mask(boundaries, None), states])  # the state entering each chunk
        starts = self.reshape(g.slice(states, 0, -1, 3), 0, G, hg, -1, p, n)
        final = self.reshape(g.slice(states, -1, LAST, 3), 0, h, p, n)
        y_off = g.op("MatMul", [Cg, g.op("Transpose", [starts], perm=swap)])  # (b, G, hg, c, Q, p)
        y_off = g.op("Mul", [y_off, g.op("Unsqueeze", [g.op("Exp", [cum]), self.ints(-1)])])
        y = g.op("Transpose", [g.op("Add", [y_diag, y_off])], perm=[0, 3, 4, 1, 2, 5])  # (b, c, Q, G, hg, p)
        y = g.op("Slice", [self.reshape(y, 0, -1, d), self.ints(0), length, self.ints(1)])
        return g.op("Add", [y, skip]), final

    def dt(self, dt: str, bias: torch.Tensor) -> str:
        """softplus(dt + dt_bias), clamped to [dt_min, dt_max] where the config limits it."""
        g, cfg = self.g, self.cfg
        dt = g.op("Softplus", [g.op("Add", [dt, g.initializer("dt_bias", bias.float())])])
        if cfg.dt_min > 0 or cfg.dt_max is not None:
            upper = g.const(cfg.dt_max if cfg.dt_max is not None else np.finfo(np.float32).max)
            dt = g.op("Clip", [dt, g.const(cfg.dt_min), upper])
        return dt

    def gate(self, y: str, z: str, weight: torch.Tensor | None) -> str:
        """RMSNorm per group of y·SiLU(z) (GatedRMSNorm); without `weight` when it is folded into out_proj."""
        g, cfg = self.g, self.cfg
        v = self.reshape(g.op("Mul", [y, self.silu(z)]), 0, 0, self.G, cfg.d_inner // self.G)
        ms = g.op("ReduceMean", [g.op("Mul", [v, v])], axes=[-1], keepdims=1)
        v = g.op("Mul", [v, g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [ms, g.const(cfg.norm_eps)])])])])
        v = self.reshape(v, 0, 0, cfg.d_inner)
        return v if weight is None else g.op("Mul", [v, self.w("gate_w", weight)])

    def qdq_channels(self, x: str, scale: torch.Tensor) -> str:
        """Fake-quantize (b, l, channels) with one scale per channel."""
        g, channels = self.g, scale.numel()
        name = g.initializer("channel_scale", scale.float())
        return g.dequantize(g.quantize(x, name, axis=2, channels=channels), name, axis=2, channels=channels)

    def xbc(self, xbc: str) -> tuple[str, str, str]:
        gn = self.cfg.ngroups * self.cfg.d_state
        return self.g.split(xbc, [self.cfg.d_inner, gn, gn])

    # ------------------------------------------------------------------------------------------- layers

    def fp_layer(self, layer, h: str, conv_in: str, ssm_in: str) -> tuple[str, str, str]:
        g, cfg, m = self.g, self.cfg, layer.mixer
        normed = self.rmsnorm(h, layer.norm.weight, layer.norm.eps)
        z, xbc, dt = g.split(self.linear("in_proj", normed, m.in_proj), [cfg.d_inner, cfg.conv_dim, cfg.nheads])
        padded = g.op("Concat", [conv_in, g.op("Transpose", [xbc], perm=[0, 2, 1])], axis=2)
        conv_out = g.slice(padded, 1 - cfg.d_conv, LAST, 2)
        x, B, C = self.xbc(self.conv_silu(padded, m.conv1d.weight.reshape(cfg.conv_dim, cfg.d_conv), m.conv1d.bias))
        y, ssm_out = self.ssd(x, self.dt(dt, m.dt_bias), B, C, m.A_log, m.D, ssm_in)
        out = self.linear("out_proj", self.gate(y, z, m.norm.weight), m.out_proj)
        return g.op("Add", [h, out]), conv_out, ssm_out

    def int8_layer(self, layer, h: str, conv_in: str, ssm_in: str) -> tuple[str, str, str]:
        g, cfg, m = self.g, self.cfg, layer.mixer
        d, e, nh = cfg.d_inner, cfg.conv_dim, cfg.nheads
        x_dq = g.qdq(self.rmsnorm(h, layer.norm.norm.weight, layer.norm.norm.eps), self.scalar(layer.norm.out_scale))
        proj = g.op("MatMul", [x_dq, g.int8_weight("in_proj", m.in_proj.weight, m.in_proj.weight_scale)])
        if m.in_proj.bias is not None:
            proj = g.op("Add", [proj, self.w("in_proj_bias", m.in_proj.bias)])
        z, xbc, dt = g.split(proj, [d, e, nh])  # split in float: MatMulIntegerToFloat (ORT fuses no per-channel Q)
        z, dt = (self.qdq_channels(t, m.proj_scale[a:b]) for t, a, b in ((z, 0, d), (dt, d + e, d + e + nh)))
        s_in = g.initializer("xbc_in_scale", m.proj_scale[d : d + e].float())
        xbc_q = g.quantize(xbc, s_in, axis=2, channels=e)
        per_channel = {"axis": 1, "channels": e}
        if self.kind == "prefill":  # a float zero state, quantized here: TensorRT wants int8 only out of Q nodes
            conv_in = g.quantize(conv_in, s_in, **per_channel)
        elif g.activation_type == np.uint8:  # the state stays int8 at the graph boundary: re-encode, exactly
            conv_in = g.quantize(g.dequantize(conv_in, s_in, int8=True, **per_channel), s_in, **per_channel)
        padded = g.op("Concat", [conv_in, g.op("Transpose", [xbc_q], perm=[0, 2, 1])], axis=2)  # (b, e, k-1+l)
        conv_out = g.slice(padded, 1 - cfg.d_conv, LAST, 2)
        if g.activation_type == np.uint8:
            conv_out = g.quantize(g.dequantize(conv_out, s_in, **per_channel), s_in, to_int8=True, **per_channel)
        xbc = self.conv_silu(g.dequantize(padded, s_in, **per_channel),
                             dequantize(m.conv_weight, m.conv_weight_scale), m.conv_bias)  # (b, l, e)
        x, B, C = self.xbc(self.qdq_channels(xbc, m.xbc_scale))
        y, ssm_out = self.ssd(x, self.dt(dt, m.dt_bias), B, C, m.A_log, m.D, ssm_in)
        y = self.gate(y, z, None)
        if m.hadamard:
            y = self.hadamard(y, d)
        out = self.qlinear("out_proj", g.qdq(y, self.scalar(m.y_scale)), m.out_proj, quantize_out=False)
        return g.op("Add", [h, out]), conv_out, ssm_out


@torch.no_grad()
def export_mamba2(model: Mamba2LM | QuantizedMamba2LM, kind: str, probes: bool = False, activations: str = "int8",
                  weights: WeightFile | None = None) -> onnx.ModelProto:
    """The `prefill` or `decode` graph of an fp32 Mamba-2 model or its W8A8 model (quant/quamba2.py).

    `probes` adds the residual stream entering each layer i as output `probe_h{i}` (and leaving the last, as
    `probe_h{n_layer}`) for layer-by-layer parity; `weights` writes the large initializers to that external-data
    file. Raises ValueError for a graph name other than prefill/decode."""
    return Mamba2Graph(model.eval(), kind, torch.float32, probes, activations, weights).build()
