"""TensorRT 10 engines from the portable ONNX graphs (explicit quantization, strongly typed).

The Q/DQ graph already says which tensors are int8, so the network is built strongly typed (the INT8/FP16
builder flags are deprecated in TensorRT 10 and gone in 11). One optimization profile per graph (the family's
`profile`) covers batch and its length axis (prompt tokens, clip samples, set size); a timing cache beside the
plans makes rebuilds fast. Each plan's sidecar `<graph>.engine.json` records the TensorRT version, the GPU's
compute capability and the profile's shapes: TensorRT plans are not portable between versions or GPUs, so
loading refuses a plan built for another, whatever the family.

`tensorrt` is imported lazily. CI parses the graphs with `tensorrt-rtx` (tests marked `tensorrt`); engines
are built on the Jetson (Dockerfile.jetson) or a GPU machine.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path

import torch

from quamba_edge.backends.base import Runner
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write, atomic_write_json, sha256_file
from quamba_edge.paths import PACKAGE_DIR

WORKSPACE_BYTES = 1 << 30
PLUGIN_LIBRARY = "libquamba_edge_trt.so"


def import_tensorrt(allow_rtx: bool = False):
    """The `tensorrt` module; with `allow_rtx`, `tensorrt_rtx` where that one is missing."""
    for module in ("tensorrt", "tensorrt_rtx") if allow_rtx else ("tensorrt",):
        with contextlib.suppress(ImportError):
            return importlib.import_module(module)
    raise QuambaEdgeError(
        "TensorRT is not installed. Fix: on a Jetson use the Docker image (`docker build -f Dockerfile.jetson`, "
        "TensorRT 10.3 from JetPack 6); on an x86 GPU machine `pip install tensorrt` (TensorRT 10). "
        "Or build for ONNX Runtime: --backend ort."
    )


def plugin_library(required: bool = False) -> Path | None:
    """Where csrc/CMakeLists.txt's plugin library is: $QUAMBA_EDGE_TRT_PLUGINS, the checkout's build/trt,
    or the Jetson image's /opt/quamba-edge/lib. None when absent (unless required)."""
    env = os.environ.get("QUAMBA_EDGE_TRT_PLUGINS")
    candidates = [Path(env)] if env else [
        PACKAGE_DIR.parent / "build" / "trt" / PLUGIN_LIBRARY, Path("/opt/quamba-edge/lib") / PLUGIN_LIBRARY,
        Path(sys.prefix) / "lib" / PLUGIN_LIBRARY]
    found = next((path.resolve() for path in candidates if path.is_file()), None)
    if found is None and required:
        raise QuambaEdgeError(
            f"the TensorRT plugin library was not found (looked at {', '.join(map(str, candidates))}). Fix: "
            "`cmake -S csrc -B build/trt -DCMAKE_CUDA_ARCHITECTURES=87 && cmake --build build/trt` (the Jetson "
            "image has it built), or set QUAMBA_EDGE_TRT_PLUGINS, or build without plugins: --plugins off.")
    return found


def load_plugins(registry, path: Path) -> None:
    """Register our plugin creators with a TensorRT plugin registry (builder's or runtime's)."""
    if registry.load_library(str(path)) is None:
        raise QuambaEdgeError(f"TensorRT could not load the plugin library {path} (built for another TensorRT or "
                              "CUDA?). Fix: rebuild it with csrc/CMakeLists.txt on this machine.")


def parse_onnx(trt, onnx_graph: bytes | Path, plugins: Path | None = None):
    """Parse a graph (serialized bytes, or a file whose external data sits beside it) into a TensorRT network;
    raises QuambaEdgeError with the parser's errors. export/plugins.py's graphs need `plugins` (their library)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if plugins is not None:
        load_plugins(builder.get_plugin_registry(), plugins)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    parsed = (parser.parse_from_file(str(onnx_graph)) if isinstance(onnx_graph, Path)
              else parser.parse(onnx_graph))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise QuambaEdgeError(f"TensorRT's ONNX parser rejected the graph: {errors[:800]}")
    return builder, network, parser, logger


def gpu_compute_capability() -> str:
    if not torch.cuda.is_available():
        raise QuambaEdgeError("no CUDA GPU is visible, so no TensorRT engine can be built or loaded here.")
    return "{}.{}".format(*torch.cuda.get_device_capability())


def build_plan(onnx_path: Path, graph: str, shapes: dict[str, tuple], out_dir: Path, *,
               plugins: Path | None = None) -> dict:
    """Build and write `<graph>.plan` + `<graph>.engine.json`; return the metadata. `shapes`: input name ->
    (min, opt, max) shape of every dynamic input (the family's TensorRT profile)."""
    trt = import_tensorrt()
    builder, network, _parser, _logger = parse_onnx(trt, onnx_path, plugins=plugins)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_path = out_dir / "timing.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise QuambaEdgeError(f"TensorRT could not build the {graph} engine (see the log above).")
    atomic_write(out_dir / f"{graph}.plan", lambda tmp: tmp.write_bytes(bytes(plan)))
    atomic_write(cache_path, lambda tmp: tmp.write_bytes(bytes(config.get_timing_cache().serialize())))
    meta = {"tensorrt_version": trt.__version__, "compute_capability": gpu_compute_capability(),
            "shapes": {name: [list(s) for s in triple] for name, triple in shapes.items()},
            "plugins": {"library": plugins.name, "sha256": sha256_file(plugins)} if plugins else None}
    atomic_write_json(out_dir / f"{graph}.engine.json", meta)
    return meta


def check_plan_compatible(meta: dict, trt_version: str, compute_capability: str, path: Path) -> None:
    if meta["tensorrt_version"] != trt_version:
        raise QuambaEdgeError(
            f"{path} was built with TensorRT {meta['tensorrt_version']}; this machine has {trt_version}. "
            "TensorRT plans only load in the version that built them. Fix: rebuild with "
            "`quamba-edge build-engine ... --backend tensorrt` here."
        )
    if meta["compute_capability"] != compute_capability:
        raise QuambaEdgeError(
            f"{path} was built for a GPU of compute capability {meta['compute_capability']}; this GPU is "
            f"{compute_capability}. Fix: rebuild the engine on the target device."
        )


class TensorRTRunner(Runner):
    """Runs one plan: numpy feeds in, numpy outputs out (torch CUDA tensors hold the buffers)."""

    backend = "tensorrt"

    def __init__(self, plan_path: Path, name: str = "graph"):
        super().__init__(name)
        trt = import_tensorrt()
        meta = json.loads(plan_path.with_suffix(".engine.json").read_text())
        check_plan_compatible(meta, trt.__version__, gpu_compute_capability(), plan_path)
        self.plan_path, self.shapes = plan_path, meta.get("shapes", {})
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if meta.get("plugins"):  # the plan holds plugin nodes: the same library must be registered first
            library = plugin_library(required=True)
            if sha256_file(library) != meta["plugins"]["sha256"]:
                raise QuambaEdgeError(f"{plan_path} was built with another build of {library.name} than {library}. "
                                      "Fix: rebuild the engine with this plugin library.")
            load_plugins(self.runtime.get_plugin_registry(), library)
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise QuambaEdgeError(f"TensorRT could not load {plan_path}; rebuild it.")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = {name: torch.from_numpy(trt.nptype(self.engine.get_tensor_dtype(name))(0).reshape(1)).dtype
                        for name in names if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT}
        self.stream = torch.cuda.Stream()

    def _infer(self, feeds) -> dict:
        inputs = {name: torch.as_tensor(array).cuda() for name, array in feeds.items()}  # alive through the run
        for name, tensor in inputs.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                lo, _opt, hi = self.shapes.get(name, ((), (), ()))
                raise QuambaEdgeError(f"{name} of shape {tuple(tensor.shape)} is outside {self.plan_path.name}'s "
                                      f"optimization profile (from {tuple(lo)} to {tuple(hi)}). Fix: rebuild the "
                                      "engine with larger limits (build-engine --max-batch, ...), or run smaller "
                                      "inputs.")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {name: torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
                   for name, dtype in self.outputs.items()}
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise QuambaEdgeError("TensorRT execution failed (see the log above).")
        self.stream.synchronize()
        return {name: t.cpu().numpy() for name, t in outputs.items()}
