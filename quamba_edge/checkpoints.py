"""Load Mamba checkpoints from the layouts people actually have; write safetensors.

Layouts understood (a directory with `config.json` and weights):
- mamba-ssm (`state-spaces/mamba-*`): config with `d_model`, `n_layer`, `ssm_cfg`; `pytorch_model.bin`
  (loaded with `weights_only=True`) or `model.safetensors`.
- Hugging Face transformers (`MambaForCausalLM`): config with `hidden_size`, `state_size`, ...;
  `model.safetensors` (or sharded with an index); parameter `backbone.embeddings.weight`.
A hub id (`org/name`) is fetched with huggingface_hub first; `default` is the bundled model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write, atomic_write_json
from quamba_edge.models.mamba import MambaConfig, MambaLM
from quamba_edge.paths import DEFAULT_MODEL_DIR

WEIGHT_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model.bin",
                   "tokenizer.json", "tokenizer_config.json"]


def resolve_model_dir(spec: str | Path) -> Path:
    """`default`, a local directory, or a hub id -> a local directory holding the checkpoint."""
    spec_str = str(spec)
    if spec_str == "default":
        if not (DEFAULT_MODEL_DIR / "config.json").exists():
            raise QuambaEdgeError(
                f"the bundled default model is missing from {DEFAULT_MODEL_DIR}. "
                "Fix: reinstall quamba-edge, or train it with `python calib/train_default.py`."
            )
        return DEFAULT_MODEL_DIR
    path = Path(spec_str).expanduser()
    if path.exists():
        if not path.is_dir():
            raise QuambaEdgeError(f"{path} is a file; pass the checkpoint directory that contains config.json.")
        return path
    looks_like_hub_id = spec_str.count("/") == 1 and not spec_str.startswith((".", "/", "~"))
    if not looks_like_hub_id:
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


def _read_config(model_dir: Path) -> dict:
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise QuambaEdgeError(
            f"{model_dir} has no config.json, so it is not a checkpoint layout quamba-edge knows. "
            "Expected a mamba-ssm or Hugging Face Mamba directory (config.json + weights)."
        )
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise QuambaEdgeError(f"{cfg_path} is not valid JSON ({exc}).") from exc


UNSUPPORTED_HF_TYPES = {"mamba2": "Mamba-2", "falcon_mamba": "Falcon-Mamba (extra RMSNorms on B, C and dt)",
                        "jamba": "Jamba (hybrid attention)", "zamba": "Zamba (hybrid attention)"}


def detect_layout(raw: dict) -> str:
    if "d_model" in raw and "n_layer" in raw:
        return "mamba-ssm"
    model_type = raw.get("model_type")
    if model_type in UNSUPPORTED_HF_TYPES:
        raise QuambaEdgeError(
            f"this is a {UNSUPPORTED_HF_TYPES[model_type]} checkpoint (model_type={model_type!r}); quamba-edge "
            "quantizes Mamba-1 (model_type='mamba') only."
        )
    if model_type == "mamba" or (model_type is None and {"hidden_size", "state_size"} <= raw.keys()):
        return "hf"
    raise QuambaEdgeError(
        "config.json matches no known Mamba layout: expected mamba-ssm keys (d_model, n_layer, ssm_cfg) "
        f"or Hugging Face keys (model_type='mamba', hidden_size, state_size); found {sorted(raw)[:12]}."
    )


def config_from_raw(raw: dict) -> MambaConfig:
    layout = detect_layout(raw)
    if layout == "mamba-ssm":
        ssm = raw.get("ssm_cfg") or {}
        if ssm.get("layer", "Mamba1") not in ("Mamba1",):
            raise QuambaEdgeError(f"only Mamba-1 checkpoints are supported; this one is {ssm['layer']}.")
        pad = raw.get("pad_vocab_size_multiple", 8)
        vocab = raw["vocab_size"]
        vocab = int(math.ceil(vocab / pad) * pad)
        dt_rank = ssm.get("dt_rank", "auto")
        return MambaConfig(
            d_model=raw["d_model"], n_layer=raw["n_layer"], vocab_size=vocab,
            d_state=ssm.get("d_state", 16), d_conv=ssm.get("d_conv", 4), expand=ssm.get("expand", 2),
            dt_rank=0 if dt_rank == "auto" else int(dt_rank), norm_eps=raw.get("norm_epsilon", 1e-5),
            conv_bias=ssm.get("conv_bias", True), proj_bias=ssm.get("bias", False),
        )
    return MambaConfig(
        d_model=raw["hidden_size"], n_layer=raw["num_hidden_layers"], vocab_size=raw["vocab_size"],
        d_state=raw.get("state_size", 16), d_conv=raw.get("conv_kernel", 4), expand=raw.get("expand", 2),
        dt_rank=int(raw.get("time_step_rank", 0)) if raw.get("time_step_rank", "auto") != "auto" else 0,
        norm_eps=raw.get("layer_norm_epsilon", 1e-5), conv_bias=raw.get("use_conv_bias", True),
        proj_bias=raw.get("use_bias", False),
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise QuambaEdgeError(
            f"{path} is corrupt or truncated ({exc}). Fix: download or copy the checkpoint again."
        ) from exc


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(_load_safetensors(model_dir / name))
        return state
    if (model_dir / "model.safetensors").exists():
        return _load_safetensors(model_dir / "model.safetensors")
    if (model_dir / "pytorch_model.bin").exists():
        try:
            return torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as exc:
            raise QuambaEdgeError(
                f"{model_dir / 'pytorch_model.bin'} could not be loaded safely ({type(exc).__name__}: "
                f"{str(exc)[:200]}). It may be corrupt, or pickle more than tensors; re-save it as safetensors."
            ) from exc
    raise QuambaEdgeError(
        f"{model_dir} has config.json but no weights (model.safetensors or pytorch_model.bin)."
    )


def _canonical_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face names the embedding `embeddings`; everything else matches mamba-ssm."""
    out = {}
    for key, value in state.items():
        key = key.replace("backbone.embeddings.", "backbone.embedding.")
        out[key] = value
    return out


def _require_tied_head(raw: dict, state: dict[str, torch.Tensor], model_dir: Path) -> None:
    """Our models share one matrix for the embedding and the lm_head; a separate head would be dropped."""
    untied_flag = raw.get("tie_embeddings", raw.get("tie_word_embeddings", True)) is False
    head, emb = state.get("lm_head.weight"), state.get("backbone.embedding.weight")
    differs = head is not None and emb is not None and (head.shape != emb.shape or not torch.equal(head, emb))
    if untied_flag or differs:
        raise QuambaEdgeError(
            f"{model_dir} has an lm_head separate from its embedding; quamba-edge supports tied heads only "
            "(every public Mamba-1 checkpoint ties them). Loading it would silently replace the head."
        )


def load_mamba(spec: str | Path, dtype: torch.dtype = torch.float32) -> MambaLM:
    """Load a Mamba-1 LM from `default`, a local directory or a hub id, checking every tensor's shape."""
    model_dir = resolve_model_dir(spec)
    raw = _read_config(model_dir)
    cfg = config_from_raw(raw)
    state = _canonical_keys(load_state_dict(model_dir))
    _require_tied_head(raw, state, model_dir)
    model = MambaLM(cfg)
    expected = model.state_dict()
    state.setdefault("lm_head.weight", state.get("backbone.embedding.weight"))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k] is not None and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        detail = "; ".join(
            f"{label}: {keys[:4]}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if keys
        )
        raise QuambaEdgeError(f"the weights in {model_dir} do not match its config.json ({detail}).")
    model.load_state_dict(state)
    return model.to(dtype).eval()


def mamba_ssm_config(cfg: MambaConfig) -> dict:
    """config.json in the mamba-ssm layout (the layout of the bundled model)."""
    return {
        "d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
        "ssm_cfg": {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand,
                    "dt_rank": cfg.dt_rank or "auto", "conv_bias": cfg.conv_bias, "bias": cfg.proj_bias},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": False,
        "pad_vocab_size_multiple": 1, "tie_embeddings": True, "norm_epsilon": cfg.norm_eps,
    }


def save_checkpoint(model: MambaLM, out_dir: Path, extra: dict | None = None) -> None:
    """Write config.json + model.safetensors (mamba-ssm names, lm_head omitted: it is tied)."""
    out_dir = Path(out_dir)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    atomic_write(out_dir / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    atomic_write_json(out_dir / "config.json", mamba_ssm_config(model.cfg))
    for name, payload in (extra or {}).items():
        atomic_write_json(out_dir / f"{name}.json", payload)
