"""What the two one-graph families (AdaPool set models, wav2vec 2.0 keyword spotters) share: a model that
is one call (`model.onnx`), static W8A8 of its linear (and conv) layers, and a workload of one timed call."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quamba_edge.backends.base import System
from quamba_edge.backends.compare import TOLERANCE, Case, compare
from quamba_edge.checkpoints.common import checkpoint_family
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.families.base import Column, median_range
from quamba_edge.quant import static
from quamba_edge.quant.recipes import Fp, Recipe, StaticW8A8, make_static


def detector(name: str) -> Callable[[Path], bool]:
    """A family's `detect`: its checkpoints carry its name as config.json's `family`."""
    return lambda directory: checkpoint_family(directory) == name


def quant_config(recipe: str | Recipe, **switches) -> Fp | StaticW8A8:
    """What a recipe means for a transformer-style family: fp stays fp; naive and quamba are static per-tensor
    W8A8 with abs-max scales (Quamba's percentile clip and Hadamard rotation belong to Mamba's SSM). A Quamba
    config (from a script) keeps only its weight granularity."""
    if isinstance(recipe, str):
        return make_static(recipe, **switches)
    if isinstance(recipe, (Fp, StaticW8A8)):
        return recipe
    if recipe.quantize:
        return StaticW8A8(weight_granularity=recipe.weight_granularity)
    raise QuambaEdgeError(f"a {recipe.kind} recipe does not apply here.")


def structurer(build: Callable) -> Callable:
    """A family's `structure`: the empty model an artifact's weights load into, `build(cfg)` or its int8 twin."""
    return lambda cfg, recipe, manifest: static.structure(build(cfg), recipe) if recipe.quantize else build(cfg)


# What both families are, in the order they unpack it: one fp32 graph `model` on ONNX Runtime or TensorRT (its
# int8 form is the symmetric Q/DQ graph TensorRT reads; each family's `profile` gives the shapes), no plugins;
# recipes meaning static W8A8; labels adding the pooling (the axis these families are compared on); no extra
# files, no recurrent state.
TRAITS = (("model",), ("fp32",), ("ort", "tensorrt"), False, "largest |input| of each linear layer; int8 step = "
          "amax / 127", None)
SHARED = (quant_config, lambda cfg, recipe_label, precision: cfg.pool, lambda loaded: {},
          lambda cfg, limits, precision: 0)


def batch_range(limits: dict) -> tuple[int, int, int]:
    """The TensorRT profile's (min, opt, max) batch: 1, 1 (one request at a time, as on a Jetson), max_batch."""
    return 1, 1, limits["max_batch"]


def one_call(inputs: tuple[str, ...], output: str) -> tuple[Callable, Callable]:
    """A family's `reference(model, device)` and its end-to-end parity `case(model, name, feeds, precision)`:
    graph `model` is the PyTorch model called on the feeds named `inputs` (numpy, in that order; on the CPU,
    as these families are benched), its result named `output`."""

    def reference(model: nn.Module, device: str = "cpu") -> dict:
        @torch.no_grad()
        def run(feeds: dict) -> dict:
            return {output: model(*(torch.as_tensor(feeds[name]) for name in inputs)).numpy()}

        return {"model": run}

    def case(model: nn.Module, name: str, feeds: dict, precision: str) -> Case:  # judged at precision's tolerance
        ref = reference(model)["model"](feeds)[output]
        return Case(name, "model", feeds, lambda out: [compare(name, output, out[output], ref, TOLERANCE[precision])])

    return reference, case


class OneCall:
    """sizes["batch"] inputs (`unit`s: clip, set) through the one graph: latency per call (median and range
    over the timed runs), per unit, and units per second ("vs first" compares that)."""

    def __init__(self, feeds: dict[str, np.ndarray], title: str, sizes: dict, unit: str, columns: tuple[Column, ...],
                 rates: Callable[[float], dict] = lambda ms: {}, check: Callable[[System], None] = lambda system: None):
        """rates(ms per call) -> the row's further figures; check(system) refuses a profile too small."""
        self.feeds, self.title, self.sizes, self.unit, self.columns = feeds, title, sizes, unit, columns
        self.rates, self.check = rates, check
        self.speed_key, self.energy_key = f"{unit}s_per_s", f"j_per_{unit}"
        self.energy_columns = (Column(f"J/{unit}", self.energy_key, "{:.5f}"),)

    def warmup(self, system: System) -> None:
        for _ in range(2):
            system["model"](self.feeds)

    def outputs(self, system: System) -> dict:
        return system["model"](self.feeds)

    def once(self, system: System) -> dict:
        t = time.perf_counter()
        system["model"](self.feeds)
        return {"call": time.perf_counter() - t}

    def summarize(self, runs: list[dict], system: System) -> dict:
        ms, ms_range = median_range([r["call"] for r in runs], 1e3)
        batch = self.sizes["batch"]
        return {**self.sizes, "ms_per_batch": ms, "ms_range": list(ms_range), f"ms_per_{self.unit}": ms / batch,
                **self.rates(ms), self.speed_key: batch * 1e3 / ms}

    def energy(self, row: dict, watts: float) -> dict:
        return {self.energy_key: watts * row[f"ms_per_{self.unit}"] / 1e3}
