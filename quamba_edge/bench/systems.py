"""What `bench` can time, as Systems: engine directories (ONNX Runtime, TensorRT) and PyTorch models or
artifacts (the reference, or Mamba's quantized model on the csrc/ kernel ops)."""

from __future__ import annotations

from pathlib import Path

import torch

from quamba_edge.backends.base import System
from quamba_edge.backends.torch import TorchRunner
from quamba_edge.engine import is_engine, load_engine, weight_bytes
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.families.registry import load, public_shape


def open_system(spec: str, *, device: str, threads: int, kernels: bool = False, prepack: bool = True) -> System:
    """An engine directory (build.json) -> its backend; anything else -> PyTorch eager (CPU or CUDA), or with
    `kernels` a quantized model on the family's csrc/ ops (CUDA kernels or CPU twins)."""
    if is_engine(Path(spec)):
        return load_engine(Path(spec)).system(device, threads, prepack)
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise QuambaEdgeError(f"{spec} is a model, not an engine: PyTorch eager runs on --device cpu (or cuda on a "
                              f"machine with a GPU). Fix: `quamba-edge build-engine {spec} --out DIR` and bench DIR.")
    torch.set_num_threads(threads)
    loaded = load(spec)
    family, precision = loaded.family, loaded.precision
    model, backend = loaded.model.to(device), "pytorch"
    if kernels:
        if getattr(family, "kernels", None) is None:
            raise QuambaEdgeError(f"--kernels runs Mamba's csrc/ ops; {spec} is a {family.name} model. Fix: drop "
                                  "--kernels.")
        model, backend = family.kernels(model, device)
    elif device != "cpu" and not family.generates:
        raise QuambaEdgeError(f"{family.name} models are benchmarked on --device cpu.")
    tag = family.tag(loaded.cfg, loaded.label, precision)
    label = f"{backend}-{precision}" + (f" ({tag})" if tag else "")
    runners = {g: TorchRunner(g, fn, backend) for g, fn in family.reference(model, device).items()}
    return System(runners, label, backend, precision, loaded.cfg, family, {}, weight_bytes(model))


def precision_and_config(spec: str):
    """For estimates: the model config, deployment precision (fp16 | int8 | None) and the bytes one decode step
    reads (an engine's real files; None: from the shape), without opening a backend.

    A public Mamba or Mamba-2 size (`mamba-2.8b`, `mamba2-2.7b`, ...) stands for its shape alone: estimates need
    no weights."""
    shape = public_shape(spec)
    if shape is not None and not Path(spec).exists():
        return shape, None, None
    engine = is_engine(Path(spec))
    loaded = load_engine(Path(spec)) if engine else load(spec)
    family, cfg, precision = loaded.family, loaded.cfg, loaded.precision
    real = loaded.decode_bytes if engine else None
    if not family.generates:  # the roofline models generation: bytes and FLOPs per token
        raise QuambaEdgeError(f"{spec}: the roofline estimate covers language models (generation), not "
                              f"{family.name} models. Fix: time it with --device cpu or on the device.")
    deployed = precision if precision in ("int8", "fp16") else None  # an fp32 build is neither estimated row
    return cfg, deployed, real
