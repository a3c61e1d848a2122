"""ONNX Runtime: sessions for the exported graphs as Runners, and which kernels the optimizer chose.

The one setting that matters for correctness: ONNX Runtime's `QDQPropagationTransformer` moves
Q/DQ pairs across data-movement ops (Split, Transpose, Concat) to widen fusions. Where an int8 tensor
crosses the graph boundary (our int8 conv state) that move re-quantizes values the reference keeps
as they are, so the int8 sessions disable that one pass; every other optimization stays on.
"""

from __future__ import annotations

import mmap
import platform
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from quamba_edge.backends.base import Runner
from quamba_edge.errors import QuambaEdgeError

DISABLED_FOR_INT8 = ["QDQPropagationTransformer"]
WEIGHTS_DATA = "weights.data"  # an engine's ONNX external data, beside its graphs
INTEGER_KERNELS = {"QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                   "QLinearConv", "ConvInteger", "QGemm", "QAttention"}
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def session_options(threads: int, int8: bool, optimized_path: Path | None = None, activations: str = "int8"):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if int8:
        # int8 activations (zero point 0): by default ORT fuses int8 Q/DQ into integer kernels only on ARM.
        opts.add_session_config_entry("session.qdqisint8allowed", "1")
        # uint8-coded activations on x86: AVX2's u8 x s8 multiply-add saturates at 16 bits (a 255 x 127 pair
        # overflows), which breaks exactness. The uint8 coding stores weights as uint8 already (u8 x u8: exact,
        # no copy); for an int8 weight this makes ORT write a uint8 copy of it (one per session).
        if activations == "uint8":
            opts.add_session_config_entry("session.x64quantprecision", "1")
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
        # a graph with external data is written with its initializers beside it (past 2 GiB it must be)
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                      optimized_path.name + ".data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return opts


def make_session(graph: Path | bytes, *, threads: int = 1, int8: bool = False, target: str = "cpu",
                 activations: str = "int8", shared: SharedWeights | None = None, prepack: bool = True,
                 optimized_path: Path | None = None):
    """An InferenceSession of `graph` (a path or serialized bytes) on `target` (cpu | cuda: build-engine checked
    it). `shared`: the engine's weights.data, mapped once for all its sessions; prepack=False skips ORT's
    pre-packed weight copies (less memory, slower matmuls); `optimized_path`: also write the optimized graph there."""
    if PROVIDERS[target][0] not in ort.get_available_providers():  # the CPU provider always is
        raise QuambaEdgeError(
            "ONNX Runtime has no CUDA execution provider here. Fix: pip install 'quamba-edge[gpu]' "
            "(onnxruntime-gpu) on a machine with an NVIDIA GPU, or use --target cpu."
        )
    opts = session_options(threads, int8, optimized_path, activations)
    if shared is not None and isinstance(graph, Path):
        shared.register(opts, graph)
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(graph) if isinstance(graph, Path) else graph, sess_options=opts,
                                providers=PROVIDERS[target], disabled_optimizers=DISABLED_FOR_INT8 if int8 else [])


class SharedWeights:
    """One engine's weights.data, memory-mapped once, handed to every session of the engine as pre-allocated
    initializers (ONNX Runtime's AddInitializer): prefill and decode read the same pages instead of each
    loading its own copy. Measured at the mamba-130m shape (int8, 234 MB of weights, both sessions): 874 MB
    resident without sharing, 728 MB with it, 241 MB when the sessions also skip ORT's pre-packed weight
    copies (prepack=False), at about 1.6x the decode time on an AVX2 CPU."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._data = np.frombuffer(self._map, dtype=np.uint8)
        self._values: dict[tuple, object] = {}

    @classmethod
    def beside(cls, graph: Path | bytes) -> SharedWeights | None:
        """The engine's weights.data next to `graph` (a path), mapped; None for bytes or a graph without one."""
        data = Path(graph).parent / WEIGHTS_DATA if isinstance(graph, Path) else None
        return cls(data) if data is not None and data.exists() else None

    def release(self) -> None:
        """Drop the pages read so far from this process's resident set (the next run faults them back in from
        the page cache): build-engine's parity holds the engine's weights or the reference's, not both."""
        self._map.madvise(mmap.MADV_DONTNEED)

    def register(self, opts, graph: Path) -> None:
        """Add every initializer `graph` keeps in this file to the session options."""
        for tensor in onnx.load(str(graph), load_external_data=False).graph.initializer:
            entries = {e.key: e.value for e in tensor.external_data}
            if tensor.data_location != onnx.TensorProto.EXTERNAL or entries.get("location") != self.path.name:
                continue
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            offset, length = int(entries["offset"]), int(entries["length"])
            key = (offset, length, dtype.str, tuple(tensor.dims))
            if key not in self._values:  # the OrtValue points into the mapping; it lives as long as we do
                view = self._data[offset : offset + length].view(dtype).reshape(tuple(tensor.dims))
                self._values[key] = ort.OrtValue.ortvalue_from_numpy(view)
            opts.add_initializer(tensor.name, self._values[key])


class OrtRunner(Runner):
    """One graph (a path or serialized bytes) in the session make_session(graph, **options) opens."""

    backend = "ort"

    def __init__(self, graph: Path | bytes, *, name: str = "graph", **options):
        super().__init__(name)
        self.shared = options.get("shared")  # keeps the mapping alive as long as the session
        self.session = make_session(graph, **options)

    def _infer(self, feeds) -> dict[str, np.ndarray]:
        return run(self.session, feeds)


def activation_encoding(backend: str, target: str) -> str:
    """uint8-coded int8 activations for ONNX Runtime on x86 CPUs, whose uint8 x int8 kernels are the
    fast ones (5x faster decode than int8 x int8 on AVX2); symmetric int8 everywhere else (TensorRT,
    ARM, CUDA). The numbers are the same either way (see export/graph.ACTIVATION_TYPES)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
    return "uint8" if backend == "ort" and target == "cpu" and x86 else "int8"


def kernel_report(graph: Path | bytes, int8: bool, activations: str) -> dict:
    """Which integer kernels ONNX Runtime's CPU optimizer chose for a graph, and how many float matmuls stay."""
    counts = optimized_op_counts(graph, int8=int8, activations=activations)
    return {"integer_kernels": integer_kernels(counts),
            "float_matmuls": counts.get("MatMul", 0) + counts.get("Gemm", 0)}


def optimized_op_counts(graph: Path | bytes, *, int8: bool, activations: str = "int8") -> Counter:
    """Op types of the graph after ONNX Runtime's CPU optimizations, counted (Scan bodies included). A graph
    with external data reads its weights from the mapped file and skips pre-packing (the census is the same)."""
    shared = SharedWeights.beside(graph)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        make_session(graph, int8=int8, activations=activations, optimized_path=out, shared=shared, prepack=False)
        model = onnx.load(str(out), load_external_data=False)
    counts: Counter = Counter()
    graphs = [model.graph]
    while graphs:
        for node in graphs.pop().node:
            counts[node.op_type] += 1
            graphs.extend(attr.g for attr in node.attribute if attr.g.node)
    return counts


def integer_kernels(counts: Counter) -> dict[str, int]:
    return {op: n for op, n in sorted(counts.items()) if op in INTEGER_KERNELS}


def run(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))
