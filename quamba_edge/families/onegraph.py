"""What the two one-graph families (AdaPool set models, wav2vec 2.0 keyword spotters) share: a model that
is one call (`model.onnx`), static W8A8 of its linear (and conv) layers, and a workload of one timed call."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quamba_edge.backends.base import System
from quamba_edge.checkpoints.common import checkpoint_family
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.families.base import Column, median_range
from quamba_edge.quant import static
from quamba_edge.quant.recipes import Fp, Recipe, StaticW8A8, make_static

SCALES_TITLE = "largest |input| of each linear layer; int8 step = amax / 127"


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


def structure(fp_model, recipe: Recipe):
    """The empty model an artifact's weights load into: the fp model, or its int8 twin."""
    return static.structure(fp_model, recipe) if recipe.quantize else fp_model


def no_extra_files(loaded) -> dict:
    return {}


def no_tensorrt_profile(graph: str, cfg, limits: dict) -> None:
    return None


def no_state(cfg, limits: dict, precision: str) -> int:
    return 0


def pool_tag(cfg, recipe_label: str, precision: str) -> str:
    """What a system's label adds in parentheses: the pooling, the axis these families are compared on."""
    return cfg.pool


class OneCall:
    """`batch` inputs through the one graph: latency per call (median and range over the timed runs)."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int, title: str, sizes: dict, unit: str,
                 unit_columns: tuple[Column, ...], rates: Callable[[float], dict], speed_key: str,
                 check: Callable[[System], None] | None = None):
        """rates(ms per call) -> the row's derived figures; speed_key: the figure "vs first" compares."""
        self.feeds, self.batch, self.title, self.sizes, self.unit = feeds, batch, title, sizes, unit
        self.columns, self.speed_key, energy_key = unit_columns, speed_key, f"j_per_{unit}"
        self._rates, self._check, self.energy_key = rates, check, energy_key
        self.energy_columns = (Column(f"J/{unit}", energy_key, "{:.5f}"),)

    def check(self, system: System) -> None:
        if self._check:
            self._check(system)

    def warmup(self, system: System) -> None:
        for _ in range(2):
            system["model"](self.feeds)

    def outputs(self, system: System) -> dict:
        """The graph's outputs on the workload's inputs (`bench --check`)."""
        return system["model"](self.feeds)

    def once(self, system: System) -> dict:
        t = time.perf_counter()
        system["model"](self.feeds)
        return {"call": time.perf_counter() - t}

    def summarize(self, runs: list[dict], system: System) -> dict:
        ms, ms_range = median_range([r["call"] for r in runs], 1e3)
        return {**self.sizes, "ms_per_batch": ms, "ms_range": list(ms_range), **self._rates(ms)}

    def energy(self, row: dict, watts: float) -> dict:
        return {self.energy_key: watts * row[f"ms_per_{self.unit}"] / 1e3}


SHARED = (quant_config, pool_tag, no_extra_files, no_tensorrt_profile, no_state)
