"""Mamba-1 checkpoints in the layouts people actually have; written back as safetensors.

Layouts understood (a directory with `config.json` and weights):
- mamba-ssm (`state-spaces/mamba-*`): config with `d_model`, `n_layer`, `ssm_cfg`; `pytorch_model.bin`
  (loaded with `weights_only=True`) or `model.safetensors`.
- Hugging Face transformers (`MambaForCausalLM`): config with `hidden_size`, `state_size`, ...;
  `model.safetensors` (or sharded with an index); parameter `backbone.embeddings.weight`.
Where the directory comes from (`default`, a path, a hub id) and how weights are read: common.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from quamba_edge.checkpoints import common
from quamba_edge.checkpoints.common import (
    adopt,
    config_eps,
    config_flag,
    config_int,
    load_state_dict,
    on_meta,
    read_config,
    resolve_model_dir,
)
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write, atomic_write_json
from quamba_edge.models.mamba import MambaConfig, MambaLM

LAYOUTS = "a mamba-ssm or Hugging Face Mamba directory (config.json + weights)"


UNSUPPORTED_HF_TYPES = {"mamba2": "Mamba-2", "falcon_mamba": "Falcon-Mamba (extra RMSNorms on B, C and dt)",
                        "jamba": "Jamba (hybrid attention)", "zamba": "Zamba (hybrid attention)"}


def detect_layout(raw: dict) -> str:
    if "d_model" in raw and "n_layer" in raw:
        return "mamba-ssm"
    model_type = raw.get("model_type")
    if model_type in UNSUPPORTED_HF_TYPES:
        raise QuambaEdgeError(
            f"this is a {UNSUPPORTED_HF_TYPES[model_type]} checkpoint (model_type={model_type!r}); this loader reads "
            "Mamba-1 (model_type='mamba'). quamba-edge commands load Mamba-2 through checkpoints/mamba2.py; the "
            "other architectures are not implemented."
        )
    if model_type == "mamba" or (model_type is None and {"hidden_size", "state_size"} <= raw.keys()):
        return "hf"
    raise QuambaEdgeError(
        "config.json matches no known Mamba layout: expected mamba-ssm keys (d_model, n_layer, ssm_cfg) "
        f"or Hugging Face keys (model_type='mamba', hidden_size, state_size); found {sorted(raw)[:12]}."
    )


# What each config field does here. "honoured": read into MambaConfig; "refused": any value other than the
# one that matches our model is an error naming the field; "ignored": it changes no inference arithmetic
# (initialisation, kernels, caching, token ids, or a precision we exceed by computing in fp32).
# mamba-ssm: MambaConfig (mamba_ssm/models/config_mamba.py) and the Mamba-1 mixer's arguments (ssm_cfg).
MAMBA_SSM_FIELDS: dict[str, str] = {
    **common.MAMBA_SSM_FIELDS,
    "tie_embeddings": "honoured: false, or a head unequal to the embedding, is refused",
    "norm_epsilon": "honoured (ours; mamba-ssm fixes 1e-5)",
}
MAMBA_SSM_SSM_CFG_FIELDS: dict[str, str] = {
    "layer": "refused unless Mamba1", "d_state": "honoured", "d_conv": "honoured",
    "expand": "honoured: d_inner = int(expand * d_model), any positive number",
    "dt_rank": "honoured ('auto' = ceil(d_model / 16))", "conv_bias": "honoured", "bias": "honoured",
    "dt_min": "ignored (init)", "dt_max": "ignored (init)", "dt_init": "ignored (init)",
    "dt_scale": "ignored (init)", "dt_init_floor": "ignored (init)", "use_fast_path": "ignored (kernel choice)",
    "layer_idx": "ignored (cache bookkeeping)",
}
# transformers' MambaConfig (models/mamba/configuration_mamba.py). Unknown keys are not refused here: every
# PretrainedConfig carries generic ones (output_hidden_states, id2label, ...).
HF_MAMBA_FIELDS: dict[str, str] = {
    "vocab_size": "honoured", "hidden_size": "honoured", "state_size": "honoured", "num_hidden_layers": "honoured",
    "layer_norm_epsilon": "honoured", "expand": "honoured: intermediate_size = int(expand * hidden_size)",
    "intermediate_size": "refused if it disagrees with int(expand * hidden_size) (transformers recomputes it)",
    "conv_kernel": "honoured", "use_bias": "honoured", "use_conv_bias": "honoured",
    "hidden_act": "refused unless silu", "time_step_rank": "honoured ('auto' = ceil(hidden_size / 16))",
    "tie_word_embeddings": "honoured: false is refused",
    "residual_in_fp32": "ignored (the residual stream is fp32 here anyway)",
    "time_step_scale": "ignored (init)", "time_step_min": "ignored (init)", "time_step_max": "ignored (init)",
    "time_step_init_scheme": "ignored (init)", "time_step_floor": "ignored (init)",
    "rescale_prenorm_residual": "ignored (init)", "initializer_range": "ignored (init)",
    "use_cache": "ignored (generation API)", "use_mambapy": "ignored (kernel choice)",
    "use_associative_scan": "ignored (kernel choice)", "pad_token_id": "ignored (token ids)",
    "bos_token_id": "ignored (token ids)", "eos_token_id": "ignored (token ids)",
}


def _refuse(field: str, value: object, why: str) -> QuambaEdgeError:
    return QuambaEdgeError(f"config.json has `{field}: {json.dumps(value)}`: {why}, which quamba-edge does not "
                           "implement. Fix: use a Mamba-1 checkpoint with the standard block (RMSNorm, SiLU, no MLP, "
                           "no attention), as every state-spaces/mamba-* checkpoint is.")


def _expand(raw: dict, field: str, d_model: int, label: str) -> float:
    value = raw.get(field, 2)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not int(value * d_model) >= 1:
        raise QuambaEdgeError(f"config.json has `{label}: {json.dumps(value)}`; it must be a positive number "
                              "(d_inner = int(expand * d_model)).")
    return value


def _dt_rank(value: object, label: str) -> int:
    if value == "auto" or value is None:
        return 0
    return config_int({label: value}, label)


def config_from_raw(raw: dict) -> MambaConfig:
    """config.json (mamba-ssm or Hugging Face layout) -> MambaConfig, honouring or refusing every field that
    changes the arithmetic (the tables above). Raises QuambaEdgeError naming the field and its value."""
    layout = detect_layout(raw)
    if layout == "mamba-ssm":
        common.check_mamba_ssm_fields(raw, _refuse, "Mamba")
        ssm = raw.get("ssm_cfg") or {}
        if not isinstance(ssm, dict):
            raise QuambaEdgeError(f"config.json has `ssm_cfg: {json.dumps(ssm)}`; it must be an object.")
        if ssm.get("layer", "Mamba1") != "Mamba1":
            raise QuambaEdgeError(f"config.json has `ssm_cfg.layer: {json.dumps(ssm['layer'])}`: this loader reads "
                                  "Mamba-1 (quamba-edge commands load Mamba2 layers through checkpoints/mamba2.py).")
        unknown = sorted(set(ssm) - set(MAMBA_SSM_SSM_CFG_FIELDS))
        if unknown:
            raise QuambaEdgeError(f"config.json's ssm_cfg has fields the Mamba-1 mixer does not take: {unknown}. "
                                  "Fix: remove them, or use a Mamba-1 checkpoint.")
        d_model = config_int(raw, "d_model")
        pad = config_int(raw, "pad_vocab_size_multiple", 8)
        vocab = int(math.ceil(config_int(raw, "vocab_size") / pad) * pad)
        return MambaConfig(
            d_model=d_model, n_layer=config_int(raw, "n_layer"), vocab_size=vocab,
            d_state=config_int(ssm, "d_state", 16, "ssm_cfg.d_state"),
            d_conv=config_int(ssm, "d_conv", 4, "ssm_cfg.d_conv"),
            expand=_expand(ssm, "expand", d_model, "ssm_cfg.expand"),
            dt_rank=_dt_rank(ssm.get("dt_rank", "auto"), "ssm_cfg.dt_rank"), norm_eps=config_eps(raw, "norm_epsilon"),
            conv_bias=config_flag(ssm, "conv_bias", True, "ssm_cfg.conv_bias"),
            proj_bias=config_flag(ssm, "bias", False, "ssm_cfg.bias"),
        )
    if raw.get("hidden_act", "silu") != "silu":
        raise _refuse("hidden_act", raw["hidden_act"], "an activation other than SiLU in the mixer")
    d_model = config_int(raw, "hidden_size")
    expand = _expand(raw, "expand", d_model, "expand")
    if "intermediate_size" in raw and raw["intermediate_size"] != int(expand * d_model):
        raise QuambaEdgeError(f"config.json has `intermediate_size: {json.dumps(raw['intermediate_size'])}` but "
                              f"`expand: {json.dumps(expand)}` x `hidden_size: {d_model}` gives "
                              f"{int(expand * d_model)}; transformers uses the latter. Fix: make them agree.")
    return MambaConfig(
        d_model=d_model, n_layer=config_int(raw, "num_hidden_layers"), vocab_size=config_int(raw, "vocab_size"),
        d_state=config_int(raw, "state_size", 16), d_conv=config_int(raw, "conv_kernel", 4), expand=expand,
        dt_rank=_dt_rank(raw.get("time_step_rank", "auto"), "time_step_rank"),
        norm_eps=config_eps(raw, "layer_norm_epsilon"), conv_bias=config_flag(raw, "use_conv_bias", True),
        proj_bias=config_flag(raw, "use_bias", False),
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
    raw = read_config(model_dir, LAYOUTS)
    cfg = config_from_raw(raw)
    state = _canonical_keys(load_state_dict(model_dir))
    _require_tied_head(raw, state, model_dir)
    with on_meta():
        empty = MambaLM(cfg)  # names and shapes, no memory
    expected = empty.state_dict()
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
    return adopt(empty, state, dtype).eval()


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
