"""wav2vec 2.0 and keyword-spotter checkpoints: read from the layouts people have, written in ours.

Layouts read (`load_wav2vec2`, `load_pretrain_heads`):
- Hugging Face transformers (`Wav2Vec2Model`, `ForPreTraining`, `ForCTC`, ...): a directory with
  config.json (`model_type: wav2vec2`) and weights (read by common.load_state_dict).
- fairseq: a `.pt` file (pre-training or fine-tuned wav2vec_ctc), unpickled with `weights_only=True`.
- ours (`save_wav2vec2`): config.json `{"family": "wav2vec2", "format_version", "config"}` +
  model.safetensors (+ pretrain_heads.safetensors for a pre-training checkpoint).
A keyword spotter (`save_kws`, `load_kws`) is our wav2vec2 directory plus a `kws` block in config.json and
kws_head.safetensors, so its encoder alone loads with `load_wav2vec2`.

Every weight is renamed to ours and checked against the config (names and shapes); every config setting is
honoured, refused by name, or ignored as not changing the output (HF_CONFIG_FIELDS, FAIRSEQ_CONFIG_FIELDS).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from quamba_edge.checkpoints.common import checkpoint_family, load_state_dict, on_meta, read_safetensors
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import staged_dir
from quamba_edge.models.kws import KeywordSpotter, KwsConfig
from quamba_edge.models.wav2vec2 import GumbelQuantizer, PretrainHeads, Wav2Vec2Config, Wav2Vec2Encoder

FAMILY = "wav2vec2"  # config.json `family` of our wav2vec2 and keyword-spotter checkpoints
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
HEADS_FILE = "pretrain_heads.safetensors"
HEAD_FILE = "kws_head.safetensors"  # a keyword spotter's pooling layer and classifier


_LAYER = r"encoder\.layers\.(\d+)\."
_CONV = r"feature_extractor\.conv_layers\.(\d+)\."
_POS_G = "pos_conv.weight_g"
_POS_V = "pos_conv.weight_v"
_POS_W = "pos_conv.weight"  # an effective (already normalised) kernel; converted to g, v on load

# (our name, Hugging Face pattern, fairseq pattern); `heads.` / `quantizer.` names belong to the pre-training heads.
_RENAMES = [
    (r"feature_encoder.conv_layers.\1.conv.", _CONV + r"conv\.", _CONV + r"0\."),
    (r"feature_encoder.conv_layers.\1.norm.", _CONV + r"layer_norm\.", _CONV + r"2\.(1\.)?"),
    ("feature_norm.", r"feature_projection\.layer_norm\.", r"layer_norm\."),
    ("feature_proj.", r"feature_projection\.projection\.", r"post_extract_proj\."),
    ("mask_emb", r"masked_spec_embed$", r"mask_emb$"),
    *((ours, r"encoder\.pos_conv_embed\.conv\." + end, r"encoder\.pos_conv\.0\." + end) for ours, end in (
        (_POS_G, r"(weight_g|parametrizations\.weight\.original0)$"),
        (_POS_V, r"(weight_v|parametrizations\.weight\.original1)$"),
        (_POS_W, r"weight$"), ("pos_conv.bias", r"bias$"))),
    ("encoder_norm.", r"encoder\.layer_norm\.", r"encoder\.layer_norm\."),
    (r"layers.\1.attn.\2_proj.", _LAYER + r"attention\.(q|k|v|out)_proj\.", _LAYER + r"self_attn\.(q|k|v|out)_proj\."),
    (r"layers.\1.attn_norm.", _LAYER + r"layer_norm\.", _LAYER + r"self_attn_layer_norm\."),
    (r"layers.\1.fc1.", _LAYER + r"feed_forward\.intermediate_dense\.", _LAYER + r"fc1\."),
    (r"layers.\1.fc2.", _LAYER + r"feed_forward\.output_dense\.", _LAYER + r"fc2\."),
    (r"layers.\1.final_norm.", _LAYER + r"final_layer_norm\.", _LAYER + r"final_layer_norm\."),
    ("quantizer.codevectors", r"quantizer\.codevectors$", r"quantizer\.vars$"),
    ("quantizer.weight_proj.", r"quantizer\.weight_proj\.", r"quantizer\.weight_proj\."),
    ("heads.project_q.", r"project_q\.", r"project_q\."),
    ("heads.final_proj.", r"project_hid\.", r"final_proj\."),
]
_HF_RULES = [(re.compile(hf), ours) for ours, hf, _ in _RENAMES]
_FAIRSEQ_RULES = [(re.compile(fairseq), ours) for ours, _, fairseq in _RENAMES]
# Task heads of Wav2Vec2ForCTC / ForSequenceClassification etc.: not part of the encoder.
_HF_IGNORED = re.compile(r"lm_head\.|classifier\.|projector\.|layer_weights$")
# Fine-tuning output layers and the fairseq version marker; the encoder does not use them.
_FAIRSEQ_IGNORED = re.compile(r"w2v_encoder\.proj\.|encoder\.version$|target_glu\.")


@dataclass
class _Checkpoint:
    cfg: Wav2Vec2Config
    encoder: dict[str, Tensor]  # our encoder names
    heads: dict[str, Tensor]  # "quantizer.*" and "heads.*" (pre-training checkpoints only)
    where: str  # for error messages
    heads_refused: tuple[str, ...] = ()  # settings whose pre-training heads we do not implement


def _rename(state: dict[str, Tensor], rules: list, ignored: re.Pattern, where: str) -> tuple[dict, dict]:
    """-> (encoder, heads) in our names. A plain positional-conv kernel w becomes the weight-normalised
    one with v = w, g = ||w||."""
    encoder: dict[str, Tensor] = {}
    heads: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        new = next((pattern.sub(repl, key, count=1) for pattern, repl in rules if pattern.match(key)), None)
        if new is not None:
            (heads if new.startswith(("quantizer.", "heads.")) else encoder)[new] = value
        elif not ignored.match(key):
            unknown.append(key)
    if unknown:
        raise QuambaEdgeError(
            f"{where} holds weights that are not part of a wav2vec2 model ({_few(unknown)}); it may be a "
            "different architecture (HuBERT, WavLM, data2vec, conformer) or a newer layout. "
            "Fix: pass a plain wav2vec2 checkpoint."
        )
    w = encoder.pop(_POS_W, None)
    if w is not None and _POS_G not in encoder and _POS_V not in encoder:
        encoder[_POS_V] = w
        encoder[_POS_G] = torch.linalg.vector_norm(w.float(), dim=(0, 1), keepdim=True).to(w.dtype)
    return encoder, heads


def _few(keys: list[str]) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


# --- what each checkpoint setting does here
#
# Every setting of transformers' Wav2Vec2Config (configuration_wav2vec2.py) and of fairseq's wav2vec 2.0
# model config (fairseq/models/wav2vec/wav2vec2.py: the Wav2Vec2Config dataclass, or the older `args`),
# and what the loaders do with it, decided on how each library's encoder forward uses it. "honoured": the
# value shapes our encoder (or the pre-training heads) the same way; "refused": a value other than the one
# named makes the loader raise a QuambaEdgeError naming the setting and its value; "ignored": no effect on
# the encoder's inference output (training-time dropout/masking/losses, task heads, metadata).
# tests/test_wav2vec2_config.py checks this table against the installed transformers and each refusal.

def _each(verdict: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, verdict)


_TRAINING, _MASKING, _LOSS = "ignored: training only (kept)", "ignored: training-time masking", \
    "ignored: pre-training loss"
HF_CONFIG_FIELDS: dict[str, str] = {
    **_each("honoured", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
            "conv_stride", "conv_kernel", "conv_bias", "num_conv_pos_embedding_groups"),
    **_each("honoured if 'gelu' or 'gelu_python' (both the exact erf GELU; for feat_extract_activation every "
            "conv layer and the positional conv), else refused", "hidden_act", "feat_extract_activation"),
    "layer_norm_eps": "honoured (feature LayerNorm and every transformer LayerNorm; the conv norms use a fixed "
                      "1e-5 in transformers, as here)",
    "feat_extract_norm": "honoured ('group' or 'layer'), else refused",
    "num_conv_pos_embeddings": "honoured (an even kernel drops the last output frame, Wav2Vec2SamePadLayer)",
    "do_stable_layer_norm": "honoured (pre-LN layers + final LayerNorm; independent of feat_extract_norm)",
    "num_feat_extract_layers": "ignored: transformers derives it from len(conv_dim)",
    "add_adapter": "refused if true (an adapter after the encoder changes the output)",
    "adapter_attn_dim": "refused if set (attention adapters in every layer)",
    **_each("ignored: only read by the add_adapter adapter (refused)", "adapter_kernel_size", "adapter_stride",
            "num_adapter_layers"),
    "output_hidden_size": "ignored: only read by the add_adapter adapter (refused) and the CTC head",
    **_each("honoured (pre-training quantizer and heads' shapes)", "num_codevectors_per_group",
            "num_codevector_groups", "codevector_dim", "proj_codevector_dim"),
    **_each(_TRAINING, "hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout",
            "feat_quantizer_dropout", "layerdrop", "final_dropout"),
    **_each(_MASKING, "apply_spec_augment", "mask_time_prob", "mask_time_length", "mask_time_min_masks",
            "mask_feature_prob", "mask_feature_length", "mask_feature_min_masks"),
    **_each(_LOSS, "contrastive_logits_temperature", "num_negatives", "diversity_loss_weight"),
    "initializer_range": "ignored: initialisation only",
    **_each("ignored: CTC head, tokenizer", "vocab_size", "ctc_loss_reduction", "ctc_zero_infinity", "pad_token_id",
            "bos_token_id", "eos_token_id"),
    **_each("ignored: classification and x-vector heads", "use_weighted_layer_sum", "classifier_proj_size",
            "tdnn_dim", "tdnn_kernel", "tdnn_dilation", "xvector_output_dim"),
    "(PreTrainedConfig keys)": "ignored: metadata (architectures, dtype, ...); the attention implementation "
                               "(eager/sdpa) does not change the math",
}

FAIRSEQ_CONFIG_FIELDS: dict[str, str] = {
    "_name / arch": "refused unless 'wav2vec2' (fine-tuned wav2vec_ctc: the nested w2v_args model is read)",
    "extractor_mode": "honoured ('default': GroupNorm on conv 0; 'layer_norm': LayerNorm on every conv), "
                      "else refused",
    **_each("honoured", "conv_feature_layers", "conv_bias", "encoder_layers", "encoder_ffn_embed_dim",
            "encoder_attention_heads", "layer_norm_first", "conv_pos_groups"),
    "encoder_embed_dim": "honoured (equal to the last conv dim: no post_extract_proj, feature_proj=False)",
    "activation_fn": "honoured if 'gelu' (fairseq's erf GELU), else refused; the conv and positional-conv "
                     "activations are a fixed nn.GELU",
    "layer_type": "honoured if 'transformer', else refused (conformer, trf_adp); a fine-tuning config's value "
                  "overrides the pre-training one, as in fairseq",
    "(layer norm eps)": "honoured: not a setting; fairseq's LayerNorm, Fp32GroupNorm and Fp32LayerNorm use 1e-5",
    "conv_pos": "honoured (SamePad: an even kernel drops the last output frame)",
    "pos_conv_depth": "refused unless 1 (a stack of plain convs with LayerNorms)",
    "conv_pos_batch_norm": "refused if true (read with hasattr by TransformerEncoder; HuBERT configs carry it)",
    "quantize_input": "refused if true (Gumbel-quantized encoder input + project_inp)",
    "same_quantizer": "ignored: only with quantize_input (refused)",
    "crop_seq_to_multiple": "refused unless 1 (drops trailing frames before the transformer)",
    "required_seq_len_multiple": "ignored: pads with frames that attention masks out and crops them again, so "
                                 "the real frames' output is unchanged",
    **_each(_TRAINING, "dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "dropout_input",
            "dropout_features", "feature_grad_mult", "latent_temp", "checkpoint_activations"),
    **_each("honoured (pre-training quantizer and heads' shapes)", "final_dim", "latent_vars", "latent_groups",
            "latent_dim"),
    "quantize_targets": "refused by load_pretrain_heads if false (no quantizer); the encoder loads",
    "target_glu": "refused by load_pretrain_heads if true (a GLU on the targets); the encoder loads",
    "quantizer_depth": "refused by load_pretrain_heads unless 1 (an MLP weight_proj); the encoder loads",
    "quantizer_factor": "ignored: only with quantizer_depth > 1 (refused for the heads)",
    **_each(_LOSS, "logit_temp", "num_negatives", "negatives_from_everywhere", "cross_sample_negatives",
            "codebook_negatives"),
    **_each(_MASKING, "mask_length", "mask_prob", "mask_selection", "mask_other", "no_mask_overlap",
            "mask_min_space", "require_same_masks", "mask_dropout", "mask_channel_length", "mask_channel_prob",
            "mask_channel_before", "mask_channel_selection", "mask_channel_other", "no_mask_channel_overlap",
            "mask_channel_min_space"),
    "max_positions": "ignored: reported by max_positions(), never used in forward",
    **_each("ignored: conformer or trf_adp layers only (refused)", "fp16", "depthwise_conv_kernel_size",
            "attn_type", "pos_enc_type", "adp_num", "adp_dim", "adp_act_fn", "adp_trf_idx"),
    "normalize (task)": "ignored: input preprocessing (zero mean, unit variance per clip) is the caller's",
    "(wav2vec_ctc settings)": "ignored: dropouts, masking, layerdrop, final_dropout, freeze_finetune_updates and "
                              "the CTC `proj` are training or head only; layer_type and adp_* are applied (above)",
}

_EXACT_GELU = ("gelu", "gelu_python")  # transformers' names for F.gelu (erf); gelu_new, gelu_fast... are tanh

# our Wav2Vec2Config field: (Hugging Face setting, transformers' default); the value is cast to the default's type
_HF_FIELDS = {
    "conv_dim": ("conv_dim", (512,) * 7), "conv_kernel": ("conv_kernel", (10, 3, 3, 3, 3, 2, 2)),
    "conv_stride": ("conv_stride", (5, 2, 2, 2, 2, 2, 2)), "conv_bias": ("conv_bias", False),
    "feat_extract_norm": ("feat_extract_norm", "group"), "hidden_size": ("hidden_size", 768),
    "num_layers": ("num_hidden_layers", 12), "num_heads": ("num_attention_heads", 12),
    "ffn_dim": ("intermediate_size", 3072), "pos_conv_kernel": ("num_conv_pos_embeddings", 128),
    "pos_conv_groups": ("num_conv_pos_embedding_groups", 16), "layer_norm_first": ("do_stable_layer_norm", False),
    "layer_norm_eps": ("layer_norm_eps", 1e-5), "num_codevector_groups": ("num_codevector_groups", 2),
    "num_codevectors_per_group": ("num_codevectors_per_group", 320), "codevector_dim": ("codevector_dim", 256),
    "final_dim": ("proj_codevector_dim", 256), "dropout": ("hidden_dropout", 0.1),
    "attention_dropout": ("attention_dropout", 0.1), "activation_dropout": ("activation_dropout", 0.1),
    "feat_proj_dropout": ("feat_proj_dropout", 0.0), "feat_quantizer_dropout": ("feat_quantizer_dropout", 0.0),
    "layerdrop": ("layerdrop", 0.1),
}
# the same for fairseq's settings (fairseq's defaults); the shapes it derives are computed in _fairseq_config
_FAIRSEQ_FIELDS = {
    "conv_bias": ("conv_bias", False), "num_layers": ("encoder_layers", 12),
    "num_heads": ("encoder_attention_heads", 12), "ffn_dim": ("encoder_ffn_embed_dim", 3072),
    "pos_conv_kernel": ("conv_pos", 128), "pos_conv_groups": ("conv_pos_groups", 16),
    "layer_norm_first": ("layer_norm_first", False), "num_codevector_groups": ("latent_groups", 2),
    "num_codevectors_per_group": ("latent_vars", 320), "dropout": ("dropout", 0.1),
    "attention_dropout": ("attention_dropout", 0.1), "activation_dropout": ("activation_dropout", 0.0),
    "feat_proj_dropout": ("dropout_input", 0.0), "feat_quantizer_dropout": ("dropout_features", 0.0),
    "layerdrop": ("encoder_layerdrop", 0.0), "feature_grad_mult": ("feature_grad_mult", 1.0),
}


def _fields(get: Callable[[str, object], object], table: dict[str, tuple[str, object]]) -> dict[str, object]:
    return {field: type(default)(get(key, default)) for field, (key, default) in table.items()}


def _setting(name: str, value: object) -> str:
    return f"`{name}: {value!r}`"


def _refuse(where: str, settings: Sequence[str], fix: str, what: str = "the wav2vec2 encoder") -> None:
    """Raise if any setting was refused: every one named with its value, so the user sees them all at once."""
    if settings:
        raise QuambaEdgeError(f"{where} sets {', '.join(settings)}: {what} it describes computes something "
                              f"quamba-edge does not implement, so loading it would give wrong outputs. Fix: {fix}")


def _build_config(where: str, make: Callable[[], Wav2Vec2Config], fix: str) -> Wav2Vec2Config:
    """make(); a setting of the wrong type or an invalid combination is a QuambaEdgeError naming `fix`."""
    try:
        return make()
    except (TypeError, ValueError, SyntaxError, IndexError) as exc:
        raise QuambaEdgeError(f"{where} has a malformed wav2vec2 config ({exc}). Fix: {fix}") from exc
    except QuambaEdgeError as exc:
        raise QuambaEdgeError(f"{where}: {exc} Fix: {fix}") from exc


# --- Hugging Face


def _hf_config(raw: dict, where: str) -> Wav2Vec2Config:
    ok = {"hidden_act": raw.get("hidden_act", "gelu") in _EXACT_GELU,
          "feat_extract_activation": raw.get("feat_extract_activation", "gelu") in _EXACT_GELU,
          "feat_extract_norm": raw.get("feat_extract_norm", "group") in ("group", "layer"),
          "add_adapter": not raw.get("add_adapter"), "adapter_attn_dim": raw.get("adapter_attn_dim") is None}
    _refuse(where, [_setting(name, raw.get(name)) for name, good in ok.items() if not good],
            "use a plain wav2vec2 checkpoint (exact GELU activations, no adapters).")
    # transformers always builds feature_projection.projection and trains the conv encoder at full gradient
    # (or freezes it outright)
    return _build_config(where, lambda: Wav2Vec2Config(**_fields(raw.get, _HF_FIELDS), feature_proj=True,
                                                       feature_grad_mult=1.0), "re-export it from the original model.")


def _read_hf(model_dir: Path, raw: dict) -> _Checkpoint:
    where = str(model_dir)
    cfg = _hf_config(raw, where)
    state = load_state_dict(model_dir)
    if any(k.startswith("wav2vec2.") for k in state):  # Wav2Vec2ForPreTraining / ForCTC / ...
        state = {k.removeprefix("wav2vec2."): v for k, v in state.items()}
    encoder, heads = _rename(state, _HF_RULES, _HF_IGNORED, where)
    return _Checkpoint(cfg, encoder, heads, where)


# --- fairseq

_FAIRSEQ_CONV = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"


def _eval_conv_spec(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's `conv_feature_layers` string (list/tuple literals joined by + and *)
    without eval(): only integer literals, lists, tuples, + and * are accepted."""

    def value(node: ast.AST):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported syntax {ast.dump(node)[:60]}")

    layers = value(ast.parse(spec, mode="eval").body)
    if not isinstance(layers, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
        raise ValueError("expected a list of (dim, kernel, stride) tuples")
    return layers


def _as_dict(obj: object) -> dict:
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    if isinstance(obj, dict):
        return obj
    raise TypeError(f"expected a dict or argparse.Namespace, got {type(obj).__name__}")


# fairseq's wav2vec_ctc copies these from the fine-tuning config into the pre-training one it builds
# (Wav2VecEncoder in wav2vec2_asr.py), so they decide the encoder's layers when set there.
_FAIRSEQ_FINETUNE_OVERRIDES = ("layer_type", "adp_num", "adp_dim", "adp_act_fn", "adp_trf_idx")


def _fairseq_model_cfg(ckpt: dict, where: str) -> tuple[dict, str]:
    """-> (the wav2vec2 model's settings, the state-dict prefix of its weights). Fine-tuned (CTC)
    checkpoints nest the pre-training settings in `w2v_args` and the weights under `w2v_encoder.w2v_model.`."""
    if ckpt.get("cfg") is not None:
        model = _as_dict(_as_dict(ckpt["cfg"]).get("model") or {})
    elif ckpt.get("args") is not None:
        model = _as_dict(ckpt["args"])
    else:
        raise QuambaEdgeError(f"{where} has neither `cfg` nor `args`, so the model's shape is unknown. "
                              "Fix: pass the original fairseq checkpoint or a Hugging Face directory.")
    if model.get("w2v_args") is not None:
        inner = _as_dict(model["w2v_args"])
        inner = dict(_as_dict(inner.get("model", inner)))
        inner.update({k: model[k] for k in _FAIRSEQ_FINETUNE_OVERRIDES if model.get(k) is not None})
        return inner, "w2v_encoder.w2v_model."
    return model, ""


def _opt(m: dict, key: str, default: object) -> object:
    """m[key], or `default` when absent or null (fairseq's dataclass default)."""
    value = m.get(key)
    return default if value is None else value


def _fairseq_config(m: dict, where: str) -> Wav2Vec2Config:
    """The encoder's config from fairseq's model settings; FAIRSEQ_CONFIG_FIELDS says what each one does."""
    name_key = "_name" if m.get("_name") is not None else "arch"
    allowed = ((name_key, ("wav2vec2",)), ("activation_fn", ("gelu",)), ("layer_type", ("transformer",)),
               ("extractor_mode", ("default", "layer_norm")), ("pos_conv_depth", (1,)), ("crop_seq_to_multiple", (1,)),
               ("conv_pos_batch_norm", (False,)), ("quantize_input", (False,)))
    _refuse(where, [_setting(key, value) for key, ok in allowed if (value := _opt(m, key, ok[0])) not in ok],
            "use a wav2vec 2.0 checkpoint with the standard transformer encoder "
            "(gelu, layer_type 'transformer', one positional conv, no input quantizer).")

    def make() -> Wav2Vec2Config:
        conv = _eval_conv_spec(_opt(m, "conv_feature_layers", _FAIRSEQ_CONV))
        hidden = int(_opt(m, "encoder_embed_dim", 768))
        final_dim = int(_opt(m, "final_dim", 0)) or hidden
        return Wav2Vec2Config(
            **_fields(partial(_opt, m), _FAIRSEQ_FIELDS), conv_dim=tuple(c[0] for c in conv),
            conv_kernel=tuple(c[1] for c in conv), conv_stride=tuple(c[2] for c in conv),
            feat_extract_norm="group" if _opt(m, "extractor_mode", "default") == "default" else "layer",
            hidden_size=hidden, layer_norm_eps=1e-5,  # fairseq's LayerNorm default; no setting changes it
            feature_proj=int(conv[-1][0]) != hidden,  # fairseq: post_extract_proj only when the dims differ
            codevector_dim=int(_opt(m, "latent_dim", 0)) or final_dim, final_dim=final_dim,
        )

    return _build_config(where, make, "pass the original fairseq checkpoint or a Hugging Face directory.")


def _fairseq_heads_refused(m: dict) -> tuple[str, ...]:
    """Settings under which fairseq's pre-training heads differ from GumbelQuantizer + PretrainHeads."""
    q, glu, depth = _opt(m, "quantize_targets", False), _opt(m, "target_glu", False), _opt(m, "quantizer_depth", 1)
    refused = {"quantize_targets": (q, not q), "target_glu": (glu, glu), "quantizer_depth": (depth, int(depth) != 1)}
    return tuple(_setting(name, value) for name, (value, bad) in refused.items() if bad)


_RESAVE_HINT = (
    "Fix: convert it to a Hugging Face directory (transformers' wav2vec2 conversion script), or, on a machine "
    "where you trust the file, keep only plain data: python -c \"import torch; from omegaconf import OmegaConf; "
    "c = torch.load('IN.pt', weights_only=False); cfg = c.get('cfg'); "
    "cfg = OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {'model': vars(c['args'])}; "
    "torch.save({'cfg': cfg, 'model': c['model']}, 'OUT.pt')\" and pass OUT.pt."
)


def _torch_load_plain(path: Path) -> dict:
    """torch.load with weights_only=True, allowing only argparse.Namespace (fairseq's old `args`),
    a plain attribute bag; anything else that the file pickles is refused with the way out."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # refused globals, truncated zip, not a zip, permissions
        try:
            blocked = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                       if g != "argparse.Namespace"]
        except Exception:  # not a readable zip: then the file itself is the problem
            blocked = []
        if blocked:
            raise QuambaEdgeError(
                f"{path} pickles Python objects beyond tensors and plain data ({', '.join(blocked[:6])}), which "
                f"quamba-edge will not unpickle (loading them could run code from the file). {_RESAVE_HINT}"
            ) from exc
        raise QuambaEdgeError(f"{path} could not be read as a torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:200]}). Fix: copy or download it again.") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise QuambaEdgeError(f"{path} is not a fairseq checkpoint (no `model` state dict). "
                              "Fix: pass a fairseq wav2vec2 .pt, a Hugging Face directory, or our own directory.")
    return ckpt


def _read_fairseq(path: Path) -> _Checkpoint:
    where = str(path)
    ckpt = _torch_load_plain(path)
    try:
        model_cfg, prefix = _fairseq_model_cfg(ckpt, where)
    except TypeError as exc:
        raise QuambaEdgeError(f"{where} has an unreadable cfg ({exc}). {_RESAVE_HINT}") from exc
    cfg = _fairseq_config(model_cfg, where)
    state = ckpt["model"]
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    encoder, heads = _rename(state, _FAIRSEQ_RULES, _FAIRSEQ_IGNORED, where)
    return _Checkpoint(cfg, encoder, heads, where, _fairseq_heads_refused(model_cfg))


# --- ours


def _read_ours(model_dir: Path, raw: dict) -> _Checkpoint:
    where = str(model_dir)
    if raw.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise QuambaEdgeError(f"{where} was written by a newer quamba-edge (format {raw['format_version']}). "
                              "Fix: upgrade quamba-edge.")
    if not isinstance(raw.get("config"), dict):
        raise QuambaEdgeError(f"{where}/config.json has no `config` object. Fix: write it again with save_wav2vec2.")
    try:
        cfg = Wav2Vec2Config.from_dict(raw["config"])
    except (TypeError, ValueError) as exc:
        raise QuambaEdgeError(f"{where}/config.json is malformed ({exc}). Fix: write it again.") from exc
    except QuambaEdgeError as exc:  # an invalid combination of values, or keys from a newer tool
        raise QuambaEdgeError(f"{where}/config.json: {exc}") from exc
    if not (model_dir / WEIGHTS_FILE).exists():
        raise QuambaEdgeError(f"{where} has config.json but no {WEIGHTS_FILE}. Fix: write it again with "
                              "save_wav2vec2.")
    fix = "Fix: copy or write it again."
    heads = read_safetensors(model_dir / HEADS_FILE, fix) if (model_dir / HEADS_FILE).exists() else {}
    return _Checkpoint(cfg, read_safetensors(model_dir / WEIGHTS_FILE, fix), heads, where)


def _read_any(path: str | Path) -> _Checkpoint:
    path = Path(path).expanduser()
    fix = ("Fix: pass a Hugging Face wav2vec2 directory, a fairseq wav2vec2 .pt file, or a directory "
           "written by save_wav2vec2.")
    if not path.exists():
        raise QuambaEdgeError(f"no such wav2vec2 checkpoint: {path}. {fix}")
    if path.is_file():
        if path.suffix in (".safetensors", ".json", ".bin"):
            raise QuambaEdgeError(f"{path} is one file of a checkpoint directory. Fix: pass {path.parent}.")
        return _read_fairseq(path)
    config = path / "config.json"
    if not config.exists():
        raise QuambaEdgeError(f"{path} has no config.json. {fix}")
    try:
        raw = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuambaEdgeError(f"{config} is not valid JSON ({exc}). Fix: restore the file.") from exc
    if not isinstance(raw, dict):
        raise QuambaEdgeError(f"{config} is not a JSON object. Fix: restore the file.")
    if raw.get("family") == FAMILY:
        return _read_ours(path, raw)
    if raw.get("model_type") == "wav2vec2":
        return _read_hf(path, raw)
    kind = raw.get("family") or raw.get("model_type") or "unknown"
    raise QuambaEdgeError(f"{path} holds a {kind!r} model, not wav2vec2. {fix}")


def _check_and_load(module: nn.Module, state: dict[str, Tensor], where: str, what: str,
                    optional: tuple[str, ...] = ()) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    detail = "; ".join(f"{label}: {keys}" for label, keys in (
        ("missing", _few(missing)), ("unexpected", _few(unexpected)), ("wrong shape", ", ".join(wrong[:3]))) if keys)
    if detail:
        raise QuambaEdgeError(f"the {what} weights in {where} do not match its config ({detail}). "
                              "Fix: the checkpoint is incomplete or its config belongs to another model; "
                              "re-export both together.")
    with torch.no_grad():
        for key, value in state.items():
            target = expected[key]
            if not torch.is_floating_point(value):
                raise QuambaEdgeError(f"{where}: {key} is {value.dtype}, expected floating point weights.")
            target.copy_(value.to(target.dtype))


def load_wav2vec2(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Wav2Vec2Encoder, Wav2Vec2Config]:
    """Load the encoder from whichever layout the user has (HF directory, fairseq .pt, our directory),
    checking every tensor so a mismatched config fails here instead of producing silent garbage.

    A checkpoint without a mask embedding (HF models saved with masking disabled) keeps a fresh random
    one: it only matters when the caller masks frames."""
    ckpt = _read_any(path)
    with on_meta():  # skip the random init that the checkpoint overwrites (~1 s for BASE)
        model = Wav2Vec2Encoder(ckpt.cfg)
    model = model.to_empty(device="cpu")
    if "mask_emb" not in ckpt.encoder:
        nn.init.uniform_(model.mask_emb)
    _check_and_load(model, ckpt.encoder, ckpt.where, "encoder", optional=("mask_emb",))
    return model.to(dtype).eval(), ckpt.cfg


def load_pretrain_heads(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[GumbelQuantizer, PretrainHeads]:
    """The quantizer and contrastive projections of a pre-training checkpoint, to continue
    pre-training from them rather than from random heads."""
    ckpt = _read_any(path)
    fresh = "start fresh heads with GumbelQuantizer.from_config(cfg) and PretrainHeads.from_config(cfg)"
    if not ckpt.heads:
        raise QuambaEdgeError(f"{ckpt.where} has no quantizer (it is an encoder-only or fine-tuned checkpoint). "
                              f"Fix: {fresh}, or pass a pre-training checkpoint.")
    _refuse(ckpt.where, ckpt.heads_refused, f"{fresh}; the encoder itself loads with load_wav2vec2.",
            "the pre-training head")
    quantizer, heads = GumbelQuantizer.from_config(ckpt.cfg), PretrainHeads.from_config(ckpt.cfg)
    for module, prefix, what in ((quantizer, "quantizer.", "quantizer"), (heads, "heads.", "pre-training head")):
        state = {k.removeprefix(prefix): v for k, v in ckpt.heads.items() if k.startswith(prefix)}
        _check_and_load(module, state, ckpt.where, what)
    return quantizer.to(dtype).eval(), heads.to(dtype).eval()


def _save(out_dir: str | Path, payload: dict, files: dict[str, dict[str, Tensor]]) -> Path:
    """Write config.json (`payload` after our family and format version) and each non-empty state dict, in fp32.

    The directory is built under a temporary name and swapped in whole, so a crash leaves either the
    old checkpoint or the new one, never a config that disagrees with its weights."""
    out_dir = Path(out_dir)
    payload = {"family": FAMILY, "format_version": FORMAT_VERSION, **payload}
    with staged_dir(out_dir, ours=lambda d: checkpoint_family(d) == FAMILY,
                    what="a quamba-edge wav2vec2 checkpoint") as tmp:
        for name, state in files.items():
            if state:
                state = {k: v.detach().float().contiguous().cpu() for k, v in state.items()}
                save_file(state, str(tmp / name), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(payload, indent=2) + "\n")
    return out_dir


def save_wav2vec2(model: Wav2Vec2Encoder, cfg: Wav2Vec2Config, out_dir: str | Path,
                  quantizer: GumbelQuantizer | None = None, heads: PretrainHeads | None = None) -> None:
    """Write config.json + model.safetensors (+ pretrain_heads.safetensors when heads are given)."""
    if model.cfg != cfg:
        raise QuambaEdgeError("save_wav2vec2: cfg differs from the model's own config; pass model.cfg.")
    if (quantizer is None) != (heads is None):
        raise QuambaEdgeError("save_wav2vec2: pass both quantizer and heads, or neither.")
    head_state = {f"{prefix}.{k}": v for prefix, module in (("quantizer", quantizer), ("heads", heads))
                  if module is not None for k, v in module.state_dict().items()}
    _save(out_dir, {"config": cfg.to_dict()}, {WEIGHTS_FILE: model.state_dict(), HEADS_FILE: head_state})


# ---------------------------------------------------------------------------------------- keyword spotter


def save_kws(model: KeywordSpotter, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Our wav2vec2 directory for the encoder + a `kws` block (and `extra`) in config.json + kws_head.safetensors."""
    payload = {"config": model.encoder.cfg.to_dict(), "kws": model.cfg.to_dict(), **(extra or {})}
    return _save(out_dir, payload, {WEIGHTS_FILE: model.encoder.state_dict(), HEAD_FILE: model.head.state_dict()})


def is_kws_checkpoint(path: str | Path) -> bool:
    try:
        raw = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("family") == FAMILY and "kws" in raw


def load_kws(path: str | Path) -> KeywordSpotter:
    path = Path(path)
    if not is_kws_checkpoint(path):
        raise QuambaEdgeError(f"{path} is not a keyword-spotting checkpoint (no `kws` block in config.json). "
                              "Fix: fine-tune one with `python benchmarks/kws.py`, or pass a KWS directory.")
    encoder, _ = load_wav2vec2(path)
    model = KeywordSpotter(encoder, KwsConfig.from_dict(json.loads((path / "config.json").read_text())["kws"]))
    state = read_safetensors(path / HEAD_FILE, "Fix: save the model again.")
    _check_and_load(model.head, state, str(path), "keyword-spotting head")
    return model.eval()
