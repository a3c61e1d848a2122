"""What `bench` can time, behind one interface: engine directories and PyTorch models or artifacts."""

from __future__ import annotations

from pathlib import Path

from quamba_edge.bench.runner import GraphRunner, TorchRunner
from quamba_edge.engine import BUILD_JSON, load_engine
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.export import ort as ort_backend
from quamba_edge.pipeline import load_any
from quamba_edge.quant.qmodels import QuantizedMambaLM


def open_system(spec: str, *, device: str, threads: int, prompt_len: int, batch: int):
    """An engine directory (build.json) -> its backend; anything else -> PyTorch eager on the CPU."""
    if Path(spec).is_dir() and (Path(spec) / BUILD_JSON).exists():
        return _open_engine(Path(spec), device, threads, prompt_len, batch)
    if device != "cpu":
        raise QuambaEdgeError(f"{spec} is a model, not an engine: PyTorch eager is benchmarked on --device cpu. "
                              f"Fix: `quamba-edge build-engine {spec} --out DIR` and bench DIR.")
    import torch

    torch.set_num_threads(threads)
    loaded = load_any(spec)
    precision = "int8" if isinstance(loaded.model, QuantizedMambaLM) else "fp32"
    label = f"pytorch-{precision}" + (f" ({loaded.label})" if precision == "int8" else "")
    return TorchRunner(loaded.model, label, precision)


def _open_engine(directory: Path, device: str, threads: int, prompt_len: int, batch: int):
    engine = load_engine(directory)
    build = engine.build
    profile = build["profile"]
    if prompt_len > profile["max_prompt"] or batch > profile["max_batch"]:
        raise QuambaEdgeError(
            f"{directory} was built for prompts up to {profile['max_prompt']} tokens and batch up to "
            f"{profile['max_batch']}; asked for {prompt_len} x {batch}. Fix: rebuild with "
            f"`quamba-edge build-engine ... --max-prompt {prompt_len} --max-batch {batch}`."
        )
    backend, precision, target = build["backend"], build["precision"], build["target"]
    label = f"{backend}-{precision}" + (f" ({build['recipe']})" if precision == "int8" else "")
    if backend == "ort":
        wanted = "cpu" if device == "cpu" else "cuda"
        if target != wanted:
            raise QuambaEdgeError(f"{directory} is an ONNX Runtime engine for --target {target}; "
                                  f"--device {device} needs --target {wanted}. Fix: rebuild it.")
        int8 = precision == "int8"
        activations = build.get("int8_activations") or "int8"
        prefill, decode = (ort_backend.graph_runner(engine.graph(g), threads=threads, int8=int8, target=target,
                                                    activations=activations) for g in ("prefill", "decode"))
        return GraphRunner(prefill, decode, engine.cfg, label, precision, backend)
    if device == "cpu":
        raise QuambaEdgeError(f"{directory} is a TensorRT engine; it runs on --device cuda or orin.")
    from quamba_edge.export.tensorrt import TensorRTGraph

    plans = {g: TensorRTGraph(directory / f"{g}.plan") for g in ("prefill", "decode")}
    return GraphRunner(plans["prefill"], plans["decode"], engine.cfg, label, precision, backend)


def precision_and_config(spec: str):
    """For estimates: the model config and deployment precision, without opening a backend."""
    if Path(spec).is_dir() and (Path(spec) / BUILD_JSON).exists():
        engine = load_engine(Path(spec))
        precision = engine.build["precision"]
        return engine.cfg, "int8" if precision == "int8" else "fp16"
    loaded = load_any(spec)
    quantized = isinstance(loaded.model, QuantizedMambaLM)
    return loaded.model.cfg, "int8" if quantized else "fp16"
