"""What every model family supplies, so that calibrate, build-engine, bench, eval and the CLI never ask
which family they hold (DESIGN.md, "Model families").

A family is a module-level object with the attributes and methods of `Family`. The shared stages take a
`Loaded` (from `registry.load(spec)`), call its family, and print the `Column`s a result declares.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from quamba_edge.backends.base import System
from quamba_edge.backends.compare import Case
from quamba_edge.checkpoints.common import adopt, on_meta
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.quant.recipes import Recipe

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Column:
    """One column of a printed table: header, the row key it shows, and a format (`{:.2f}`, or a callable)."""

    header: str
    key: str
    fmt: str | Callable[[dict], str] = "{}"

    def cell(self, row: dict) -> str:
        if callable(self.fmt):
            return self.fmt(row)
        value = row.get(self.key)
        return "-" if value is None else self.fmt.format(value)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Compute:
    """Where calibration's forward passes run (`calibrate --device cpu|cuda --dtype fp32|fp16|bf16`).

    The observers and every scale work in fp32 whatever the compute dtype; the int8 weights are quantized
    from the checkpoint's own weights, never from the compute copy. Raises QuambaEdgeError for an unknown
    dtype or device, or `cuda` where torch sees no GPU."""

    device: str = "cpu"
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise QuambaEdgeError(f"unknown --dtype {self.dtype!r}; known: {', '.join(DTYPES)}.")
        if self.device not in ("cpu", "cuda"):
            raise QuambaEdgeError(f"unknown --device {self.device!r}; known: cpu, cuda.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise QuambaEdgeError(f"--device cuda, but torch {torch.__version__} sees no CUDA GPU here. Fix: "
                                  "--device cpu, or run on a GPU machine with a CUDA build of torch.")

    @property
    def default(self) -> bool:
        return self.device == "cpu" and self.dtype == "fp32"

    def twin(self, model: nn.Module) -> nn.Module:
        """`model` itself on the default; else a copy on `device` in `dtype` (floating tensors only), built
        without an initialisation pass. `model` must be constructible as `type(model)(model.cfg)`."""
        if self.default:
            return model
        dtype = DTYPES[self.dtype]
        state = {name: t.detach().to(self.device, dtype if t.is_floating_point() else t.dtype)
                 for name, t in (*model.named_parameters(), *model.named_buffers())}
        with on_meta():
            empty = type(model)(model.cfg)
        return adopt(empty, state).eval()

    def require_default(self, family: str) -> None:
        """Families whose models are small calibrate on the CPU in fp32 only; anything else is refused."""
        if not self.default:
            raise QuambaEdgeError(f"{family} models calibrate on the CPU in fp32 (they are small); --device "
                                  f"{self.device} --dtype {self.dtype} is for Mamba. Fix: drop --device and --dtype.")


@dataclass
class Calibration:
    """What calibrate produced: the quantized model, the manifest's calibration record and scales."""

    model: nn.Module
    record: dict
    scales: list[dict] | None


@dataclass
class Loaded:
    """A model as loaded once by the registry and passed down: every stage reads it, none re-derives it."""

    family: Family
    model: nn.Module
    recipe: Recipe
    directory: Path
    manifest: dict | None = None
    tokenizer: str | None = None  # --tokenizer (a tokenizer.json, a directory, a hub id) for text families

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    @property
    def label(self) -> str:
        return self.recipe.label

    @property
    def precision(self) -> str:
        return "int8" if self.recipe.quantize else "fp32"


class Workload(Protocol):
    """One request of a family (a prompt and its generated tokens, a clip, a batch of sets)."""

    title: str  # the table's title: the workload's sizes
    columns: tuple[Column, ...]  # what the table prints per system
    energy_columns: tuple[Column, ...]  # J per unit of work, printed when board power was sampled
    speed_key: str  # the row's rate that "vs first" compares (higher is faster)

    def check(self, system: System) -> None: ...  # refuse a workload the system's profile cannot take
    def warmup(self, system: System) -> None: ...  # allocations, kernel selection; not timed
    def once(self, system: System) -> dict: ...  # run it once, return its timings (seconds)
    def outputs(self, system: System) -> dict: ...  # named outputs on fixed inputs, for `bench --check`
    def summarize(self, runs: list[dict], system: System) -> dict: ...  # medians and rates over the timed runs
    def energy(self, row: dict, watts: float) -> dict: ...  # J per unit of work from the average power


def median_range(values: list[float], scale: float = 1.0) -> tuple[float, tuple[float, float]]:
    """(median, (min, max)) of `values` times `scale`."""
    return statistics.median(values) * scale, (min(values) * scale, max(values) * scale)


class Family(Protocol):
    """Module-level attributes and functions of families/mamba.py, wav2vec2.py and adapool.py."""

    name: str  # key in config.json / manifest.json / build.json
    graphs: tuple[str, ...]  # ("prefill", "decode") or ("model",)
    precisions: tuple[str, ...]  # what an fp model builds in (a quantized one builds int8)
    backends: tuple[str, ...]  # "ort"; "tensorrt" where its build has a profile; "native" where it has `native`
    no_tensorrt: str  # why not, where TensorRT is not among the backends
    generates: bool  # a language model: generate, the roofline estimate and --plot apply
    scales_title: str  # what calibrate's table of scales shows
    plugin_pass: Callable | None  # TensorRT graph pass to csrc/ plugins (Mamba), else None
    eval_columns: tuple[Column, ...]  # what `eval` prints per row of eval_rows(result)
    public_shapes: dict[str, Any]  # a public size's name (`mamba-2.8b`) -> its config, for estimates without weights

    def detect(self, directory: Path) -> bool: ...
    def load_checkpoint(self, directory: Path) -> nn.Module: ...
    def config(self, values: dict) -> Any: ...  # model_config (manifest, build.json) -> the family's config
    def quant_config(self, recipe: str | Recipe, **switches: Any) -> Recipe: ...  # what fp/naive/quamba mean here
    def structure(self, cfg: Any, recipe: Recipe, manifest: dict) -> nn.Module: ...  # empty model for weights
    def tag(self, cfg: Any, recipe_label: str, precision: str) -> str | None: ...  # a system label's (...)
    def extra_files(self, loaded: Loaded) -> dict[str, Path]: ...  # files an artifact carries, by name
    def calibrate(self, loaded: Loaded, recipe: Recipe, data: str, samples: int, seq_len: int, batch_size: int,
                  on_batch: Progress | None, compute: Compute) -> Calibration: ...
    def export(self, model: nn.Module, graph: str, precision: str, activations: str, probes: bool = False,
               weights: Any = None) -> Any: ...  # onnx.ModelProto; weights: an export.graph.WeightFile
    def parity(self, model: nn.Module, precision: str, limits: dict) -> Iterator[Case]: ...
    # backend "native" only: (runners, bytes one decode step reads, label detail)
    def native(self, model: nn.Module, head: str | None) -> tuple[dict, int, str]: ...
    def layer_parity(self, model: nn.Module) -> Iterator[Case] | None: ...  # int8, on the probe graphs
    def limits(self, cfg: Any, **options: Any) -> dict: ...  # the engine's profile (build.json)
    def profile(self, graph: str, cfg: Any, limits: dict) -> dict | None: ...  # TensorRT shapes; None: no TRT
    def state_bytes(self, cfg: Any, limits: dict, precision: str) -> int: ...  # recurrent state in + out
    def reference(self, model: nn.Module, device: str = "cpu") -> dict[str, Callable]: ...
    def workload(self, cfg: Any, **options: Any) -> Workload: ...
    def evaluate(self, loaded: Loaded, data: str, seq_len: int, max_samples: int | None, batch_size: int,
                 on_batch: Progress | None) -> dict: ...
    def eval_rows(self, result: dict) -> list[dict]: ...
