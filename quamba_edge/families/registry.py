"""The families, and the one place that decides which one a checkpoint, artifact or engine holds."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from quamba_edge.artifact import MANIFEST, load_weights, read_manifest
from quamba_edge.checkpoints.common import resolve_model_dir
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.families import adapool, mamba, mamba2, wav2vec2
from quamba_edge.families.base import Family, Loaded
from quamba_edge.quant import recipes

# Detection asks in this order: Mamba-2 before Mamba-1, whose layouts carry no family key either.
FAMILIES: dict[str, Family] = {f.name: f for f in (mamba2, mamba, wav2vec2, adapool)}


def public_shape(spec: str) -> Any | None:
    """The config of a public size named by `spec` (`mamba-2.8b`, `mamba2-2.7b`, ...: its shape alone, for
    estimates that need no weights), or None when no family has a public size of that name."""
    for family in FAMILIES.values():
        if spec in family.public_shapes:
            return copy.deepcopy(family.public_shapes[spec])
    return None


def by_name(name: str | None, where: str = "") -> Family:
    """The family a manifest or build.json names (files older than the family key hold Mamba)."""
    family = FAMILIES.get(name or "mamba")
    if family is None:
        raise QuambaEdgeError(f"{where} holds a {name!r} model; this quamba-edge reads {', '.join(FAMILIES)}. "
                              "Fix: use the quamba-edge version that wrote it.")
    return family


def load(spec: str | Path) -> Loaded:
    """An artifact directory (manifest.json) or a checkpoint (`default`, a directory, a hub id), loaded once."""
    path = Path(spec).expanduser()
    if str(spec) != "default" and (path / MANIFEST).exists():
        manifest = read_manifest(path)  # a broken manifest gets its own error
        family = by_name(manifest.get("family"), str(path))
        recipe = recipes.from_dict(manifest["recipe"])
        cfg = family.config(manifest["model_config"])
        model = load_weights(lambda: family.structure(cfg, recipe, manifest), path, manifest)
        return Loaded(family, model.eval(), recipe, path.resolve(), manifest)
    if (path / "build.json").exists():
        source = json.loads((path / "build.json").read_text()).get("source", "the artifact it was built from")
        raise QuambaEdgeError(f"{path} is an engine (build-engine's output); this command takes a checkpoint or an "
                              f"artifact. Fix: pass {source} (what it was built from), or bench the engine.")
    directory = resolve_model_dir(spec).resolve()
    for family in FAMILIES.values():  # every family checks its own layout; Mamba's has no family key
        if family.detect(directory):
            return Loaded(family, family.load_checkpoint(directory).eval(), recipes.Fp(), directory)
    raise QuambaEdgeError(f"{directory} holds no checkpoint quamba-edge knows (no config.json of Mamba, Mamba-2, a "
                          "keyword spotter or a set model). Fix: pass a checkpoint directory, an artifact or `default`."
                          )
