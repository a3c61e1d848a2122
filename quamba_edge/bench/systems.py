"""What `bench` can time, behind one interface: engine directories and PyTorch models or artifacts."""

from __future__ import annotations

from pathlib import Path

from quamba_edge.bench.runner import GraphRunner, SetRunner, SpeechRunner, TorchRunner
from quamba_edge.engine import BUILD_JSON, load_engine
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.export import ort as ort_backend
from quamba_edge.models.mamba import PUBLIC_SHAPES, public_shape
from quamba_edge.pipeline import load_any
from quamba_edge.quant.qmodels import QuantizedMambaLM

# Families whose model is one call (a set model, a keyword spotter): family -> (name in messages, runner).
_ONE_CALL = {"adapool": ("set", SetRunner), "wav2vec2": ("speech", SpeechRunner)}


def _one_call_quantized(model) -> bool:
    from quamba_edge.quant.qset import is_quantized as set_quantized
    from quamba_edge.quant.qspeech import is_quantized as speech_quantized

    return speech_quantized(model) if model.family == "wav2vec2" else set_quantized(model)


def open_system(spec: str, *, device: str, threads: int, prompt_len: int, batch: int, kernels: bool = False):
    """An engine directory (build.json) -> its backend; anything else -> PyTorch eager (CPU or CUDA).

    kernels=True runs a quantized model through the csrc/ ops (CUDA kernels or CPU twins).
    """
    if Path(spec).is_dir() and (Path(spec) / BUILD_JSON).exists():
        return _open_engine(Path(spec), device, threads, prompt_len, batch)
    import torch

    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise QuambaEdgeError(f"{spec} is a model, not an engine: PyTorch eager runs on --device cpu (or cuda on a "
                              f"machine with a GPU). Fix: `quamba-edge build-engine {spec} --out DIR` and bench DIR.")
    torch.set_num_threads(threads)
    loaded = load_any(spec)
    family = getattr(loaded.model, "family", "mamba")
    if family in _ONE_CALL:
        if kernels or device != "cpu":
            raise QuambaEdgeError(f"{_ONE_CALL[family][0]} models are benchmarked on --device cpu, without --kernels "
                                  "(the kernels are Mamba's).")
        precision = "int8" if _one_call_quantized(loaded.model) else "fp32"
        return _ONE_CALL[family][1].torch(loaded.model, f"pytorch-{precision} ({loaded.model.cfg.pool})", precision)
    model = loaded.model.to(device)
    precision = "int8" if isinstance(model, QuantizedMambaLM) else "fp32"
    backend = "pytorch"
    if kernels:
        if precision != "int8":
            raise QuambaEdgeError(f"--kernels runs quantized models; {spec} is fp32. Fix: bench an artifact made "
                                  "by `quamba-edge calibrate`.")
        from quamba_edge import kernels as kernel_ops
        from quamba_edge.kernels.mamba import KernelMambaLM

        kernel_ops.load()
        model = KernelMambaLM(model)
        backend = f"kernels-{kernel_ops.backend(device)}"
    label = ("pytorch" if backend == "pytorch" else backend) + f"-{precision}" + (
        f" ({loaded.label})" if precision == "int8" else "")
    return TorchRunner(model, label, precision, device=device, backend=backend)


def _open_engine(directory: Path, device: str, threads: int, prompt_len: int, batch: int):
    engine = load_engine(directory)
    build = engine.build
    if engine.family in _ONE_CALL:
        what, runner = _ONE_CALL[engine.family]
        if device != "cpu" or build["target"] != "cpu":
            raise QuambaEdgeError(f"{directory} is a {what}-model engine for ONNX Runtime on the CPU: use "
                                  "--device cpu.")
        graph = ort_backend.graph_runner(engine.graph("model"), threads=threads, int8=build["precision"] == "int8",
                                         target="cpu", activations=build.get("int8_activations") or "int8")
        label = f"ort-{build['precision']} ({engine.cfg.pool})"
        extra = {"max_samples": build["profile"]["max_samples"]} if runner is SpeechRunner else {}
        return runner.graph(graph, engine.cfg, label, build["precision"], "ort", **extra)
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
    """For estimates: the model config and deployment precision, without opening a backend.

    A public Mamba size (`mamba-2.8b`, ...) stands for its shape alone: estimates need no weights."""
    if spec in PUBLIC_SHAPES and not Path(spec).exists():
        return public_shape(spec), None
    if Path(spec).is_dir() and (Path(spec) / BUILD_JSON).exists():
        engine = load_engine(Path(spec))
        precision = engine.build["precision"]
        return engine.cfg, "int8" if precision == "int8" else "fp16"
    loaded = load_any(spec)
    if getattr(loaded.model, "family", "mamba") != "mamba":
        raise QuambaEdgeError(f"{spec}: the roofline estimate covers Mamba language models (generation), not "
                              f"{loaded.model.family} models. Fix: time it with --device cpu or on the device.")
    quantized = isinstance(loaded.model, QuantizedMambaLM)
    return loaded.model.cfg, "int8" if quantized else "fp16"
