"""Mamba-2 checkpoints in the two public layouts; written back as safetensors.

- mamba-ssm (`state-spaces/mamba2-130m` ... `-2.7b`): config.json with `d_model`, `n_layer` and
  `ssm_cfg.layer: "Mamba2"` (the mixer's other arguments in `ssm_cfg`, mamba_ssm/modules/mamba2.py's
  defaults otherwise); `pytorch_model.bin` (loaded with `weights_only=True`) or `model.safetensors`.
- Hugging Face transformers (`Mamba2ForCausalLM`, e.g. Mamba-Codestral-7B): `model_type: "mamba2"`,
  `hidden_size`, `num_heads`, `head_dim`, `n_groups`, ...; safetensors, sharded or not; parameter
  `backbone.embeddings.weight`; an lm_head of its own when `tie_word_embeddings` is false.

Every config field is honoured, refused by name, or ignored because it changes no inference arithmetic
(the tables below). Weights are checked name by name and shape by shape against the config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from quamba_edge.checkpoints.common import (
    adopt,
    check_mamba_ssm_fields,
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
from quamba_edge.models.mamba2 import Mamba2Config, Mamba2LM

LAYOUTS = "a mamba-ssm Mamba-2 or Hugging Face Mamba2ForCausalLM directory (config.json + weights)"

# mamba-ssm's MambaConfig (mamba_ssm/models/config_mamba.py), with ssm_cfg.layer = "Mamba2".
# (the top level is MAMBA_SSM_FIELDS of checkpoints/common.py, shared with Mamba-1)
# The Mamba2 mixer's arguments (mamba_ssm/modules/mamba2.py) and their defaults.
MAMBA2_SSM_CFG_FIELDS: dict[str, str] = {
    "layer": "must be Mamba2", "d_state": "honoured (default 128)", "d_conv": "honoured (default 4)",
    "expand": "honoured (default 2; an integer)", "headdim": "honoured (default 64)",
    "ngroups": "honoured (default 1)", "bias": "honoured", "conv_bias": "honoured",
    "dt_limit": "honoured: dt is clamped to it after softplus", "chunk_size": "honoured: the prefill chunk",
    "d_ssm": "refused unless null or d_inner (a gated MLP beside the SSM)",
    "D_has_hdim": "refused unless false (a D per channel instead of per head)",
    "rmsnorm": "refused unless true (no norm before out_proj)",
    "norm_before_gate": "refused unless false (normalise y before the SiLU(z) gate)",
    "dt_min": "ignored (init)", "dt_max": "ignored (init)", "dt_init_floor": "ignored (init)",
    "A_init_range": "ignored (init)", "conv_init": "ignored (init)", "activation": "refused unless silu or swish",
    "use_mem_eff_path": "ignored (kernel choice)", "layer_idx": "ignored (cache bookkeeping)",
    "sequence_parallel": "ignored (multi-GPU)", "process_group": "ignored (multi-GPU)",
}
# transformers' Mamba2Config (models/mamba2/configuration_mamba2.py). Unknown keys are not refused: every
# PretrainedConfig carries generic ones (output_hidden_states, id2label, ...).
HF_MAMBA2_FIELDS: dict[str, str] = {
    "vocab_size": "honoured", "hidden_size": "honoured", "state_size": "honoured", "num_hidden_layers": "honoured",
    "num_heads": "refused if it disagrees with expand * hidden_size / head_dim", "head_dim": "honoured",
    "n_groups": "honoured", "expand": "honoured", "conv_kernel": "honoured", "use_bias": "honoured",
    "use_conv_bias": "honoured", "layer_norm_epsilon": "honoured", "chunk_size": "honoured: the prefill chunk",
    "time_step_limit": "honoured: dt is clamped to it after softplus", "tie_word_embeddings": "honoured",
    "hidden_act": "refused unless silu", "rms_norm": "refused unless true",
    "residual_in_fp32": "ignored (fp32 here anyway)", "time_step_rank": "ignored (Mamba-2 has no dt projection)",
    "time_step_min": "ignored (init)", "time_step_max": "ignored (init)", "time_step_floor": "ignored (init)",
    "rescale_prenorm_residual": "ignored (init)", "initializer_range": "ignored (init)",
    "use_cache": "ignored (generation API)", "pad_token_id": "ignored (token ids)",
    "bos_token_id": "ignored (token ids)", "eos_token_id": "ignored (token ids)",
}


def is_mamba2_config(raw: dict) -> bool:
    """Whether a config.json describes a Mamba-2 model (either layout)."""
    ssm = raw.get("ssm_cfg")
    return raw.get("model_type") == "mamba2" or (isinstance(ssm, dict) and ssm.get("layer") == "Mamba2")


def _refuse(field: str, value: object, why: str) -> QuambaEdgeError:
    return QuambaEdgeError(f"config.json has `{field}: {json.dumps(value)}`: {why}, which quamba-edge does not "
                           "implement. Fix: use a Mamba-2 checkpoint with the standard block (as every "
                           "state-spaces/mamba2-* checkpoint and Mamba-Codestral are).")


def _number(v: object) -> object:
    """A JSON number, or infinity as config writers spell it: `Infinity` (Python's json), "inf", or
    transformers 5's {"__float__": "Infinity"}."""
    if isinstance(v, dict) and set(v) == {"__float__"}:
        v = v["__float__"]
    if isinstance(v, str) and v.strip().lower().lstrip("+") in ("inf", "infinity"):
        return math.inf
    return v


def _dt_limit(value: object, field: str) -> tuple[float, float | None]:
    if value is None:
        return 0.0, None
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(_number(v), (int, float)) and not isinstance(v, bool) for v in value)
    if ok:
        value = [_number(v) for v in value]
    if not ok or not 0 <= value[0] < value[1]:
        raise QuambaEdgeError(f"config.json has `{field}: {json.dumps(value)}`; it must be [low, high] with "
                              "0 <= low < high (high may be Infinity).")
    return float(value[0]), None if math.isinf(value[1]) else float(value[1])


def _heads(d_model: int, expand: object, headdim: int, ngroups: int, where: str) -> int:
    if isinstance(expand, bool) or not isinstance(expand, int) or expand < 1:
        raise QuambaEdgeError(f"config.json has `{where}expand: {json.dumps(expand)}`; it must be a positive "
                              "integer (d_inner = expand * d_model).")
    d_inner = expand * d_model
    if d_inner % headdim or (d_inner // headdim) % ngroups:
        raise QuambaEdgeError(f"config.json gives d_inner {d_inner} (expand {expand} x d_model {d_model}), which does "
                              f"not split into heads of {headdim} in {ngroups} equal groups. Fix: correct config.json "
                              "(the weights' shapes tell the values).")
    return d_inner // headdim


def config_from_raw(raw: dict) -> Mamba2Config:
    """config.json (mamba-ssm or Hugging Face layout) -> Mamba2Config, honouring or refusing every field that
    changes the arithmetic (the tables above). Raises QuambaEdgeError naming the field and its value."""
    if not is_mamba2_config(raw):
        raise QuambaEdgeError("config.json is not a Mamba-2 config: expected `ssm_cfg.layer: \"Mamba2\"` "
                              "(mamba-ssm) or `model_type: \"mamba2\"` (Hugging Face).")
    if "d_model" in raw:
        check_mamba_ssm_fields(raw, _refuse, "Mamba-2")
        ssm = raw["ssm_cfg"]
        unknown = sorted(set(ssm) - set(MAMBA2_SSM_CFG_FIELDS))
        if unknown:
            raise QuambaEdgeError(f"config.json's ssm_cfg has fields the Mamba2 mixer does not take: {unknown}. "
                                  "Fix: remove them.")
        d_model = config_int(raw, "d_model")
        headdim = config_int(ssm, "headdim", 64, "ssm_cfg.headdim")
        ngroups = config_int(ssm, "ngroups", 1, "ssm_cfg.ngroups")
        expand = ssm.get("expand", 2)
        _heads(d_model, expand, headdim, ngroups, "ssm_cfg.")
        if ssm.get("d_ssm") not in (None, expand * d_model):
            raise _refuse("ssm_cfg.d_ssm", ssm["d_ssm"], "an SSM narrower than d_inner with a gated MLP beside it")
        for field, standard, why in (("D_has_hdim", False, "a D per channel instead of per head"),
                                     ("rmsnorm", True, "no gated RMSNorm before out_proj"),
                                     ("norm_before_gate", False, "the norm applied before the SiLU(z) gate")):
            if ssm.get(field, standard) is not standard:
                raise _refuse(f"ssm_cfg.{field}", ssm[field], why)
        if ssm.get("activation", "silu") not in ("silu", "swish"):
            raise _refuse("ssm_cfg.activation", ssm["activation"], "a conv activation other than SiLU")
        pad = config_int(raw, "pad_vocab_size_multiple", 8)
        dt_min, dt_max = _dt_limit(ssm.get("dt_limit"), "ssm_cfg.dt_limit")
        return Mamba2Config(
            d_model=d_model, n_layer=config_int(raw, "n_layer"),
            vocab_size=int(math.ceil(config_int(raw, "vocab_size") / pad) * pad),
            d_state=config_int(ssm, "d_state", 128, "ssm_cfg.d_state"),
            d_conv=config_int(ssm, "d_conv", 4, "ssm_cfg.d_conv"), expand=expand, headdim=headdim, ngroups=ngroups,
            chunk_size=config_int(ssm, "chunk_size", 256, "ssm_cfg.chunk_size"),
            norm_eps=config_eps(raw, "norm_epsilon"),
            conv_bias=config_flag(ssm, "conv_bias", True, "ssm_cfg.conv_bias"),
            proj_bias=config_flag(ssm, "bias", False, "ssm_cfg.bias"), dt_min=dt_min, dt_max=dt_max,
            tie_embeddings=config_flag(raw, "tie_embeddings", True))
    if raw.get("hidden_act", "silu") not in ("silu", "swish"):
        raise _refuse("hidden_act", raw["hidden_act"], "an activation other than SiLU in the mixer")
    if raw.get("rms_norm", True) is not True:
        raise _refuse("rms_norm", raw["rms_norm"], "no gated RMSNorm before out_proj")
    d_model = config_int(raw, "hidden_size")
    headdim = config_int(raw, "head_dim", 64)
    ngroups = config_int(raw, "n_groups", 1)
    expand = raw.get("expand", 2)
    heads = _heads(d_model, expand, headdim, ngroups, "")
    if raw.get("num_heads", heads) != heads:
        raise QuambaEdgeError(f"config.json has `num_heads: {json.dumps(raw['num_heads'])}` but expand {expand} x "
                              f"hidden_size {d_model} / head_dim {headdim} = {heads}. Fix: make them agree.")
    dt_min, dt_max = _dt_limit(raw.get("time_step_limit"), "time_step_limit")
    return Mamba2Config(
        d_model=d_model, n_layer=config_int(raw, "num_hidden_layers"), vocab_size=config_int(raw, "vocab_size"),
        d_state=config_int(raw, "state_size", 128), d_conv=config_int(raw, "conv_kernel", 4), expand=expand,
        headdim=headdim, ngroups=ngroups, chunk_size=config_int(raw, "chunk_size", 256),
        norm_eps=config_eps(raw, "layer_norm_epsilon"), conv_bias=config_flag(raw, "use_conv_bias", True),
        proj_bias=config_flag(raw, "use_bias", False), dt_min=dt_min, dt_max=dt_max,
        tie_embeddings=config_flag(raw, "tie_word_embeddings", True))


def load_mamba2(spec: str | Path, dtype: torch.dtype = torch.float32) -> Mamba2LM:
    """Load a Mamba-2 LM from a local directory or a hub id (either layout), checking every tensor's name and
    shape against config.json. Raises QuambaEdgeError for a config field we do not implement, missing,
    unexpected or misshapen weights, or a head that config.json says is tied but is not."""
    model_dir = resolve_model_dir(spec)
    raw = read_config(model_dir, LAYOUTS)
    cfg = config_from_raw(raw)
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in load_state_dict(model_dir).items()}
    head, emb = state.get("lm_head.weight"), state.get("backbone.embedding.weight")
    if cfg.tie_embeddings:
        if head is not None and emb is not None and (head.shape != emb.shape or not torch.equal(head, emb)):
            raise QuambaEdgeError(f"{model_dir}'s config.json ties lm_head to the embedding, but its lm_head.weight "
                                  "differs. Fix: set `tie_embeddings` (mamba-ssm) or `tie_word_embeddings` (Hugging "
                                  "Face) to false in config.json.")
        state.pop("lm_head.weight", None)
    with on_meta():
        empty = Mamba2LM(cfg)  # names and shapes, no memory
    expected = {k: v for k, v in empty.state_dict().items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        detail = "; ".join(f"{label}: {keys[:4]}{' ...' if len(keys) > 4 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("wrong shape", wrong_shape)) if keys)
        raise QuambaEdgeError(f"the weights in {model_dir} do not match its config.json ({detail}).")
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["backbone.embedding.weight"]
    return adopt(empty, state, dtype).eval()


def mamba_ssm_config(cfg: Mamba2Config) -> dict:
    """config.json in the mamba-ssm layout (the layout we write)."""
    ssm = {"layer": "Mamba2", "d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand,
           "headdim": cfg.headdim, "ngroups": cfg.ngroups, "chunk_size": cfg.chunk_size, "conv_bias": cfg.conv_bias,
           "bias": cfg.proj_bias}
    if cfg.dt_min or cfg.dt_max is not None:
        ssm["dt_limit"] = [cfg.dt_min, cfg.dt_max if cfg.dt_max is not None else float("inf")]
    return {"d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size, "d_intermediate": 0,
            "ssm_cfg": ssm, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": False,
            "pad_vocab_size_multiple": 1, "tie_embeddings": cfg.tie_embeddings, "norm_epsilon": cfg.norm_eps}


def save_checkpoint(model: Mamba2LM, out_dir: Path, extra: dict | None = None) -> None:
    """Write config.json + model.safetensors (mamba-ssm names; a tied lm_head is omitted)."""
    out_dir = Path(out_dir)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
             if not (model.cfg.tie_embeddings and k == "lm_head.weight")}
    atomic_write(out_dir / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    atomic_write_json(out_dir / "config.json", mamba_ssm_config(model.cfg))
    for name, payload in (extra or {}).items():
        atomic_write_json(out_dir / f"{name}.json", payload)
