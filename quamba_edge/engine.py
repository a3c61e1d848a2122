"""build-engine: model or artifact -> a directory of ONNX graphs (+ TensorRT plans) with `build.json`.

    ENGINE_DIR/
      prefill.onnx, decode.onnx      portable graphs (DESIGN.md), always written
      prefill.plan, decode.plan      TensorRT only, with <graph>.engine.json and timing.cache
      build.json                     backend, target, precision, versions, sha256 of every file,
                                     the parity figures and the integer kernels ONNX Runtime chose

The directory is assembled under a temporary name and renamed into place only after the parity
check passed, so a failed build never replaces a good engine.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from quamba_edge import __version__
from quamba_edge.artifact import MANIFEST
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.export import ort as ort_backend
from quamba_edge.export.mamba_onnx import GRAPHS, export_mamba
from quamba_edge.export.parity import ParityReport, check_layers, check_mamba
from quamba_edge.io import atomic_write_json, sha256_file, staged_dir
from quamba_edge.models.mamba import MambaConfig
from quamba_edge.pipeline import load_any
from quamba_edge.quant.qmodels import QuantizedMambaLM

BUILD_FORMAT_VERSION = 1
BUILD_JSON = "build.json"
BACKENDS = ("ort", "tensorrt")
TARGETS = {"ort": ("cpu", "cuda"), "tensorrt": ("cuda", "orin-nano-4gb", "orin-nano-8gb", "orin-nano-super",
                                                "orin-nx-16gb", "agx-orin-64gb")}


class ParityError(QuambaEdgeError):
    pass


def precision_of(model, requested: str | None) -> str:
    if isinstance(model, QuantizedMambaLM):
        if requested not in (None, "int8"):
            raise QuambaEdgeError(f"this artifact is quantized (int8); --precision {requested} applies to fp models.")
        return "int8"
    if requested in (None, "fp32", "fp16"):
        return requested or "fp32"
    raise QuambaEdgeError(
        f"--precision {requested} needs a quantized artifact. Fix: `quamba-edge calibrate --recipe quamba` first, "
        "then build from its --out directory."
    )


def _parity_failure(report: ParityReport) -> str:
    worst = report.worst
    detail = (f"rel. error {worst['rel_error']:.3g} (tolerance {worst['tolerance']:g})" if "rel_error" in worst
              else f"int8 entries off by up to {worst['max_step']} steps in {worst['mismatch']:.1%} of places")
    return (f"the {report.precision} engine disagrees with the PyTorch reference: worst tensor "
            f"`{worst['tensor']}` in {worst['case']}: {detail}. The engine was not written. This is a bug in "
            "the export or the backend: please report it with build.json's parity section.")


def _sessions(paths: dict[str, Path], backend: str, target: str, int8: bool, threads: int, activations: str):
    if backend == "ort":
        return {g: ort_backend.graph_runner(p, threads=threads, int8=int8, target=target, activations=activations)
                for g, p in paths.items()}
    from quamba_edge.export.tensorrt import TensorRTGraph

    return {g: TensorRTGraph(p.with_suffix(".plan")) for g, p in paths.items()}


def build_engine(model_spec: str | Path, out: Path, *, backend: str = "ort", target: str = "cpu",
                 precision: str | None = None, threads: int = 1, max_batch: int = 8, max_prompt: int = 2048,
                 opt_prompt: int = 512, plugins: str = "auto", max_clip_s: float = 2.0, progress=None) -> dict:
    """plugins (TensorRT int8 only): "on" replaces each layer's conv and scan with the csrc/ plugins
    (export/plugins.py), "off" keeps the portable graph, "auto" uses them when the library is built."""
    if backend not in BACKENDS:
        raise QuambaEdgeError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}.")
    if target not in TARGETS[backend]:
        known = ", ".join(TARGETS[backend])
        raise QuambaEdgeError(f"unknown target {target!r} for --backend {backend}; known: {known}.")
    if backend == "tensorrt":
        from quamba_edge.export.tensorrt import import_tensorrt

        import_tensorrt()  # fail before any work when TensorRT is missing
    if plugins not in PLUGIN_MODES:
        raise QuambaEdgeError(f"--plugins must be one of {', '.join(PLUGIN_MODES)}, not {plugins!r}.")
    loaded = load_any(model_spec)
    model = loaded.model.eval()
    if getattr(model, "family", "mamba") == "adapool":
        return _build_set_engine(loaded, out, backend=backend, target=target, precision=precision, threads=threads,
                                 max_batch=max_batch, progress=progress)
    if getattr(model, "family", "mamba") == "wav2vec2":
        return _build_speech_engine(loaded, out, backend=backend, target=target, precision=precision,
                                    threads=threads, max_batch=max_batch, max_clip_s=max_clip_s, progress=progress)
    precision = precision_of(model, precision)
    plugin_lib = _plugin_library(plugins, backend, precision)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    out = Path(out).resolve()
    step = progress or (lambda message: None)
    activations = activation_encoding(backend, target)
    with staged_dir(out, ours=lambda d: (d / BUILD_JSON).exists(), what="an engine directory") as tmp:
        paths = {}
        for graph in GRAPHS:
            step(f"exporting {graph} graph ({precision})")
            proto = export_mamba(model, graph, dtype, activations=activations)
            if plugin_lib is not None:
                from quamba_edge.export.plugins import rewrite

                proto = rewrite(proto, model)
            paths[graph] = tmp / f"{graph}.onnx"
            onnx.save(proto, str(paths[graph]))
        plans = {}
        if backend == "tensorrt":
            from quamba_edge.export.tensorrt import build_plan

            for graph in GRAPHS:
                step(f"building TensorRT {graph} engine")
                plans[graph] = build_plan(paths[graph], graph, model.cfg, tmp, max_batch=max_batch,
                                          max_prompt=max_prompt, opt_prompt=opt_prompt, plugins=plugin_lib)
        step("parity check against the PyTorch reference")
        runners = _sessions(paths, backend, target, precision == "int8", threads, activations)
        report = check_mamba(model, runners["prefill"], runners["decode"], precision)
        if precision == "int8" and backend == "ort":
            probes = {g: ort_backend.graph_runner(
                export_mamba(model, g, dtype, probes=True, activations=activations).SerializeToString(),
                threads=threads, int8=True, target=target, activations=activations) for g in GRAPHS}
            check_layers(model, probes["prefill"], probes["decode"], report)
        if not report.passed:
            raise ParityError(_parity_failure(report))
        kernels = {}
        if backend == "ort" and target == "cpu":
            kernels = {g: _ort_kernels(paths[g], precision == "int8", activations) for g in GRAPHS}
        build = {
            "format_version": BUILD_FORMAT_VERSION, "toolkit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "family": "mamba", "backend": backend, "target": target, "precision": precision,
            "int8_activations": activations if precision == "int8" else None,
            "recipe": loaded.label, "model_config": model.cfg.to_dict(), "source": str(loaded.directory),
            "source_manifest_sha256": (sha256_file(loaded.directory / MANIFEST)
                                       if loaded.manifest else None),
            "profile": {"max_batch": max_batch, "max_prompt": max_prompt, "opt_prompt": opt_prompt},
            "versions": _versions(backend), "machine": platform.machine(), "tensorrt": plans or None,
            "parity": report.to_dict(), "ort_kernels": kernels or None,
            "plugins": {"library": str(plugin_lib), "sha256": sha256_file(plugin_lib)} if plugin_lib else None,
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        atomic_write_json(tmp / BUILD_JSON, build)
    return build


def _ort_kernels(graph: Path, int8: bool, activations: str) -> dict:
    """Which integer kernels ONNX Runtime's CPU optimizer chose for a graph, and how many float matmuls stay."""
    counts = ort_backend.optimized_op_counts(graph, int8=int8, activations=activations)
    return {"integer_kernels": ort_backend.integer_kernels(counts),
            "float_matmuls": counts.get("MatMul", 0) + counts.get("Gemm", 0)}


def _build_set_engine(loaded, out: Path, *, backend: str, target: str, precision: str | None, threads: int,
                      max_batch: int, progress=None) -> dict:
    """A set model (AdaPool family): one graph, `model.onnx`, run by ONNX Runtime, parity-checked."""
    from quamba_edge.export.parity import check_sets
    from quamba_edge.export.set_onnx import export_set_model
    from quamba_edge.quant.qset import is_quantized

    model = loaded.model
    quantized = is_quantized(model)
    native = _single_graph_precision(quantized, precision, backend, "set model",
                                     "set models build for ONNX Runtime only so far (--backend ort); the TensorRT "
                                     "path is written for Mamba.")
    step = progress or (lambda message: None)
    activations = activation_encoding(backend, target)
    out = Path(out).resolve()
    with staged_dir(out, ours=lambda d: (d / BUILD_JSON).exists(), what="an engine directory") as tmp:
        step(f"exporting the set model ({native})")
        path = tmp / "model.onnx"
        onnx.save(export_set_model(model, activations), str(path))
        step("parity check against the PyTorch reference")
        runner = ort_backend.graph_runner(path, threads=threads, int8=quantized, target=target, activations=activations)
        report = check_sets(model, runner, native)
        if not report.passed:
            raise ParityError(_parity_failure(report))
        build = _single_graph_build(tmp, loaded, {"family": "adapool"}, backend, target, quantized, activations,
                                    report, {"max_batch": max_batch})
    return build


def _build_speech_engine(loaded, out: Path, *, backend: str, target: str, precision: str | None, threads: int,
                         max_batch: int, max_clip_s: float, progress=None) -> dict:
    """A keyword spotter: one graph, `model.onnx` (audio -> logits), run by ONNX Runtime, parity-checked:
    fp32 end to end, int8 layer by layer on a probe graph (export/parity.py)."""
    from quamba_edge.export.parity import check_speech
    from quamba_edge.export.speech_onnx import export_keyword_spotter
    from quamba_edge.quant.qspeech import is_quantized

    model = loaded.model
    quantized = is_quantized(model)
    native = _single_graph_precision(quantized, precision, backend, "keyword spotter",
                                     "speech models build for ONNX Runtime only so far (--backend ort); their int8 "
                                     "graph is the Q/DQ form TensorRT reads, but no TensorRT build of it has been run.")
    step = progress or (lambda message: None)
    activations = activation_encoding(backend, target)
    max_samples = int(round(max_clip_s * model.cfg.sample_rate))
    out = Path(out).resolve()
    with staged_dir(out, ours=lambda d: (d / BUILD_JSON).exists(), what="an engine directory") as tmp:
        step(f"exporting the keyword spotter ({native})")
        path = tmp / "model.onnx"
        onnx.save(export_keyword_spotter(model, activations), str(path))
        step("parity check against the PyTorch reference")
        graph = path if not quantized else export_keyword_spotter(model, activations, probes=True).SerializeToString()
        runner = ort_backend.graph_runner(graph, threads=threads, int8=quantized, target=target,
                                          activations=activations)
        report = check_speech(model, runner, native, samples=int(round(model.cfg.window_s * model.cfg.sample_rate)))
        if not report.passed:
            raise ParityError(_parity_failure(report))
        build = _single_graph_build(tmp, loaded, {"family": "wav2vec2", "task": "kws"}, backend, target, quantized,
                                    activations, report, {"max_batch": max_batch, "max_samples": max_samples,
                                                          "sample_rate": model.cfg.sample_rate})
    return build


def _single_graph_precision(quantized: bool, precision: str | None, backend: str, what: str,
                            no_tensorrt: str) -> str:
    """A one-graph model builds in its own precision (int8 comes from calibrate) and for ONNX Runtime only."""
    native = "int8" if quantized else "fp32"
    if precision not in (None, native):
        raise QuambaEdgeError(f"this {what} is {native}; --precision {precision} is not available for it "
                              "(int8 comes from `quamba-edge calibrate`).")
    if backend != "ort":
        raise QuambaEdgeError(no_tensorrt)
    return native


def _single_graph_build(tmp: Path, loaded, family: dict, backend: str, target: str, quantized: bool,
                        activations: str, report, profile: dict) -> dict:
    """build.json of an engine with one graph (model.onnx): set models and keyword spotters."""
    path = tmp / "model.onnx"
    build = {
        "format_version": BUILD_FORMAT_VERSION, "toolkit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **family, "backend": backend, "target": target, "precision": "int8" if quantized else "fp32",
        "int8_activations": activations if quantized else None, "recipe": loaded.label,
        "model_config": loaded.model.cfg.to_dict(), "source": str(loaded.directory),
        "source_manifest_sha256": sha256_file(loaded.directory / MANIFEST) if loaded.manifest else None,
        "profile": profile, "versions": _versions(backend), "machine": platform.machine(),
        "parity": report.to_dict(),
        "ort_kernels": {"model": _ort_kernels(path, quantized, activations)} if target == "cpu" else None,
        "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
    }
    atomic_write_json(tmp / BUILD_JSON, build)
    return build


PLUGIN_MODES = ("auto", "on", "off")


def _plugin_library(mode: str, backend: str, precision: str) -> Path | None:
    if backend != "tensorrt" or precision != "int8" or mode == "off":
        if mode == "on":
            raise QuambaEdgeError("--plugins on needs --backend tensorrt and an int8 artifact: the plugins run the "
                                  "int8 conv and scan kernels.")
        return None
    from quamba_edge.export.tensorrt import plugin_library

    return plugin_library(required=mode == "on")


def activation_encoding(backend: str, target: str) -> str:
    """uint8-coded int8 activations for ONNX Runtime on x86 CPUs, whose uint8 x int8 kernels are the
    fast ones (5x faster decode than int8 x int8 on AVX2); symmetric int8 everywhere else (TensorRT,
    ARM, CUDA). The numbers are the same either way (see graph.ACTIVATION_TYPES)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
    return "uint8" if backend == "ort" and target == "cpu" and x86 else "int8"


def _versions(backend: str) -> dict:
    import onnxruntime

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                "python": platform.python_version()}
    if backend == "tensorrt":
        from quamba_edge.export.tensorrt import import_tensorrt

        versions["tensorrt"] = import_tensorrt().__version__
    return versions


@dataclass
class Engine:
    directory: Path
    build: dict

    @property
    def family(self) -> str:
        return self.build.get("family", "mamba")

    @property
    def cfg(self):
        if self.family == "adapool":
            from quamba_edge.sets import config_from_dict

            return config_from_dict(self.build["model_config"])
        if self.family == "wav2vec2":
            from quamba_edge.models.kws import KwsConfig

            return KwsConfig.from_dict(self.build["model_config"])
        return MambaConfig.from_dict(self.build["model_config"])

    def graph(self, name: str) -> Path:
        return self.directory / f"{name}.onnx"


def load_engine(directory: Path) -> Engine:
    """Read build.json and verify: format and toolkit version, then the sha256 of every file."""
    directory = Path(directory)
    path = directory / BUILD_JSON
    if not path.exists():
        raise QuambaEdgeError(f"{directory} has no {BUILD_JSON}, so it is not an engine directory. "
                              f"Fix: `quamba-edge build-engine ARTIFACT --out {directory}`.")
    try:
        build = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise QuambaEdgeError(f"{path} is not valid JSON ({exc}). Fix: rebuild the engine.") from exc
    if build.get("format_version") != BUILD_FORMAT_VERSION or build.get("toolkit_version") != __version__:
        raise QuambaEdgeError(
            f"{directory} was built by quamba-edge {build.get('toolkit_version')} (engine format "
            f"v{build.get('format_version')}); this is quamba-edge {__version__}. Engines are rebuilt, not "
            f"migrated. Fix: `quamba-edge build-engine` again with this version."
        )
    for name, digest in build.get("files", {}).items():
        f = directory / name
        if not f.exists() or sha256_file(f) != digest:
            raise QuambaEdgeError(f"{f} is missing or was changed after the build (sha256 mismatch). "
                                  "Fix: rebuild the engine.")
    return Engine(directory, build)
