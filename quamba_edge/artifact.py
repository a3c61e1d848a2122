"""Quantized-model artifacts: a directory with `manifest.json` and `weights.safetensors` (past SHARD_BYTES, the
weights go in shards `weights-00001-of-0000N.safetensors`, which the manifest lists under `weights`).

The manifest records everything needed to trust and rebuild the model: format and toolkit version,
the model family and config, the recipe, the calibration data digest, every scale, and the sha256 of
every file. The directory is written under a temporary name and renamed into place, so a crash never
leaves a half-written artifact; loading re-hashes every file and refuses any mismatch.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from quamba_edge import __version__
from quamba_edge.checkpoints.common import adopt, on_meta
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write_json, sha256_file, staged_dir
from quamba_edge.mapped import map_safetensors
from quamba_edge.quant import recipes
from quamba_edge.quant.recipes import Recipe

FORMAT_VERSION = 3  # v2: the recipe is a typed config ({"kind": ..., fields}); v3: `weights` lists the shards
READS = (2, 3)  # a v2 artifact is a v3 one with its weights in one file
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
SHARD_BYTES = 2 << 30  # under FAT32's 4 GiB file limit (SD cards) and the hub's 5 GB


def is_artifact(path: Path) -> bool:
    """A directory whose manifest parses and names a format and a model family (checksums are not checked)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"format_version", "family"} <= manifest.keys()


def tied_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters that are another parameter (the lm_head tied to the embedding): stored once."""
    every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return every - {n for n, _ in model.named_parameters()}


def _weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    tied = tied_names(model)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}


def weight_files(manifest: dict) -> list[str]:
    """The artifact's weight files, in order (v2: the one `weights.safetensors`)."""
    return list(manifest.get("weights") or [WEIGHTS])


def load_weights(structure: Callable[[], torch.nn.Module], path: Path, manifest: dict) -> torch.nn.Module:
    """The family's model (`structure()`, built on the meta device) holding the artifact's weights, memory-mapped
    from its safetensors files (checkpoints.common.adopt); a tied parameter comes along with the one it is, and
    the names in the model's `superseded_weights` (what older artifacts of it hold and nothing reads now) are
    skipped. Any other missing or unexpected name is a QuambaEdgeError."""
    state: dict[str, torch.Tensor] = {}
    for name in weight_files(manifest):
        state.update(map_safetensors(Path(path) / name))
    with on_meta():
        empty = structure()
    for name in getattr(empty, "superseded_weights", ()):
        state.pop(name, None)
    expected = empty.state_dict()
    missing = sorted(set(expected) - set(state) - tied_names(empty))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise QuambaEdgeError(f"the weights in {path} do not match its manifest's model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}). Fix: re-run "
                              "`quamba-edge calibrate`.")
    return adopt(empty, state)


def _write_weights(state: dict[str, torch.Tensor], directory: Path) -> list[str]:
    """`state` as one safetensors file, or as shards of at most SHARD_BYTES (a larger tensor alone in one)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    names = [WEIGHTS] if len(shards) == 1 else [f"weights-{i:05d}-of-{len(shards):05d}.safetensors"
                                                 for i in range(1, len(shards) + 1)]
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(directory / name), metadata={"format": "pt"})
    return names


def save_artifact(
    model: torch.nn.Module, out_dir: Path, *, family: str, recipe: Recipe, source: dict,
    calibration: dict | None = None, scales: list[dict[str, float]] | None = None,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write the artifact to `out_dir` atomically; an existing artifact there is replaced. `model.cfg` must
    have `to_dict()`; `family` is the registry's name for it."""
    out_dir = Path(out_dir).resolve()
    with staged_dir(out_dir, ours=is_artifact, what="a quamba-edge artifact") as tmp:
        weights = _write_weights(_weights_of(model), tmp)
        for name, original in (extra_files or {}).items():  # e.g. {"tokenizer.json": the tokenizer used}
            shutil.copy(original, tmp / name)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        manifest = {
            "format_version": FORMAT_VERSION,
            "toolkit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "family": family,
            "model_config": model.cfg.to_dict(),
            "source": source,
            "recipe": recipes.to_dict(recipe),
            "recipe_label": recipe.label,
            "calibration": calibration,
            "scales": scales,
            "weights": weights,
            "files": files,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return out_dir


def rebuild_command(manifest: dict, path: Path) -> str:
    """The `quamba-edge calibrate` command that writes this artifact again, from what its manifest recorded:
    the source, the calibration data and the recipe's fields (v1's untyped recipe and v2's typed one both
    carry them; a v1 recipe names itself by `name`, a v2 one by `kind`)."""
    source = (manifest.get("source") or {}).get("model", "MODEL")
    recipe = manifest.get("recipe") or {}
    quantize = recipe.get("kind", recipe.get("name")) != "fp" and recipe.get("quantize", True)
    rotated = recipe.get("hadamard", False)
    percentile = recipe.get("percentile")
    name = "fp" if not quantize else ("quamba" if rotated or percentile is not None else "naive")
    calibration = manifest.get("calibration") or {}
    args = [f"--model {source}", f"--recipe {name}"]
    args += [f"--{k.replace('_', '-')} {calibration[k]}" for k in ("data", "samples", "seq_len") if k in calibration]
    if name == "quamba":
        args += [] if rotated else ["--no-hadamard"]
        if percentile is None:
            args.append("--no-percentile")
        elif percentile != recipes.DEFAULT_PERCENTILE:
            args.append(f"--percentile {percentile}")
    args += [flag for flag, on in (("--weight-granularity channel", recipe.get("weight_granularity") == "channel"),
                                   ("--int8-head", recipe.get("int8_head")),
                                   ("--int8-conv-features", recipe.get("int8_conv_features"))) if on]
    return f"quamba-edge calibrate {' '.join(args)} --out {path}"


def read_manifest(path: Path) -> dict:
    """Parse and verify: format version, then the sha256 of every listed file."""
    path = Path(path)
    if not path.exists():
        raise QuambaEdgeError(f"no such artifact directory: {path}. Fix: run `quamba-edge calibrate --out {path}`.")
    if not is_artifact(path):
        raise QuambaEdgeError(f"{path} has no {MANIFEST}, so it is not a quamba-edge artifact.")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except json.JSONDecodeError as exc:
        raise QuambaEdgeError(f"{path / MANIFEST} is not valid JSON ({exc}); re-run `quamba-edge calibrate`.") from exc
    version = manifest.get("format_version")
    if version not in READS:
        raise QuambaEdgeError(
            f"{path} is artifact format v{version} (written by quamba-edge {manifest.get('toolkit_version')}); "
            f"this quamba-edge {__version__} reads v{READS[0]}-v{READS[-1]}. Fix: rebuild it with this version: "
            f"`{rebuild_command(manifest, path)}` (or install the version that wrote it)."
        )
    files = manifest.get("files") or {}
    unlisted = [name for name in weight_files(manifest) if name not in files]
    if unlisted or MANIFEST in files:
        raise QuambaEdgeError(
            f"{path / MANIFEST} does not list {', '.join(unlisted) or MANIFEST} among its checksummed files, so "
            "its weights cannot be trusted. Fix: re-run `quamba-edge calibrate`."
        )
    for name, expected in files.items():
        f = path / name
        if not f.exists():
            raise QuambaEdgeError(f"{path} is missing {name}. Fix: re-run `quamba-edge calibrate`.")
        got = sha256_file(f)
        if got != expected:
            raise QuambaEdgeError(
                f"{f} has sha256 {got[:16]}..., the manifest says {expected[:16]}...: the file was changed or "
                "corrupted after it was written. Fix: re-run `quamba-edge calibrate` (or copy the artifact again)."
            )
    return manifest
