"""Checkpoint plumbing every family shares: where a checkpoint is, what its config.json says, its weights.

A checkpoint spec is `default` (the bundled model), a local directory, or a hub id (`org/name`, fetched
with huggingface_hub). Weights are read from `model.safetensors`, a sharded safetensors index, or
`pytorch_model.bin` (loaded with `weights_only=True`, so a pickle cannot run code). Which layouts each
family understands lives in its own module: mamba.py, wav2vec2.py, adapool.py.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.paths import BUNDLED_MODELS, looks_like_hub_id

WEIGHT_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model.bin",
                   "tokenizer.json", "tokenizer_config.json"]
CONFIG_FILE = "config.json"
# Keys a converter may add to any config.json; they describe the file, not the model.
METADATA_FIELDS = {"architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path"}


def resolve_model_dir(spec: str | Path) -> Path:
    """`default` or `default-mamba2` (the bundled models), a local directory, or a hub id -> a local directory
    holding the checkpoint."""
    spec_str = str(spec)
    if spec_str in BUNDLED_MODELS and not Path(spec_str).exists():
        directory = BUNDLED_MODELS[spec_str]
        if not (directory / "config.json").exists():
            arch = " --arch mamba2" if spec_str == "default-mamba2" else ""
            raise QuambaEdgeError(
                f"the bundled model {spec_str!r} is missing from {directory}. "
                f"Fix: reinstall quamba-edge, or train it with `python calib/train_default.py{arch} --out {directory}`."
            )
        return directory
    path = Path(spec_str).expanduser()
    if path.exists():
        if not path.is_dir():
            raise QuambaEdgeError(f"{path} is a file; pass the checkpoint directory that contains config.json.")
        return path
    if not looks_like_hub_id(spec_str):
        raise QuambaEdgeError(f"no such checkpoint directory: {path}. Fix: check the path, or pass `default`.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec_str, allow_patterns=WEIGHT_PATTERNS))
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        raise QuambaEdgeError(
            f"{spec_str!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc)[:200]}). Fix: download it on a connected machine "
            "(`huggingface-cli download ORG/NAME --local-dir DIR`) and pass DIR."
        ) from exc


def read_config(model_dir: Path, expected: str) -> dict:
    """model_dir/config.json as parsed JSON; `expected` names the layouts the caller knows (for the error)."""
    cfg_path = model_dir / CONFIG_FILE
    if not cfg_path.exists():
        raise QuambaEdgeError(
            f"{model_dir} has no config.json, so it is not a checkpoint layout quamba-edge knows. "
            f"Expected {expected}."
        )
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise QuambaEdgeError(f"{cfg_path} is not valid JSON ({exc}).") from exc


def checkpoint_family(path: Path) -> str | None:
    """The `family` key of a checkpoint directory's config.json ("adapool", "wav2vec2"), else None
    (Mamba checkpoints, in the mamba-ssm or Hugging Face layout, have no family key)."""
    try:
        config = json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return config.get("family") if isinstance(config, dict) else None


def read_safetensors(path: Path, fix: str = "Fix: download or copy the checkpoint again.") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a corrupt or truncated file is a QuambaEdgeError ending in `fix`."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise QuambaEdgeError(f"{path} is corrupt or truncated ({exc}). {fix}") from exc


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of a Hugging Face style directory: sharded safetensors, model.safetensors, or
    pytorch_model.bin (tensors only)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(read_safetensors(model_dir / name))
        return state
    if (model_dir / "model.safetensors").exists():
        return read_safetensors(model_dir / "model.safetensors")
    if (model_dir / "pytorch_model.bin").exists():
        try:
            return torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise QuambaEdgeError(
                f"{model_dir / 'pytorch_model.bin'} could not be loaded safely ({type(exc).__name__}: "
                f"{str(exc)[:200]}). It may be corrupt, or pickle more than tensors; re-save it as safetensors."
            ) from exc
    raise QuambaEdgeError(
        f"{model_dir} has config.json but no weights (model.safetensors or pytorch_model.bin)."
    )


INITIALISERS = ("normal_", "uniform_", "trunc_normal_", "constant_", "zeros_", "ones_", "kaiming_uniform_",
                 "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_")


@contextlib.contextmanager
def on_meta():
    """Build modules on the meta device (names and shapes, no memory) with torch.nn.init's initialisers turned off
    (as transformers' no_init_weights does): on meta tensors they run through torch's Python reference ops, which
    import torch._dynamo and sympy (about 80 MB resident and a second per process) to fill values adopt()
    replaces anyway."""
    saved = {name: getattr(nn.init, name) for name in INITIALISERS}
    try:
        for name in INITIALISERS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def adopt(model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> nn.Module:
    """`model`, built on the meta device (`with torch.device("meta"):`), given `state`'s tensors as its own
    (load_state_dict with assign=True): no random initialisation and no second copy of the weights. Tensors
    read by safetensors stay memory-mapped (copy-on-write) until written, so an fp32 checkpoint calibrated in
    fp32 costs page cache, not anonymous memory. Floating tensors are cast to `dtype` one at a time (peak: the
    model in `dtype` plus one tensor). Tied parameters stay tied. The caller checks names and shapes first; a
    tensor `state` lacks is a ValueError (it would stay on the meta device)."""
    canonical: dict[int, str] = {}
    ties = {}  # alias name -> the name of the parameter it is
    for name, param in model.named_parameters(remove_duplicate=False):
        ties.update({name: canonical[id(param)]} if id(param) in canonical else {})
        canonical.setdefault(id(param), name)
    for name in list(state):
        if name in ties:
            del state[name]
        elif dtype is not None and state[name].is_floating_point():
            state[name] = state[name].to(dtype)
    model.load_state_dict(state, strict=False, assign=True)
    for alias, name in ties.items():
        owner, _, attr = alias.rpartition(".")
        setattr(model.get_submodule(owner), attr, model.get_parameter(name))
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"no tensor given for {left[:4]}")
    return model


# ------------------------------------------------- config.json fields, checked (errors name the field)

# mamba-ssm's MambaConfig, the top level (mamba_ssm/models/config_mamba.py), shared by the Mamba-1 and Mamba-2
# checkpoints: what each field does here ("honoured", "refused" unless our block's value, "ignored": no arithmetic).
MAMBA_SSM_FIELDS: dict[str, str] = {
    "d_model": "honoured", "n_layer": "honoured", "vocab_size": "honoured (padded up to pad_vocab_size_multiple)",
    "pad_vocab_size_multiple": "honoured", "tie_embeddings": "honoured", "norm_epsilon": "honoured",
    "rms_norm": "refused unless true (false = LayerNorm with bias)",
    "d_intermediate": "refused unless 0 (an MLP after every mixer)",
    "attn_layer_idx": "refused unless empty (hybrid attention layers)", "attn_cfg": "ignored (attention layers only)",
    "residual_in_fp32": "ignored (the residual stream is fp32 here anyway)",
    "fused_add_norm": "ignored (a fused kernel of the same arithmetic)",
    "ssm_cfg": "read field by field below; an unknown key is refused",
}


def check_mamba_ssm_fields(raw: dict, refuse, mixer: str) -> None:
    """The top level of a mamba-ssm config.json: no unknown field, an RMSNorm block without MLP or attention layers.
    `refuse(field, value, why)` makes the family's error (naming its fix); `mixer`: "Mamba" or "Mamba-2"."""
    unknown = sorted(set(raw) - set(MAMBA_SSM_FIELDS) - METADATA_FIELDS)
    if unknown:
        raise QuambaEdgeError(f"config.json has fields mamba-ssm's MambaConfig does not have: {unknown}. "
                              "Fix: remove them if they are not part of the model, or use the layout that "
                              "defines them.")
    if raw.get("rms_norm", True) is not True:
        raise refuse("rms_norm", raw["rms_norm"], "LayerNorm blocks (with bias) instead of RMSNorm")
    if raw.get("d_intermediate", 0) not in (0, None):
        raise refuse("d_intermediate", raw["d_intermediate"], "an MLP after every mixer")
    if raw.get("attn_layer_idx"):
        raise refuse("attn_layer_idx", raw["attn_layer_idx"], f"attention layers among the {mixer} layers")


def config_int(raw: dict, field: str, default: int | None = None, label: str | None = None) -> int:
    """raw[field] (or `default`) as a positive integer; QuambaEdgeError naming `label or field` otherwise."""
    value = raw.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise QuambaEdgeError(f"config.json has `{label or field}: {json.dumps(value)}`; it must be a positive "
                              "integer. Fix: correct config.json (the weights' shapes tell the value).")
    return value


def config_flag(raw: dict, field: str, default: bool, label: str | None = None) -> bool:
    """raw[field] (or `default`) as a bool; QuambaEdgeError naming `label or field` otherwise."""
    value = raw.get(field, default)
    if not isinstance(value, bool):
        raise QuambaEdgeError(f"config.json has `{label or field}: {json.dumps(value)}`; it must be true or false.")
    return value


def config_eps(raw: dict, field: str) -> float:
    """raw[field] (default 1e-5) as a norm epsilon in (0, 1); QuambaEdgeError naming the field otherwise."""
    value = raw.get(field, 1e-5)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise QuambaEdgeError(f"config.json has `{field}: {json.dumps(value)}`; it must be a small positive number.")
    return float(value)
