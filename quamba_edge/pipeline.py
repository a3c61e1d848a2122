"""The user's steps as library functions; the CLI and notebooks call these the same way."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from quamba_edge.artifact import MANIFEST, is_artifact, load_artifact, save_artifact
from quamba_edge.checkpoints import load_mamba, resolve_model_dir
from quamba_edge.data.text import Windows, load_windows
from quamba_edge.data.tokenizers import Tokenizer, tokenizer_for
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.evaluate import evaluate_lm
from quamba_edge.io import sha256_file
from quamba_edge.quant.calibrate import calibrate
from quamba_edge.quant.qset import quantize_set_model
from quamba_edge.quant.recipes import Recipe
from quamba_edge.sets import FAMILY as SET_FAMILY
from quamba_edge.sets import checkpoint_family, load_set_checkpoint, load_sets

SPEECH_FAMILY = "wav2vec2"

Progress = Callable[[int], None]


@dataclass
class LoadedModel:
    model: nn.Module
    label: str  # recipe label, e.g. "fp", "quamba"
    directory: Path
    manifest: dict | None = None

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """Looked up on first use: building an engine or timing one needs no tokenizer."""
        return tokenizer_for(self.directory, self.model.cfg.vocab_size)


def load_any(spec: str | Path) -> LoadedModel:
    """An artifact directory (has manifest.json) or a checkpoint (`default`, a directory, a hub id)."""
    looks_like_artifact = Path(spec).is_dir() and (is_artifact(Path(spec)) or (Path(spec) / MANIFEST).exists())
    if str(spec) != "default" and looks_like_artifact:  # a broken manifest gets read_manifest's error
        model, manifest = load_artifact(Path(spec))
        return LoadedModel(model, manifest["recipe_label"], Path(spec), manifest)
    model_dir = resolve_model_dir(spec)
    family = checkpoint_family(model_dir)
    if family == SET_FAMILY:
        return LoadedModel(load_set_checkpoint(model_dir), "fp", model_dir)
    if family == SPEECH_FAMILY:
        return LoadedModel(_load_kws(model_dir), "fp", model_dir)
    return LoadedModel(load_mamba(model_dir), "fp", model_dir)


def _load_kws(model_dir: Path):
    from quamba_edge.models.kws import is_kws_checkpoint, load_kws

    if not is_kws_checkpoint(model_dir):
        raise QuambaEdgeError(f"{model_dir} is a wav2vec2 encoder without a keyword-spotting head; calibrate, "
                              "build-engine and bench take the deployed model. Fix: fine-tune it first "
                              "(`python benchmarks/kws.py --encoder DIR`), and pass the KWS directory.")
    return load_kws(model_dir)


def batched(windows: torch.Tensor, batch_size: int):
    for start in range(0, len(windows), batch_size):
        yield windows[start : start + batch_size]


def _reporting(batches, on_batch: Progress | None, size: Callable):
    """The batches unchanged, calling on_batch(size(batch)) after each is used (a progress bar's advance)."""
    for batch in batches:
        yield batch
        if on_batch:
            on_batch(size(batch))


def run_calibrate(
    model_spec: str, recipe: Recipe, data: str, samples: int, seq_len: int, out: Path,
    batch_size: int = 8, on_batch: Progress | None = None,
) -> tuple[Path, dict]:
    """Load, calibrate on the first `samples` windows of `data`, write the artifact; returns its manifest."""
    model_dir = resolve_model_dir(model_spec)
    if checkpoint_family(model_dir) == SET_FAMILY:
        return _calibrate_sets(model_spec, model_dir, recipe, data, samples, out, batch_size, on_batch)
    if checkpoint_family(model_dir) == SPEECH_FAMILY:
        return _calibrate_speech(model_spec, model_dir, recipe, data, samples, out, batch_size, on_batch)
    model = load_mamba(model_dir)
    tok = tokenizer_for(model_dir, model.cfg.vocab_size)
    windows: Windows | None = None
    start = time.perf_counter()
    if recipe.quantize:
        windows = load_windows(data, tok, samples, seq_len)
        qmodel, calib = calibrate(model, batched(windows.tokens, batch_size), recipe, on_batch)
        scales = calib.scales
    else:
        qmodel, scales = model, None
    calibration = None if windows is None else {
        "data": str(data), "samples": samples, "seq_len": seq_len, "digest": windows.digest,
        "seconds": round(time.perf_counter() - start, 2),
    }
    extra = [model_dir / "tokenizer.json"] if (model_dir / "tokenizer.json").exists() else []
    out = save_artifact(
        qmodel, out, recipe=recipe, source={"model": str(model_spec), "directory": str(model_dir)},
        calibration=calibration, scales=scales, extra_files=extra,
    )
    return out, load_artifact(out)[1]


@torch.no_grad()
def _eval_sets(loaded: LoadedModel, data: str, max_samples: int | None, batch_size: int,
               on_batch: Progress | None) -> dict:
    if str(data).startswith("default"):
        raise QuambaEdgeError("set models are evaluated on sets: pass --data SETS.npz with arrays x and y.")
    sets = load_sets(data, loaded.model.cfg.d_in)
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


def set_recipe(recipe: Recipe) -> Recipe:
    """What a recipe means for a set model: fp stays fp; naive and quamba are static per-tensor W8A8 with
    abs-max scales (Quamba's percentile clip and Hadamard rotation belong to Mamba's SSM; recorded as naive)."""
    if not recipe.quantize:
        return recipe
    return Recipe("naive", percentile=None, hadamard=False, weight_granularity=recipe.weight_granularity,
                  int8_conv_features=recipe.int8_conv_features)


def _calibrate_sets(model_spec: str, model_dir: Path, recipe: Recipe, data: str, samples: int, out: Path,
                    batch_size: int, on_batch: Progress | None) -> tuple[Path, dict]:
    model = load_set_checkpoint(model_dir)
    recipe = set_recipe(recipe)
    calibration, scales, qmodel = None, None, model
    if recipe.quantize:
        if str(data) == "default":
            raise QuambaEdgeError("set models calibrate on sets: pass --data SETS.npz (arrays x (sets, n, d) and "
                                  "optionally mask (sets, n)).")
        sets = load_sets(data, model.cfg.d_in)
        start = time.perf_counter()
        batches = _reporting(sets.batches(batch_size, samples), on_batch, size=lambda b: len(b[0]))
        qmodel, amax = quantize_set_model(model, batches, recipe.weight_granularity)
        scales = [{"layer": name, "amax": a} for name, a in amax.items()]
        calibration = {"data": str(data), "samples": min(samples, len(sets.x)), "digest": sha256_file(Path(data)),
                       "seconds": round(time.perf_counter() - start, 2)}
    out = save_artifact(qmodel, out, recipe=recipe, source={"model": str(model_spec), "directory": str(model_dir)},
                        calibration=calibration, scales=scales)
    return out, load_artifact(out)[1]


def _calibrate_speech(model_spec: str, model_dir: Path, recipe: Recipe, data: str, samples: int, out: Path,
                      batch_size: int, on_batch: Progress | None) -> tuple[Path, dict]:
    """Static W8A8 of a keyword spotter's linear and conv layers, calibrated on synthetic speech only."""
    import hashlib

    from quamba_edge.data.speech_sets import calibration_windows
    from quamba_edge.quant.qspeech import quantize_speech_model

    model = _load_kws(model_dir)
    recipe = set_recipe(recipe)
    calibration, scales, qmodel = None, None, model
    if recipe.quantize:
        start = time.perf_counter()
        windows = torch.from_numpy(calibration_windows(data, samples, model.cfg.window_s))
        batches = _reporting(batched(windows, batch_size), on_batch, size=len)
        qmodel, amax = quantize_speech_model(model, batches, recipe.weight_granularity,
                                             conv_features=recipe.int8_conv_features)
        scales = [{"layer": name, "amax": a} for name, a in amax.items()]
        calibration = {"data": str(data), "samples": len(windows), "window_s": model.cfg.window_s,
                       "digest": hashlib.sha256(windows.numpy().tobytes()).hexdigest(),
                       "seconds": round(time.perf_counter() - start, 2)}
    out = save_artifact(qmodel, out, recipe=recipe, source={"model": str(model_spec), "directory": str(model_dir)},
                        calibration=calibration, scales=scales)
    return out, load_artifact(out)[1]


@torch.no_grad()
def _eval_speech(loaded: LoadedModel, data: str, max_samples: int | None, on_batch: Progress | None) -> dict:
    """Accuracy on the real recordings (`default`: every SNR of the test grid, 500 trials each)."""
    from quamba_edge.data.speech_sets import real_test_trials, snr_label
    from quamba_edge.train.kws import score

    if str(data) not in ("default", "default-heldout"):
        raise QuambaEdgeError("speech models are evaluated on the real recordings: pass --data default.")
    model = loaded.model
    rows = []
    for trials in real_test_trials(max_samples or 500, window_s=model.cfg.window_s, labels=model.cfg.labels):
        rows.append({"snr_db": snr_label(trials.snr_db), "noise": trials.noise, **score(model, trials)})
        if on_batch:
            on_batch(len(trials.labels))
    return {"recipe": loaded.label, "data": "asterisk-core-sounds-en-wav (real, one speaker)", "conditions": rows,
            "accuracy": sum(r["accuracy"] for r in rows) / len(rows)}


def run_eval(
    loaded: LoadedModel, data: str, seq_len: int, max_samples: int | None, batch_size: int = 8,
    on_batch: Progress | None = None,
) -> dict:
    """Bits/byte and next-token accuracy on the first `max_samples` windows of `data` (all if None).
    Set models: mean squared error against the set file's targets `y`."""
    from quamba_edge.data.text import read_text, take_windows

    if getattr(loaded.model, "family", "mamba") == SET_FAMILY:
        return _eval_sets(loaded, data, max_samples, batch_size, on_batch)
    if getattr(loaded.model, "family", "mamba") == SPEECH_FAMILY:
        return _eval_speech(loaded, data, max_samples, on_batch)

    ids = loaded.tokenizer.encode(read_text(data))
    available = max(len(ids) // seq_len, 1)  # none: take_windows says the data is shorter than one window
    windows = take_windows(ids, min(max_samples or available, available), seq_len, what=f"data at {data}",
                           option="--max-samples")
    result = evaluate_lm(loaded.model, windows.tokens, loaded.tokenizer.byte_lengths(), batch_size, on_batch)
    result.update({"recipe": loaded.label, "data": str(data), "seq_len": seq_len,
                   "samples": len(windows.tokens), "data_digest": windows.digest})
    return result
