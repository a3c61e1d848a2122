"""Set models (AdaPool family) on disk: checkpoints and set data.

A checkpoint is a directory with `config.json` (`{"family": "adapool", "model_config": {...}}`) and
`model.safetensors`. Set data is an `.npz` file with `x` (sets, n, d) float and, optionally, `mask`
(sets, n) bool (True where an element is real) and `y` (sets, d_out) targets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write, atomic_write_json, staged_dir
from quamba_edge.models.adapool import SetModel, SetModelConfig, check_sets

FAMILY = "adapool"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def checkpoint_family(path: Path) -> str | None:
    """"adapool" for a set-model checkpoint directory, else None (Mamba checkpoints have no family key)."""
    try:
        config = json.loads((Path(path) / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return config.get("family") if isinstance(config, dict) else None


def save_set_checkpoint(model: SetModel, out_dir: Path, extra: dict | None = None) -> Path:
    out_dir = Path(out_dir).resolve()
    with staged_dir(out_dir, ours=lambda d: checkpoint_family(d) == FAMILY, what="a set-model checkpoint") as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
        atomic_write_json(tmp / CONFIG, {"family": FAMILY, "model_config": model.cfg.to_dict(), **(extra or {})})
    return out_dir


def config_from_dict(values: dict) -> SetModelConfig:
    try:
        return SetModelConfig(**values)
    except TypeError as exc:
        raise QuambaEdgeError(f"the set-model config does not match this quamba-edge ({exc}).") from exc


def load_set_checkpoint(path: Path) -> SetModel:
    path = Path(path)
    config = json.loads((path / CONFIG).read_text())
    model = SetModel(config_from_dict(config["model_config"]))
    try:
        state = load_file(str(path / WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise QuambaEdgeError(f"{path / WEIGHTS} is missing or not a safetensors file ({exc}).") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise QuambaEdgeError(f"{path / WEIGHTS} does not match its config.json (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}). Fix: save the checkpoint again with save_set_checkpoint.")
    return model.eval()


@dataclass
class SetData:
    x: torch.Tensor
    mask: torch.Tensor | None
    y: torch.Tensor | None

    def batches(self, batch_size: int, limit: int | None = None):
        n = len(self.x) if limit is None else min(limit, len(self.x))
        for i in range(0, n, batch_size):
            j = min(i + batch_size, n)
            yield self.x[i:j], None if self.mask is None else self.mask[i:j]


def load_sets(path: str | Path, d_in: int) -> SetData:
    """Read and check a set file: wrong shapes, NaN, empty sets are errors that say what to fix."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        raise QuambaEdgeError(f"set data must be an .npz file with arrays x (sets, n, d) [mask, y]; got {path}. "
                              "Fix: np.savez(path, x=..., mask=..., y=...).")
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise QuambaEdgeError(f"{path} is not a readable .npz file ({exc}).") from exc
    if "x" not in arrays:
        raise QuambaEdgeError(f"{path} has no array named x (it has {sorted(arrays)}).")
    x = torch.from_numpy(np.asarray(arrays["x"], dtype=np.float32))
    mask = torch.from_numpy(np.asarray(arrays["mask"], dtype=bool)) if "mask" in arrays else None
    check_sets(x, mask, d_in)
    y = torch.from_numpy(np.asarray(arrays["y"], dtype=np.float32)) if "y" in arrays else None
    if y is not None and len(y) != len(x):
        raise QuambaEdgeError(f"{path}: y has {len(y)} rows for {len(x)} sets.")
    return SetData(x, mask, y)


def save_sets(path: Path, x: np.ndarray, mask: np.ndarray | None = None, y: np.ndarray | None = None) -> None:
    arrays = {"x": x} | ({"mask": mask} if mask is not None else {}) | ({"y": y} if y is not None else {})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(Path(path), write)
