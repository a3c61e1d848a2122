"""AdaPool set models (an encoder, a pooling over the set, a head): .npz calibration, static W8A8, the
one-graph export and its parity cases, the set workload, mean squared error."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from quamba_edge.backends.compare import Case
from quamba_edge.checkpoints.adapool import FAMILY, config_from_dict, load_set_checkpoint
from quamba_edge.data.sets import load_sets
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.export.adapool import export_set_model
from quamba_edge.export.graph import WeightFile
from quamba_edge.families import onegraph
from quamba_edge.families.base import Calibration, Column, Compute, Loaded, Progress
from quamba_edge.io import sha256_file
from quamba_edge.models.adapool import SetModel, SetModelConfig
from quamba_edge.quant.quantize import quantize
from quamba_edge.quant.recipes import Recipe

name = FAMILY
detect, structure = onegraph.detector(FAMILY), onegraph.structurer(SetModel)
load_checkpoint, config = load_set_checkpoint, config_from_dict
graphs, precisions, backends, generates, scales_title, plugin_pass = onegraph.TRAITS
quant_config, tag, extra_files, state_bytes = onegraph.SHARED
public_shapes: dict = {}  # estimates cover language models
reference, _case = onegraph.one_call(("sets", "mask"), "output")


def calibrate(loaded: Loaded, recipe: Recipe, data: str, samples: int, seq_len: int, batch_size: int,
              on_batch: Progress | None, compute: Compute) -> Calibration:
    compute.require_default(name)
    if str(data) == "default":
        raise QuambaEdgeError("set models calibrate on sets: pass --data SETS.npz (arrays x (sets, n, d) and "
                              "optionally mask (sets, n)).")
    sets = load_sets(data, loaded.cfg.d_in)
    start = time.perf_counter()
    qmodel, scales = quantize(loaded.model, recipe, sets.batches(batch_size, samples), on_batch, data="sets")
    record = {"data": str(data), "samples": min(samples, len(sets.x)), "digest": sha256_file(Path(data)),
              "seconds": round(time.perf_counter() - start, 2)}
    return Calibration(qmodel, record, scales)


def export(model: nn.Module, graph: str, precision: str, activations: str, probes: bool = False,
           weights: WeightFile | None = None) -> onnx.ModelProto:
    return export_set_model(model, activations, weights)


def limits(cfg: SetModelConfig, *, max_batch: int = 8, max_set_size: int = 512, opt_set_size: int = 128,
           **_) -> dict:
    """The engine's profile: up to `max_batch` sets of up to `max_set_size` elements (TensorRT tunes for
    `opt_set_size`, bench's default; capped at the max). Raises QuambaEdgeError for a size below 1."""
    if min(max_batch, max_set_size, opt_set_size) < 1:
        raise QuambaEdgeError(f"max_batch, max_set_size and opt_set_size must be at least 1 (got {max_batch}, "
                              f"{max_set_size}, {opt_set_size}).")
    return {"max_batch": max_batch, "max_set_size": max_set_size, "opt_set_size": min(opt_set_size, max_set_size)}


def profile(graph: str, cfg: SetModelConfig, limits: dict) -> dict[str, tuple]:
    """TensorRT's (min, opt, max) shapes of `sets` (batch, n, d_in) and `mask` (batch, n): batch 1..max_batch
    (opt 1), set size n 1..max_set_size (opt opt_set_size); both inputs share batch and n."""
    b_min, b_opt, b_max = onegraph.batch_range(limits)
    n_opt, n_max = limits["opt_set_size"], limits["max_set_size"]
    return {"sets": ((b_min, 1, cfg.d_in), (b_opt, n_opt, cfg.d_in), (b_max, n_max, cfg.d_in)),
            "mask": ((b_min, 1), (b_opt, n_opt), (b_max, n_max))}


def parity(model: nn.Module, precision: str, limits: dict | None = None, *, seed: int = 0,
           shapes: tuple[tuple[int, int], ...] = ((1, 9), (3, 17))) -> Iterator[Case]:
    """Random sets, the first one padded (masked elements must change nothing). int8 is judged too, at the
    int8 tolerance: a set model has no recurrence to accumulate rounding."""
    gen = torch.Generator().manual_seed(seed)
    limits = limits or {}
    for batch, n in shapes:  # held to the engine's profile (a TensorRT engine refuses larger inputs)
        batch, n = min(batch, limits.get("max_batch", batch)), min(n, limits.get("max_set_size", n))
        x = torch.randn(batch, n, model.cfg.d_in, generator=gen)
        mask = torch.ones(batch, n, dtype=torch.bool)
        mask[0, n // 2 + 1 :] = False
        yield _case(model, f"sets b={batch} n={n}", {"sets": x.numpy(), "mask": mask.numpy()}, precision)


def layer_parity(model: nn.Module) -> None:
    return None  # judged end to end (above)


def workload(cfg: SetModelConfig, *, batch: int, set_size: int = 128, seed: int = 0, **_) -> onegraph.OneCall:
    rng = np.random.default_rng(seed)
    feeds = {"sets": rng.normal(size=(batch, set_size, cfg.d_in)).astype(np.float32),
             "mask": np.ones((batch, set_size), dtype=bool)}
    columns = (
        Column("ms / batch (range)", "ms_per_batch",
               lambda r: "{:.2f} ({:.2f}-{:.2f})".format(r["ms_per_batch"], *r["ms_range"])),
        Column("ms / set", "ms_per_set", "{:.3f}"), Column("sets/s", "sets_per_s", "{:.0f}"),
    )
    return onegraph.OneCall(feeds, f"set models: batch {batch} sets of {set_size}",
                            {"batch": batch, "set_size": set_size}, "set", columns)


eval_columns = (Column("recipe", "recipe"), Column("MSE", "mse", "{:.5f}"), Column("sets", "samples"),
                Column("data", "data"))


def eval_rows(result: dict) -> list[dict]:
    return [result]


@torch.no_grad()
def evaluate(loaded: Loaded, data: str, seq_len: int, max_samples: int | None, batch_size: int,
             on_batch: Progress | None) -> dict:
    """Mean squared error against the set file's targets `y`."""
    if str(data).startswith("default"):
        raise QuambaEdgeError("set models are evaluated on sets: pass --data SETS.npz with arrays x and y.")
    sets = load_sets(data, loaded.cfg.d_in)
    if sets.y is None:
        raise QuambaEdgeError(f"{data} has no targets y, so there is nothing to score. Fix: add y (sets, d_out).")
    preds = []
    for x, mask in sets.batches(max(batch_size, 64), max_samples):
        preds.append(loaded.model(x, mask))
        if on_batch:
            on_batch(len(x))
    pred = torch.cat(preds)
    mse = torch.nn.functional.mse_loss(pred, sets.y[: len(pred)]).item()
    return {"recipe": loaded.label, "data": str(data), "samples": len(pred), "mse": mse,
            "data_digest": sha256_file(Path(data))}
