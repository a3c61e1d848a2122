"""Where downloaded and generated files live. One git-ignored cache root, overridable for CI and tests."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = PACKAGE_DIR / "assets" / "default"
# The bundled models by the name a --model option takes (each trained by calib/train_default.py).
BUNDLED_MODELS: dict[str, Path] = {"default": DEFAULT_MODEL_DIR,
                                   "default-mamba2": PACKAGE_DIR / "assets" / "default-mamba2"}


def looks_like_hub_id(spec: str | Path) -> bool:
    """`org/name` that is not a path written relative to here, the root or home: a Hugging Face hub id."""
    text = str(spec)
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def cache_dir() -> Path:
    """`$QUAMBA_EDGE_CACHE`, else `~/.cache/quamba_edge` (the Makefile points it at `./.cache`)."""
    root = os.environ.get("QUAMBA_EDGE_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "quamba_edge"
    path.mkdir(parents=True, exist_ok=True)
    return path
