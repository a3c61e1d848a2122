"""The user's steps as library functions; the CLI and notebooks call these the same way."""

from __future__ import annotations

from pathlib import Path

from quamba_edge.artifact import read_manifest, save_artifact
from quamba_edge.families.base import Compute, Loaded, Progress
from quamba_edge.families.registry import load
from quamba_edge.quant.recipes import Recipe


def calibrate(
    model_spec: str, recipe: str | Recipe, data: str, samples: int, seq_len: int, out: Path,
    batch_size: int = 8, on_batch: Progress | None = None, tokenizer: str | None = None, device: str = "cpu",
    dtype: str = "fp32", **switches,
) -> tuple[Path, dict]:
    """Load, calibrate on the first `samples` windows (sequences, sets, clips) of `data`, write the artifact.

    `recipe` is a name (fp | naive | quamba) with the CLI's `switches` (hadamard, percentile_clip, percentile,
    weight_granularity, int8_head, int8_conv_features), or a config from quant.recipes; the family decides
    what it means for it (set models and keyword spotters: static W8A8) and what `data` is. `device` (cpu |
    cuda) and `dtype` (fp32 | fp16 | bf16) say where the calibration forward passes run (families.base.Compute:
    scales are fp32 whatever the dtype). Returns the artifact directory and its manifest.
    """
    compute = Compute(device, dtype)  # a bad request fails before the model loads
    loaded = load(model_spec)
    loaded.tokenizer = tokenizer
    family = loaded.family
    # local paths are recorded absolute, so that the rebuild command an old artifact's error names works anywhere
    model_spec, data = _absolute(model_spec), _absolute(data)
    recipe = family.quant_config(recipe, **switches)
    model, calibration, scales = loaded.model, None, None
    if recipe.quantize:
        result = family.calibrate(loaded, recipe, data, samples, seq_len, batch_size, on_batch, compute)
        model, scales = result.model, result.scales
        calibration = {**result.record, "device": device, "dtype": dtype}
    out = save_artifact(model, out, family=family.name, recipe=recipe, calibration=calibration, scales=scales,
                        source={"model": str(model_spec), "directory": str(loaded.directory),
                                **({"tokenizer": str(tokenizer)} if tokenizer else {})},
                        extra_files=family.extra_files(loaded))
    return out, read_manifest(out)


def _absolute(spec: str | Path) -> str:
    """A local path made absolute; `default`, `default-heldout` and hub ids as given."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if str(spec) not in ("default", "default-heldout") and path.exists() else str(spec)


def evaluate(loaded: Loaded, data: str, seq_len: int, max_samples: int | None, batch_size: int = 8,
             on_batch: Progress | None = None) -> dict:
    """The family's quality measure on `data` (Mamba: bits/byte on the first `max_samples` windows of
    `seq_len` tokens; set models: MSE; keyword spotters: accuracy at every SNR)."""
    return loaded.family.evaluate(loaded, data, seq_len, max_samples, batch_size, on_batch)
