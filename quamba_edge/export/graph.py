"""A small ONNX graph builder (unique names, initializers from tensors, one method per op we emit) and the
layers the transformer families share (`LayerGraph`).

We write graphs node by node instead of tracing PyTorch: Q/DQ must sit exactly where ONNX Runtime fuses them
into integer kernels and where TensorRT's explicit quantization expects them, and Mamba's prompt recurrence
must be one ONNX `Scan` that runs at any length. A tracer decides both for us; a builder lets the export say them.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from quamba_edge import __version__
from quamba_edge.quant.static import QuantizedLinear, is_quantized

OPSET = 17  # TensorRT 10's parser and ONNX Runtime both support it; ReduceMean still takes `axes` here


# int8 activations are symmetric int8 with zero point 0 (DESIGN.md; TensorRT accepts nothing else).
# "uint8" stores the same numbers as q + 128 (zero point 128): clamp(round(x/s), -128, 127) + 128 ==
# clamp(round(x/s) + 128, 0, 255), so the values are identical; it exists because ONNX Runtime's x86 CPU
# kernels are fast for uint8 activations and slow for int8 ones. Weights are coded the same way (q + 128, zero
# point 128): uint8 x uint8 is the x86 kernel that is both fast and exact (AVX2's uint8 x int8 multiply-add
# saturates at 16 bits), and a weight stored as uint8 runs on it as is, where an int8 one would be rewritten
# into a uint8 copy in every session (session.x64quantprecision: one more copy of the weights per session).
ACTIVATION_TYPES = {"int8": np.int8, "uint8": np.uint8}


class WeightFile:
    """ONNX external data shared by the graphs of one engine: every initializer of at least `min_bytes` is
    written to one file as it is created (no graph ever holds its weights in one in-memory message, so
    none meets protobuf's 2 GiB limit), and identical tensors are stored once (prefill and decode share
    every weight: one copy on disk). Graphs saved beside the file find it by its relative name."""

    ALIGN = 64  # offsets aligned for memory-mapped reads

    def __init__(self, path: Path, min_bytes: int = 1024):
        self.path, self.min_bytes = Path(path), min_bytes
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close(); written tensor by tensor
        self._stored: dict[bytes, tuple[int, int]] = {}
        self.bytes = 0

    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        """A TensorProto whose data lives in the file (written now, or found there already)."""
        data = np.ascontiguousarray(array)
        key = hashlib.sha256(data.dtype.str.encode() + str(data.shape).encode() + data.tobytes()).digest()
        if key not in self._stored:
            offset = -(-self._file.tell() // self.ALIGN) * self.ALIGN
            self._file.seek(offset)
            self._file.write(data.tobytes())
            self._stored[key] = (offset, data.nbytes)
            self.bytes = offset + data.nbytes
        offset, length = self._stored[key]
        where = [onnx.StringStringEntryProto(key=k, value=v)
                 for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(length)))]
        return onnx.TensorProto(name=name, dims=data.shape, data_type=helper.np_dtype_to_tensor_dtype(data.dtype),
                                data_location=onnx.TensorProto.EXTERNAL, external_data=where)

    def close(self) -> None:
        self._file.close()


class GraphBuilder:
    def __init__(self, name: str, activations: str = "int8", weights: WeightFile | None = None):
        if activations not in ACTIVATION_TYPES:
            raise ValueError(f"activations must be one of {sorted(ACTIVATION_TYPES)}, not {activations!r}")
        self.name, self.weights, self.activations = name, weights, activations
        self.activation_type = ACTIVATION_TYPES[activations]
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []  # the ONNX protos, in order
        self._counts: dict[str, int] = {}  # names handed out, by hint
        self._constants: dict[tuple, str] = {}  # (dtype, shape, bytes) -> the shared constant's name

    def fresh(self, hint: str) -> str:
        n = self._counts.get(hint, 0)
        self._counts[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def initializer(self, hint: str, value: torch.Tensor | np.ndarray) -> str:
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        name = self.fresh(hint)
        external = self.weights is not None and array.nbytes >= self.weights.min_bytes
        self.initializers.append(self.weights.tensor(name, array) if external else
                                 numpy_helper.from_array(np.array(array, order="C", copy=True), name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        """A small shared constant (scalars, shapes, axes), created once per distinct value."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.initializer("c", array)
        return self._constants[key]

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: list) -> None:
        self.op("Identity", [value], outputs=[name])
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, outputs: list[str] | None = None,
           domain: str = "", **attrs) -> str | list[str]:
        outs = outputs or [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(f"n_{op_type}"),
                                           domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def slice(self, x: str, start: int, end: int, axis: int | None = None) -> str:
        bounds = [self.const([start], np.int64), self.const([end], np.int64)]
        return self.op("Slice", [x, *bounds] + ([] if axis is None else [self.const([axis], np.int64)]))

    def split(self, x: str, sizes: list[int]) -> list[str]:
        return self.op("Split", [x, self.const(sizes, np.int64)], n_out=len(sizes), axis=-1)

    def expand(self, value: str, batch: str, tail: list[int]) -> str:
        """value broadcast to (batch, *tail)."""
        return self.op("Expand", [value, self.op("Concat", [batch, self.const(tail, np.int64)], axis=0)])

    def _zero_point(self, weight: bool = False, channels: int | None = None, int8: bool = False) -> str:
        """The zero point of an activation (0 int8 or 128 uint8: the coding), of an int8 tensor whatever the coding
        (`int8`: a state at the graph boundary) or of a weight (coded like activations). A per-axis Q or DQ
        (`channels`) takes one per channel, a 1-D tensor as long as its scale."""
        code = np.int8 if int8 else self.activation_type
        value = 0 if code == np.int8 else 128
        if weight or int8 or channels is not None:
            return self.initializer("w_zero_point" if weight or int8 else "zero_point",
                                    np.full(() if channels is None else (channels,), value, code))
        return self.const(value, code)

    def quantize(self, x: str, scale: str, to_int8: bool = False, axis: int | None = None,
                 channels: int | None = None) -> str:
        """Q of a float tensor: per-tensor (`scale` a scalar), or per channel along `axis` (`channels` scales)."""
        return self.op("QuantizeLinear", [x, scale, self._zero_point(channels=channels, int8=to_int8)], axis=axis)

    def dequantize(self, q: str, scale: str, axis: int | None = None, weight: bool = False,
                   channels: int | None = None, int8: bool = False) -> str:
        """DQ of an activation, a weight (`weight`) or an int8 tensor whatever the coding (`int8`); per channel
        along `axis` when `channels` is given."""
        return self.op("DequantizeLinear", [q, scale, self._zero_point(weight, channels, int8)], axis=axis)

    def int8_weight(self, hint: str, q: torch.Tensor, scale: torch.Tensor, axis: int = 1) -> str:
        """DQ of an int8 weight with a per-tensor or per-output-channel scale. axis 1: an (out, in) matrix,
        stored transposed for MatMul; axis 0: a conv kernel (out, in, k), stored as is."""
        q = q.t().contiguous() if axis == 1 else q
        if self.activation_type == np.uint8:  # the uint8 coding codes weights alike (see ACTIVATION_TYPES)
            q = (q.to(torch.int16) + 128).to(torch.uint8)
        wq = self.initializer(f"{hint}_q", q)
        if scale.numel() == 1:
            return self.dequantize(wq, self.const(float(scale), np.float32), weight=True)
        return self.dequantize(wq, self.initializer(f"{hint}_scale", scale.reshape(-1).float()), axis=axis, weight=True,
                               channels=scale.numel())

    def qdq(self, x: str, scale: str) -> str:
        """Fake-quantize: the int8 value exists between the two nodes, where engines fuse."""
        return self.dequantize(self.quantize(x, scale), scale)

    def model(self, doc: str, metadata: dict[str, str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="quamba-edge", doc_string=doc)
        model.ir_version = 8  # readable by ONNX Runtime >= 1.14 and TensorRT 10
        helper.set_model_props(model, metadata)
        if self.weights is None:  # with external data the engine checks the saved file (onnx.checker on the path)
            onnx.checker.check_model(model, full_check=True)
        return model

    def finish(self, doc: str, precision: str, **metadata: str) -> onnx.ModelProto:
        """The model, its metadata stamped with the version, precision and activation coding (float unless int8)."""
        return self.model(doc, {"quamba_edge_version": __version__, **metadata, "precision": precision,
                                "activations": self.activations if precision == "int8" else "float"})


class LayerGraph:
    """Holds a GraphBuilder `g`; each method emits one layer and returns its output's name. The set models and
    the speech models write their layers alike: in an int8 graph every linear layer reads Q/DQ of its input at
    its static scale and DQ of its int8 weight, which ONNX Runtime fuses into integer kernels and TensorRT reads
    as explicit quantization.

    `mask` (b, n bool), `mask_bias` (b, 1, 1, n: 0 or -inf) and `weight` (b, n, 1: 1.0 or 0.0), when set, mask
    the attention, the pools and the mean; None: every position is real.
    """

    mask: str | None = None
    mask_bias: str | None = None
    weight: str | None = None

    def __init__(self, name: str, model: nn.Module, activations: str, weights: WeightFile | None):
        self.model, self.quantized = model, is_quantized(model)
        self.g = GraphBuilder(name, activations, weights)

    def linear(self, x: str, layer: nn.Module, hint: str) -> str:
        g = self.g
        if isinstance(layer, nn.Identity):
            return x
        if isinstance(layer, QuantizedLinear):
            layer = layer.q
            x = g.qdq(x, g.const(float(layer.in_scale), np.float32))
            w = g.int8_weight(hint, layer.weight, layer.weight_scale)
        else:
            w = g.initializer(f"{hint}_w", layer.weight.detach().t().contiguous())
        y = g.op("MatMul", [x, w])
        return y if layer.bias is None else g.op("Add", [y, g.initializer(f"{hint}_b", layer.bias.detach().float())])

    def layer_norm(self, x: str, norm: nn.Module, hint: str) -> str:
        if isinstance(norm, nn.Identity):
            return x
        g = self.g
        return g.op("LayerNormalization", [x, g.initializer(f"{hint}_g", norm.weight.detach()),
                                           g.initializer(f"{hint}_b", norm.bias.detach())], axis=-1,
                    epsilon=float(norm.eps))

    def gelu(self, x: str) -> str:
        g = self.g
        erf = g.op("Erf", [g.op("Mul", [x, g.const(1.0 / math.sqrt(2.0))])])
        return g.op("Mul", [g.op("Mul", [x, g.const(0.5)]), g.op("Add", [erf, g.const(1.0)])])

    def heads(self, x: str, h: int, hd: int, perm: list[int]) -> str:
        g = self.g
        return g.op("Transpose", [g.op("Reshape", [x, g.const([0, 0, h, hd], np.int64)])], perm=perm)

    def attention(self, q: str, k: str, v: str, h: int, d: int) -> str:
        """q (b, m, d), k/v (b, n, d) -> (b, m, d); softmax over n (masked positions: -inf)."""
        g, hd = self.g, d // h
        scores = g.op("MatMul", [self.heads(q, h, hd, [0, 2, 1, 3]), self.heads(k, h, hd, [0, 2, 3, 1])])
        scores = g.op("Mul", [scores, g.const(1.0 / math.sqrt(hd))])
        if self.mask_bias is not None:
            scores = g.op("Add", [scores, self.mask_bias])
        out = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), self.heads(v, h, hd, [0, 2, 1, 3])])
        return g.op("Reshape", [g.op("Transpose", [out], perm=[0, 2, 1, 3]), g.const([0, 0, d], np.int64)])

    def self_attention(self, x: str, attn: nn.Module, heads: int, d: int, hint: str) -> str:
        q, k, v = (self.linear(x, p, f"{hint}_{n}") for n, p in
                   (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj)))
        return self.linear(self.attention(q, k, v, heads, d), attn.out_proj, f"{hint}_o")

    def mlp(self, x: str, owner: nn.Module, hint: str, names: tuple[str, str] = ("ff1", "ff2")) -> str:
        first, second = names
        y = self.gelu(self.linear(x, getattr(owner, first), f"{hint}_{first}"))
        return self.linear(y, getattr(owner, second), f"{hint}_{second}")

    def encoder_layer(self, h: str, layer: nn.Module, d: int, hint: str) -> str:
        """models/pooling.EncoderLayer: pre-LN self-attention, then a pre-LN GELU MLP, both residual."""
        g = self.g
        y = self.layer_norm(h, layer.norm1, f"{hint}_norm1")
        h = g.op("Add", [h, self.self_attention(y, layer, layer.n_heads, d, hint)])
        return g.op("Add", [h, self.mlp(self.layer_norm(h, layer.norm2, f"{hint}_norm2"), layer, hint)])

    def prepend_cls(self, h: str, cls, d: int) -> tuple[str, str]:
        """The learned token (1, 1, d) before every set of h (b, n, d); also returns the batch size (1,)."""
        g = self.g
        batch = g.slice(g.op("Shape", [h]), 0, 1)
        return g.op("Concat", [g.expand(g.initializer("cls", cls.detach()), batch, [1, d]), h], axis=1), batch

    def mean(self, h: str) -> str:
        """(b, n, d) -> (b, d) over the real positions."""
        g = self.g
        if self.weight is None:
            return g.op("ReduceMean", [h], axes=[1], keepdims=0)
        total = g.op("ReduceSum", [g.op("Mul", [h, self.weight]), g.const([1], np.int64)], keepdims=0)
        return g.op("Div", [total, g.op("ReduceSum", [self.weight, g.const([1], np.int64)], keepdims=0)])

    def pool(self, h: str, kind: str, pool: nn.Module) -> str:
        """(b, n, d) -> (b, d) as models/pooling.py: `kind` avg, max, cls or adapool (the module `pool`)."""
        g = self.g
        if kind == "cls":
            return g.op("Gather", [h, g.const(0, np.int64)], axis=1)
        if kind == "max":
            if self.mask is not None:
                keep = g.op("Unsqueeze", [self.mask, g.const([-1], np.int64)])
                h = g.op("Where", [keep, h, g.const(-np.inf)])
            return g.op("ReduceMax", [h], axes=[1], keepdims=0)
        if kind == "avg" or pool.query == "mean":
            query = self.mean(h)
        else:
            query = g.op("Gather", [h, g.const(int(pool.query), np.int64)], axis=1)
        if kind == "avg":
            return query
        q = g.op("Unsqueeze", [self.linear(query, pool.q_proj, "pool_q"), g.const([1], np.int64)])  # (b, 1, d)
        k, v = self.linear(h, pool.k_proj, "pool_k"), self.linear(h, pool.v_proj, "pool_v")
        attended = self.attention(q, k, v, pool.n_heads, pool.d)  # (b, 1, d)
        pooled = self.linear(g.op("Squeeze", [attended, g.const([1], np.int64)]), pool.out_proj, "pool_o")
        return pooled if pool.query == "mean" else g.op("Add", [pooled, query])
