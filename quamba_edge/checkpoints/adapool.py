"""Set-model (AdaPool family) checkpoints: a directory with `config.json`
(`{"family": "adapool", "model_config": {...}}`) and `model.safetensors`."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from quamba_edge.checkpoints.common import checkpoint_family, read_safetensors
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write_json, staged_dir
from quamba_edge.models.adapool import SetModel, SetModelConfig

FAMILY = "adapool"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


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
    state = read_safetensors(path / WEIGHTS, "Fix: save the checkpoint again with save_set_checkpoint.")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise QuambaEdgeError(f"{path / WEIGHTS} does not match its config.json (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}). Fix: save the checkpoint again with save_set_checkpoint.")
    return model.eval()
