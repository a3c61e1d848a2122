"""Set data for set models (AdaPool family): an `.npz` file with `x` (sets, n, d) float and, optionally,
`mask` (sets, n) bool (True where an element is real) and `y` (sets, d_out) targets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write
from quamba_edge.models.adapool import check_sets


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
