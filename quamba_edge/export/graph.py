"""A small ONNX graph builder: unique names, initializers from tensors, one method per op we emit.

We write the Mamba graphs node by node instead of tracing PyTorch: the quantized graph must place
QuantizeLinear/DequantizeLinear exactly where ONNX Runtime fuses them into integer kernels and where
TensorRT's explicit quantization expects them, and the prompt recurrence must be one ONNX `Scan`
that runs at any length. A tracer decides both for us; a builder lets the export say them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # TensorRT 10's parser and ONNX Runtime both support it; ReduceMean still takes `axes` here

ONNX_DTYPE = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
              torch.int8: TensorProto.INT8, torch.int64: TensorProto.INT64}


# int8 activations are symmetric int8 with zero point 0 (DESIGN.md; TensorRT accepts nothing else).
# "uint8" stores the same numbers as q + 128 (zero point 128): clamp(round(x/s), -128, 127) + 128 ==
# clamp(round(x/s) + 128, 0, 255), so the values are identical; it exists because ONNX Runtime's x86 CPU
# kernels are fast for uint8 x int8 and slow for int8 x int8. Weights are int8 either way.
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
        tensor = onnx.TensorProto(name=name, dims=data.shape, data_type=helper.np_dtype_to_tensor_dtype(data.dtype))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
        return tensor

    def close(self) -> None:
        self._file.close()


class GraphBuilder:
    def __init__(self, name: str, activations: str = "int8", weights: WeightFile | None = None):
        if activations not in ACTIVATION_TYPES:
            raise ValueError(f"activations must be one of {sorted(ACTIVATION_TYPES)}, not {activations!r}")
        self.name, self.weights = name, weights
        self.activation_type = ACTIVATION_TYPES[activations]
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counts: dict[str, int] = {}
        self._constants: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        n = self._counts.get(hint, 0)
        self._counts[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    # --- values -------------------------------------------------------------------------------
    def initializer(self, hint: str, value: torch.Tensor | np.ndarray) -> str:
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        name = self.fresh(hint)
        if self.weights is not None and array.nbytes >= self.weights.min_bytes:
            self.initializers.append(self.weights.tensor(name, array))
        else:
            self.initializers.append(numpy_helper.from_array(np.array(array, order="C", copy=True), name))
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

    # --- ops ----------------------------------------------------------------------------------
    def op(self, op_type: str, inputs: list[str], n_out: int = 1, outputs: list[str] | None = None,
           domain: str = "", **attrs) -> str | list[str]:
        outs = outputs or [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(f"n_{op_type}"),
                                           domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def _zero_point(self, weight: bool) -> str:
        if weight:  # one per weight: ORT's x86 u8u8 pass rewrites each weight's zero point in place
            return self.initializer("w_zero_point", np.zeros((), np.int8))
        if self.activation_type == np.int8:
            return self.const(0, np.int8)
        return self.const(128, np.uint8)

    def quantize(self, x: str, scale: str, to_int8: bool = False) -> str:
        return self.op("QuantizeLinear", [x, scale, self._zero_point(to_int8)])

    def dequantize(self, q: str, scale: str, axis: int | None = None, weight: bool = False) -> str:
        attrs = {} if axis is None else {"axis": axis}
        return self.op("DequantizeLinear", [q, scale, self._zero_point(weight)], **attrs)

    def int8_weight(self, hint: str, q: torch.Tensor, scale: torch.Tensor) -> str:
        """DQ of an int8 (out, in) weight stored transposed for MatMul; per-tensor or per-output-channel scale."""
        wq = self.initializer(f"{hint}_q", q.t().contiguous())
        if scale.numel() == 1:
            return self.dequantize(wq, self.const(float(scale), np.float32), weight=True)
        return self.dequantize(wq, self.initializer(f"{hint}_scale", scale.reshape(-1).float()), axis=1, weight=True)

    def qdq(self, x: str, scale: str) -> str:
        """Fake-quantize: the int8 value exists between the two nodes, where engines fuse."""
        return self.dequantize(self.quantize(x, scale), scale)

    def model(self, doc: str, metadata: dict[str, str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="quamba-edge", doc_string=doc)
        model.ir_version = 8  # readable by ONNX Runtime >= 1.14 and TensorRT 10
        for key, value in metadata.items():
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        if self.weights is None:  # with external data the engine checks the saved file (onnx.checker on the path)
            onnx.checker.check_model(model, full_check=True)
        return model
