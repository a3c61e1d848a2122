"""The one verb: `quantize(model, config, batches)` applies a recipe config through its handler.

Handlers, by config type: `Fp` returns the model unchanged; `Quamba` calibrates a Mamba LM and builds its
`QuantizedMambaLM` (quant/quamba.py); `StaticW8A8` calibrates and swaps every covered Linear/Conv1d for
its int8 twin (quant/static.py). Each returns the quantized model and the scales the manifest records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from quamba_edge.quant.quamba import calibrate
from quamba_edge.quant.recipes import Fp, Quamba, Recipe, StaticW8A8
from quamba_edge.quant.static import quantize_static


def _fp(model: nn.Module, config: Fp, batches: Iterable, on_batch, data: str) -> tuple[nn.Module, None]:
    return model, None


def _quamba(model: nn.Module, config: Quamba, batches: Iterable, on_batch, data: str
            ) -> tuple[nn.Module, list[dict]]:
    qmodel, result = calibrate(model, batches, config, on_batch)
    return qmodel, result.scales


def _static(model: nn.Module, config: StaticW8A8, batches: Iterable, on_batch, data: str
            ) -> tuple[nn.Module, list[dict]]:
    def counted(items):
        for batch in items:
            yield batch
            if on_batch:
                on_batch(len(batch[0]))

    qmodel, amax = quantize_static(model, counted(batches), config, data)
    return qmodel, [{"layer": name, "amax": a} for name, a in amax.items()]


HANDLERS: dict[type, Callable] = {Fp: _fp, Quamba: _quamba, StaticW8A8: _static}


def quantize(model: nn.Module, config: Recipe, batches: Iterable, on_batch: Callable[[int], None] | None = None,
             data: str = "batches") -> tuple[nn.Module, list[dict] | None]:
    """model: the fp model; batches: what its handler calibrates on (Mamba: token ids (b, l); the others:
    tuples of the model's forward arguments, named `data` in errors); on_batch(n) after each batch of n.
    Returns (quantized model, scales for the manifest; None for Fp)."""
    return HANDLERS[type(config)](model, config, batches, on_batch, data)
