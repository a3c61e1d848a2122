"""The one verb: `quantize(model, config, batches)` applies a recipe config through its handler: `Quamba`
builds a `QuantizedMambaLM` (quant/quamba.py), `Quamba2` a `QuantizedMamba2LM` (quant/quamba2.py),
`StaticW8A8` swaps every covered Linear/Conv1d for its int8 twin (quant/static.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from quamba_edge.quant import quamba2
from quamba_edge.quant.quamba import calibrate
from quamba_edge.quant.recipes import Fp, Quamba, Quamba2, Recipe
from quamba_edge.quant.static import quantize_static


def quantize(model: nn.Module, config: Recipe, batches: Iterable, on_batch: Callable[[int], None] | None = None,
             data: str = "batches", observe_on: nn.Module | None = None) -> tuple[nn.Module, list[dict] | None]:
    """model: the fp model; batches: what its handler calibrates on (Mamba: token ids (b, l); the others:
    tuples of the model's forward arguments, named `data` in errors); on_batch(n) after each batch of n;
    observe_on: Mamba and Mamba-2, a copy of `model` that runs the calibration passes (quamba.calibrate).
    Returns (quantized model, scales for the manifest; None for Fp; Mamba-2's per-channel scale vectors as
    [smallest, largest], the exact ones being buffers of the model)."""
    if isinstance(config, Fp):
        return model, None
    if isinstance(config, Quamba):
        qmodel, result = calibrate(model, batches, config, on_batch, observe_on)
        return qmodel, result.scales
    if isinstance(config, Quamba2):
        qmodel, scales = quamba2.calibrate(model, batches, config, on_batch, observe_on)
        return qmodel, [{k: float(v) if v.dim() == 0 else [float(v.min()), float(v.max())] for k, v in layer.items()}
                        for layer in scales]
    qmodel, amax = quantize_static(model, batches, config, data, on_batch)
    return qmodel, [{"layer": name, "amax": a} for name, a in amax.items()]
