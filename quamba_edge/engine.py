"""build-engine: model or artifact -> a directory of ONNX graphs (+ TensorRT plans) with `build.json`.

    ENGINE_DIR/
      <graph>.onnx                   portable graphs (DESIGN.md), always written: prefill + decode for
                                     Mamba, model for the one-graph families
      <graph>.plan                   TensorRT only, with <graph>.engine.json and timing.cache
      build.json                     family, backend, target, precision, limits, versions, sha256 of every
                                     file, the parity figures and the integer kernels ONNX Runtime chose

One path for every family: family.export -> backend build -> compare.check(family.parity) -> build.json.
The directory is assembled under a temporary name and renamed into place only after the parity check
passed, so a failed build never replaces a good engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
import torch

from quamba_edge import __version__
from quamba_edge.artifact import MANIFEST
from quamba_edge.backends import ort as ort_backend
from quamba_edge.backends.base import System
from quamba_edge.backends.compare import INT8_END_TO_END, ParityError, check
from quamba_edge.backends.tensorrt import (
    WORKSPACE_BYTES,
    TensorRTRunner,
    build_plan,
    import_tensorrt,
    plugin_library,
)
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.export.graph import WeightFile
from quamba_edge.families.base import Family, Loaded
from quamba_edge.families.registry import by_name, load
from quamba_edge.io import atomic_write_json, sha256_file, staged_dir
from quamba_edge.mapped import release_pages

EXTERNAL_DATA_BYTES = 64 << 20  # past this, weights.data: one copy for both graphs (and protobuf stops at 2 GiB)
WEIGHTS_DATA = ort_backend.WEIGHTS_DATA
BUILD_FORMAT_VERSION = 2  # v2: one layout for every family ("limits" replaces "profile"; plan sidecars hold shapes)
BUILD_JSON = "build.json"
BACKENDS = ("ort", "tensorrt", "native")
TARGETS = {"ort": ("cpu", "cuda"), "tensorrt": ("cuda", "orin-nano-4gb", "orin-nano-8gb", "orin-nano-super",
                                                "orin-nx-16gb", "agx-orin-64gb"), "native": ("cpu",)}
ARTIFACT_DIR = "artifact"  # a native engine runs the artifact itself: a copy (hard links where possible) lives here
# The native decoder end to end, like bench --check's int8 rule: a rounding tie resolved differently in one layer
# moves the later layers (at the mamba-130m shape: conv state off by up to 3 steps in 11% of places after a 7-token
# prefill), a wrong scale or layout is off by order 1; its exactness is tested layer by layer (tests/test_native.py).
NATIVE_TOLERANCE = INT8_END_TO_END
PLUGIN_MODES = ("auto", "on", "off")


def precision_of(loaded: Loaded, requested: str | None) -> str:
    """The engine's precision: an int8 artifact builds int8; an fp model builds in one of its family's
    float precisions (Mamba: fp32 or fp16)."""
    if loaded.recipe.quantize:
        if requested not in (None, "int8"):
            raise QuambaEdgeError(f"this artifact is quantized (int8); --precision {requested} applies to fp models.")
        return "int8"
    if requested is None or requested in loaded.family.precisions:
        return requested or "fp32"
    if requested == "int8":
        raise QuambaEdgeError(
            "--precision int8 needs a quantized artifact. Fix: `quamba-edge calibrate` first, then build from its "
            "--out directory.")
    raise QuambaEdgeError(f"this {loaded.family.name} model builds in {', '.join(loaded.family.precisions)} "
                          f"(int8 comes from `quamba-edge calibrate`); --precision {requested} is not available.")


def _check_request(family: Family, backend: str, target: str, plugins: str) -> None:
    if backend not in BACKENDS:
        raise QuambaEdgeError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}.")
    if target not in TARGETS[backend]:
        raise QuambaEdgeError(f"unknown target {target!r} for --backend {backend}; known: "
                              f"{', '.join(TARGETS[backend])}.")
    if plugins not in PLUGIN_MODES:
        raise QuambaEdgeError(f"--plugins must be one of {', '.join(PLUGIN_MODES)}, not {plugins!r}.")
    if backend not in family.backends:
        known = " or ".join(family.backends)
        raise QuambaEdgeError(family.no_tensorrt if backend == "tensorrt" or not family.backends else
                              f"{family.name} models build for --backend {known}, not {backend}.")


def _plugin_library(mode: str, backend: str, precision: str, family: Family) -> Path | None:
    """plugins (TensorRT int8, families with a plugin pass: Mamba): "on" replaces each layer's conv and scan with
    the csrc/ plugins (export/plugins.py), "off" keeps the portable graph, "auto" uses them when built."""
    if backend != "tensorrt" or precision != "int8" or mode == "off" or family.plugin_pass is None:
        if mode == "on":
            raise QuambaEdgeError("--plugins on needs --backend tensorrt and an int8 Mamba artifact: the plugins run "
                                  "Mamba's int8 conv and scan kernels.")
        return None
    return plugin_library(required=mode == "on")


def _runners(paths: dict[str, Path | bytes], backend: str, target: str, int8: bool, threads: int,
             activations: str, prepack: bool = True) -> dict:
    if backend == "ort":
        shared = ort_backend.SharedWeights.beside(next(iter(paths.values())))
        runners = {g: ort_backend.OrtRunner(p, name=g, threads=threads, int8=int8, target=target,
                                            activations=activations, shared=shared, prepack=prepack)
                   for g, p in paths.items()}
        if shared is not None and prepack:  # the pages the sessions read to pre-pack; what runs faults back in
            shared.release()
        return runners
    return {g: TensorRTRunner(Path(p).with_suffix(".plan"), name=g) for g, p in paths.items()}


def _one_copy(cases, model, runners: dict):
    """The parity cases, with the reference's mapped pages released module by module as it runs (forward hooks)
    and the engine's once it has run a case (before the judge, which may run the reference): the peak holds the
    engine's weights and one layer of the reference's, not the artifact's and the engine's. When the cases are
    done, all of the reference's pages go (the model is not needed again by build-engine)."""

    def engine_released(judge):
        def judged(outputs):
            for runner in runners.values():
                if getattr(runner, "shared", None) is not None:
                    runner.shared.release()
            return judge(outputs)
        return judged

    def reference_released(module, inputs, output):  # each module's pages, as soon as it has run
        release_pages([*module.parameters(recurse=False), *module.buffers(recurse=False)])

    hooks = [m.register_forward_hook(reference_released) for m in model.modules()
             if next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None]
    try:
        for case in cases:
            release_pages(model.state_dict().values())
            yield replace(case, judge=engine_released(case.judge))
    finally:
        for hook in hooks:
            hook.remove()
        release_pages(model.state_dict().values())


def weight_bytes(model, precision: str | None = None) -> int:
    """Bytes of a model's tensors, or of an engine's weights built from it at `precision` (fp16 halves them)."""
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return total // 2 if precision == "fp16" else total


def build_engine(model_spec: str | Path, out: Path, *, backend: str = "ort", target: str = "cpu",
                 precision: str | None = None, threads: int = 1, plugins: str = "auto", progress=None,
                 external_data: bool | None = None, memory_budget: tuple[str, float] | None = None,
                 head: str | None = None, **limits) -> dict:
    """Export the family's graphs, build them for the backend, check them against the PyTorch reference and
    write the engine directory. `limits` are the family's profile options (Mamba: max_batch, max_prompt,
    opt_prompt; keyword spotters: max_batch, max_clip_s; set models: max_batch).

    memory_budget: (device name, usable bytes): refuse, before any work, an engine whose weights, states at
    the profile's batch and TensorRT workspace do not fit (DESIGN.md, "Scale").
    external_data: store the graphs' weights in one shared file beside them (`weights.data`, ONNX external
    data: prefill and decode share every tensor, and no graph meets protobuf's 2 GiB limit); None: when
    the weights pass EXTERNAL_DATA_BYTES (64 MiB: every public Mamba size; small test models stay inline).

    backend "native" (CPU; int8 artifacts of families that have it): no graphs; the engine holds a copy of the
    artifact, prefill and decode run on csrc/cpu/native (its lm_head in `head`: fp32 | fp16 | bf16 | int8), and
    parity is judged on every prefill and decode case at NATIVE_TOLERANCE.

    Raises QuambaEdgeError for a request the family or backend cannot build, ParityError (nothing written)
    when the engine disagrees with the reference beyond DESIGN.md's tolerances.
    """
    loaded = load(model_spec)
    family = loaded.family
    _check_request(family, backend, target, plugins)
    if backend == "tensorrt":
        import_tensorrt()  # fail before any work when TensorRT is missing
    precision = precision_of(loaded, precision)
    int8 = precision == "int8"
    plugin_lib = _plugin_library(plugins, backend, precision, family)
    model, cfg = loaded.model.eval(), loaded.cfg
    limits = family.limits(cfg, **limits)
    if memory_budget is not None:
        _check_fit(loaded, precision, limits, *memory_budget)
    step = progress or (lambda message: None)
    activations = ort_backend.activation_encoding(backend, target)
    out = Path(out).resolve()
    if external_data is None:
        external_data = backend != "native" and weight_bytes(model, precision) > EXTERNAL_DATA_BYTES
    with staged_dir(out, ours=lambda d: (d / BUILD_JSON).exists(), what="an engine directory") as tmp:
        if backend == "native":
            step("parity check of the native decoder against the PyTorch reference")
            runners, _, detail = family.native(model, head)
            report = check(runners, _one_copy(family.parity(model, precision, limits, tolerance=NATIVE_TOLERANCE),
                                              model, runners), precision)
            if not report.passed:
                raise ParityError(report.failure() + " The engine was not written.")
            shutil.copytree(loaded.directory, tmp / ARTIFACT_DIR, copy_function=_link_or_copy)
            build = _build_json(family, loaded, backend, target, precision, limits, report, tmp,
                                native={"head": runners["decode"].decoder.head_kind, "isa_at_build": detail})
            atomic_write_json(tmp / BUILD_JSON, build)
            return build
        layer_by_layer = int8 and backend == "ort"  # the probe graphs: int8 parity is judged layer by layer
        weights = WeightFile(tmp / WEIGHTS_DATA) if external_data else None
        try:
            paths = _export_graphs(family, model, precision, activations, tmp, weights, step,
                                   plugin_pass=family.plugin_pass if plugin_lib is not None else None)
            probes = (_export_graphs(family, model, precision, activations, tmp, weights, step, probes=True)
                      if layer_by_layer else {})  # same tensors: nothing new in weights.data
        finally:
            if weights is not None:
                weights.close()
        if weights is not None:
            for path in [*paths.values(), *probes.values()]:
                onnx.checker.check_model(str(path), full_check=True)
        plans = {}
        if backend == "tensorrt":
            for graph in family.graphs:
                step(f"building TensorRT {graph} engine")
                plans[graph] = build_plan(paths[graph], graph, family.profile(graph, cfg, limits), tmp,
                                          plugins=plugin_lib)
        step("parity check against the PyTorch reference")
        # parity runs a few tokens: sessions without ORT's pre-packed weight copies keep build-engine's peak down
        runners = _runners(paths, backend, target, int8, threads, activations, prepack=False)
        report = check(runners, _one_copy(family.parity(model, precision, limits), model, runners), precision)
        if layer_by_layer:
            runners = _runners(probes, backend, target, int8, threads, activations, prepack=False)
            check(runners, _one_copy(family.layer_parity(model) or (), model, runners), precision, report)
            for path in probes.values():
                path.unlink()
        del runners
        if not report.passed:
            raise ParityError(report.failure() + " The engine was not written. This is a bug in the export or the "
                              "backend: please report it with build.json's parity section.")
        kernels = {}
        if backend == "ort" and target == "cpu":
            kernels = {g: ort_backend.kernel_report(p, int8, activations) for g, p in paths.items()}
        build = _build_json(
            family, loaded, backend, target, precision, limits, report, tmp,
            int8_activations=activations if int8 else None, external_data=WEIGHTS_DATA if external_data else None,
            tensorrt=plans or None, ort_kernels=kernels or None,
            plugins={"library": str(plugin_lib), "sha256": sha256_file(plugin_lib)} if plugin_lib else None)
        atomic_write_json(tmp / BUILD_JSON, build)
    return build


def _build_json(family: Family, loaded: Loaded, backend: str, target: str, precision: str, limits: dict,
                report, directory: Path, **sections) -> dict:
    """build.json: what was built from what, with which versions, its parity and the sha256 of every file
    (its own sha256 last, over all of that)."""
    build = {
        "format_version": BUILD_FORMAT_VERSION, "toolkit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "family": family.name, "backend": backend, "target": target, "precision": precision,
        "recipe": loaded.label, "model_config": loaded.cfg.to_dict(), "source": str(loaded.directory),
        "source_manifest_sha256": sha256_file(loaded.directory / MANIFEST) if loaded.manifest else None,
        "limits": limits, "versions": _versions(backend), "machine": platform.machine(),
        "parity": report.to_dict(), **sections,
        "files": {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()},
    }
    build["build_sha256"] = _digest(build)
    return build


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the file system allows one (no second copy of the weights on disk), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _check_fit(loaded: Loaded, precision: str, limits: dict, device: str, usable: float) -> None:
    """The engine on the board: weights + states (in and out, at the profile's largest batch) + the TensorRT
    workspace must fit the board's usable memory; refused with the numbers when they do not."""
    weights = weight_bytes(loaded.model, precision)
    states = loaded.family.state_bytes(loaded.cfg, limits, precision)
    need = weights + states + WORKSPACE_BYTES
    if need > usable:
        gb = 1e9
        raise QuambaEdgeError(
            f"this {precision} engine needs {need / gb:.2f} GB on {device} (weights {weights / gb:.2f}, states "
            f"{states / gb:.3f} at batch {limits.get('max_batch')}, TensorRT workspace {WORKSPACE_BYTES / gb:.2f}) "
            f"but the board has {usable / gb:.2f} GB usable. Fix: an int8 artifact (`quamba-edge calibrate`), a "
            "smaller --max-batch, or a board with more memory.")


def _export_graphs(family: Family, model, precision: str, activations: str, directory: Path,
                   weights: WeightFile | None, step, probes: bool = False, plugin_pass=None) -> dict[str, Path]:
    """Write the family's graphs into `directory` (their large tensors into `weights` when given) and return
    their paths by graph name; probe graphs are named probe-<graph>.onnx."""
    paths = {}
    for graph in family.graphs:
        step(f"exporting {graph} graph ({precision}{', probes' if probes else ''})")
        proto = family.export(model, graph, precision, activations, probes=probes, weights=weights)
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "family": family.name})
        if plugin_pass is not None:
            proto = plugin_pass(proto, model)
        paths[graph] = directory / f"{'probe-' if probes else ''}{graph}.onnx"
        onnx.save(proto, str(paths[graph]))
        del proto
    return paths


def _digest(build: dict) -> str:
    """sha256 of build.json's content without this field: an edited or damaged build.json is caught on load."""
    body = json.dumps({k: v for k, v in build.items() if k != "build_sha256"}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _versions(backend: str) -> dict:
    import onnxruntime

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                "python": platform.python_version()}
    if backend == "tensorrt":
        versions["tensorrt"] = import_tensorrt().__version__
    return versions


@dataclass
class Engine:
    directory: Path
    build: dict

    @property
    def family(self) -> Family:
        return by_name(self.build.get("family"), str(self.directory))

    @property
    def cfg(self):
        return self.family.config(self.build["model_config"])

    @property
    def precision(self) -> str:
        return self.build["precision"]

    def graph(self, name: str) -> Path:
        return self.directory / f"{name}.onnx"

    @property
    def decode_bytes(self) -> int:
        """Bytes on disk of the graph every generated token (or every call) runs, its weights included: what
        one step reads (achieved GB/s in bench, the weight traffic of bench --estimate)."""
        decode = self.family.graphs[-1]
        return sum(p.stat().st_size for p in (self.graph(decode), self.directory / WEIGHTS_DATA) if p.exists())

    def system(self, device: str, threads: int, prepack: bool = True) -> System:
        """The engine's graphs on its backend, ready to run (`device` must be one the engine was built for);
        prepack=False: ONNX Runtime without its pre-packed weight copies (bench --low-memory)."""
        build, family = self.build, self.family
        backend, target = build["backend"], build["target"]
        tag = family.tag(self.cfg, build["recipe"], self.precision)
        label = f"{backend}-{self.precision}" + (f" ({tag})" if tag else "")
        if backend == "native":
            if device != "cpu":
                raise QuambaEdgeError(f"{self.directory} is a native CPU engine; it runs on --device cpu.")
            artifact = self.directory / ARTIFACT_DIR
            if sha256_file(artifact / MANIFEST) != build["source_manifest_sha256"]:
                raise QuambaEdgeError(f"{artifact / MANIFEST} is not the artifact this engine was built from "
                                      f"(sha256 mismatch). Fix: rebuild it: `quamba-edge build-engine "
                                      f"{build['source']} --backend native --out {self.directory}`.")
            runners, step_bytes, detail = family.native(load(artifact).model, build["native"]["head"])
            return System(runners, f"native-int8 ({tag}, {detail})", backend, self.precision, self.cfg, family,
                          build["limits"], step_bytes)
        if backend == "ort":
            wanted = "cpu" if device == "cpu" else "cuda"
            if target != wanted:
                raise QuambaEdgeError(f"{self.directory} is an ONNX Runtime engine for --target {target}; "
                                      f"--device {device} needs --target {wanted}. Fix: rebuild it.")
            runners = _runners({g: self.graph(g) for g in family.graphs}, "ort", target, self.precision == "int8",
                               threads, build.get("int8_activations") or "int8", prepack)
        else:
            if device == "cpu":
                raise QuambaEdgeError(f"{self.directory} is a TensorRT engine; it runs on --device cuda or orin.")
            runners = _runners({g: self.graph(g) for g in family.graphs}, "tensorrt", target, True, threads, "int8")
        return System(runners, label, backend, self.precision, self.cfg, family, build["limits"], self.decode_bytes)


def is_engine(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / BUILD_JSON).exists()


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
            f"v{build.get('format_version')}); this is quamba-edge {__version__} (format v{BUILD_FORMAT_VERSION}). "
            f"Engines are rebuilt, not migrated. Fix: `quamba-edge build-engine {build.get('source', 'ARTIFACT')} "
            f"--out {directory}` with this version."
        )
    rebuild = f"Fix: rebuild it: `quamba-edge build-engine {build.get('source', 'ARTIFACT')} --out {directory}`."
    if build.get("build_sha256") != _digest(build):
        raise QuambaEdgeError(f"{path} was changed after the build (its own sha256 does not match). {rebuild}")
    if not build.get("parity", {}).get("passed"):
        raise QuambaEdgeError(f"{directory} did not pass its parity check, so its outputs cannot be trusted. "
                              f"{rebuild}")
    for name, digest in build.get("files", {}).items():
        f = directory / name
        if not f.exists() or sha256_file(f) != digest:
            raise QuambaEdgeError(f"{f} is missing or was changed after the build (sha256 mismatch). {rebuild}")
    return Engine(directory, build)
