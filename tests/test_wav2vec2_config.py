"""Checkpoint settings: every field of transformers' Wav2Vec2Config is in the loader's table, every setting
the table says is refused is refused by name and value, and the honoured ones that the standard tests do not
vary (exact-GELU aliases, layer_norm_eps, odd positional kernels, mixed norm layouts, conv bias, the
training-only and head-only fields) give transformers' Wav2Vec2Model output."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from quamba_edge.checkpoints.wav2vec2 import FAIRSEQ_CONFIG_FIELDS, HF_CONFIG_FIELDS, load_pretrain_heads, load_wav2vec2
from quamba_edge.errors import QuambaEdgeError

VERDICTS = ("honoured", "refused", "ignored")

HF_REFUSED = [
    ("hidden_act", "gelu_new"), ("hidden_act", "relu"), ("feat_extract_activation", "relu"),
    ("feat_extract_activation", "gelu_fast"), ("feat_extract_norm", "batch"), ("add_adapter", True),
    ("adapter_attn_dim", 16),
]
FAIRSEQ_REFUSED = [
    ("_name", "hubert"), ("activation_fn", "relu"), ("activation_fn", "gelu_accurate"),
    ("layer_type", "conformer"), ("layer_type", "trf_adp"), ("extractor_mode", "group"), ("pos_conv_depth", 5),
    ("conv_pos_batch_norm", True), ("quantize_input", True), ("crop_seq_to_multiple", 2),
]
FAIRSEQ_HEADS_REFUSED = [("quantize_targets", False), ("target_glu", True), ("quantizer_depth", 2)]


def _refused_fields(table: dict[str, str]) -> set[str]:
    """The table's names of settings with a refused value ("_name / arch" is two names)."""
    return {name for key, verdict in table.items() if verdict.startswith("refused") or "else refused" in verdict
            for name in key.split(" / ")}


# ------------------------------------------------------------------------------------------------ table


def test_hf_table_lists_exactly_the_fields_of_the_installed_transformers():
    tf = pytest.importorskip("transformers")
    own = {f.name for f in dataclasses.fields(tf.Wav2Vec2Config)} - {f.name for f in
                                                                    dataclasses.fields(tf.PreTrainedConfig)}
    own.add("num_feat_extract_layers")  # set in __post_init__, stored in config.json
    listed = {name for name in HF_CONFIG_FIELDS if not name.startswith("(")}
    assert listed == own, f"not listed: {sorted(own - listed)}; stale: {sorted(listed - own)}"


def test_every_verdict_is_honoured_refused_or_ignored_and_every_refusal_is_tested():
    for table in (HF_CONFIG_FIELDS, FAIRSEQ_CONFIG_FIELDS):
        assert all(verdict.startswith(VERDICTS) for verdict in table.values())
    assert {f for f, _ in HF_REFUSED} == _refused_fields(HF_CONFIG_FIELDS)
    tested = {f for f, _ in FAIRSEQ_REFUSED + FAIRSEQ_HEADS_REFUSED} | {"arch"}  # arch: the next-but-one test
    assert tested == _refused_fields(FAIRSEQ_CONFIG_FIELDS)


# ---------------------------------------------------------------------------------------------- refusals


def _hf_dir(root: Path, **raw: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "wav2vec2", **raw}))
    return root


@pytest.mark.parametrize("field,value", HF_REFUSED)
def test_hf_setting_is_refused_by_name_and_value(tmp_path, field, value):
    path = _hf_dir(tmp_path / "m", **{field: value})
    with pytest.raises(QuambaEdgeError) as err:
        load_wav2vec2(path)
    message = str(err.value)
    assert f"`{field}: {value!r}`" in message and str(path) in message and "Fix:" in message


def test_hf_refusal_names_every_offending_setting_at_once(tmp_path):
    path = _hf_dir(tmp_path / "m", hidden_act="relu", feat_extract_activation="gelu_new", add_adapter=True)
    with pytest.raises(QuambaEdgeError, match="`hidden_act: 'relu'`, `feat_extract_activation: 'gelu_new'`, "
                                              "`add_adapter: True`"):
        load_wav2vec2(path)


def _fairseq_file(path: Path, model_cfg: dict, state: dict | None = None) -> Path:
    torch.save({"cfg": {"model": model_cfg}, "model": state or {}}, path)
    return path


@pytest.mark.parametrize("field,value", FAIRSEQ_REFUSED)
def test_fairseq_setting_is_refused_by_name_and_value(tmp_path, field, value):
    path = _fairseq_file(tmp_path / "m.pt", {"_name": "wav2vec2", field: value})
    with pytest.raises(QuambaEdgeError) as err:
        load_wav2vec2(path)
    message = str(err.value)
    assert f"`{field}: {value!r}`" in message and str(path) in message and "Fix:" in message


def test_fairseq_old_args_arch_is_checked_and_fine_tuning_layer_type_overrides(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"args": argparse.Namespace(arch="wav2vec", conv_feature_layers="[(512, 10, 5)]"), "model": {}},
               path)
    with pytest.raises(QuambaEdgeError, match="`arch: 'wav2vec'`"):
        load_wav2vec2(path)
    # fairseq's wav2vec_ctc builds the encoder with the fine-tuning config's layer_type
    ctc = {"_name": "wav2vec_ctc", "layer_type": "trf_adp",
           "w2v_args": {"model": {"_name": "wav2vec2", "layer_type": "transformer"}}}
    with pytest.raises(QuambaEdgeError, match="`layer_type: 'trf_adp'`"):
        load_wav2vec2(_fairseq_file(tmp_path / "ctc.pt", ctc))


@pytest.mark.parametrize("field,value", FAIRSEQ_HEADS_REFUSED)
def test_fairseq_head_setting_is_refused_by_load_pretrain_heads(tmp_path, field, value):
    heads = {"project_q.weight": torch.zeros(4, 4), "project_q.bias": torch.zeros(4),
             "final_proj.weight": torch.zeros(4, 8), "final_proj.bias": torch.zeros(4)}
    cfg = {"_name": "wav2vec2", "quantize_targets": True, field: value}
    path = _fairseq_file(tmp_path / "m.pt", cfg, heads)
    with pytest.raises(QuambaEdgeError) as err:
        load_pretrain_heads(path)
    message = str(err.value)
    assert f"`{field}: {value!r}`" in message and "pre-training head" in message and "Fix:" in message


# --------------------------------------------------------------------------- honoured, against transformers


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16, 16),
            conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=4)
HONOURED = {
    "gelu_python": dict(hidden_act="gelu_python", feat_extract_activation="gelu_python"),
    "eps_layer_conv": dict(layer_norm_eps=0.5, feat_extract_norm="layer"),
    "eps_group_conv_pre_ln": dict(layer_norm_eps=0.5, do_stable_layer_norm=True),
    "odd_pos_kernel": dict(num_conv_pos_embeddings=7),
    "pre_ln_group_conv_bias": dict(do_stable_layer_norm=True, feat_extract_norm="group", conv_bias=True),
    "post_ln_layer_conv": dict(do_stable_layer_norm=False, feat_extract_norm="layer"),
    "training_and_head_only": dict(
        use_weighted_layer_sum=True, apply_spec_augment=False, mask_time_prob=0.0, mask_feature_prob=0.3,
        hidden_dropout=0.4, attention_dropout=0.4, activation_dropout=0.4, feat_proj_dropout=0.4, layerdrop=0.4,
        final_dropout=0.4, vocab_size=7, classifier_proj_size=5, tdnn_dim=(8, 8), tdnn_kernel=(3, 1),
        tdnn_dilation=(1, 1), xvector_output_dim=6, num_negatives=3, contrastive_logits_temperature=0.7,
        initializer_range=0.5, adapter_kernel_size=5, adapter_stride=3, num_adapter_layers=1,
        output_hidden_size=48),
}


@pytest.mark.parametrize("case", list(HONOURED))
def test_honoured_hf_setting_matches_transformers(tmp_path, case):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(31)
    model = tf.Wav2Vec2Model(tf.Wav2Vec2Config(**{**TINY, **HONOURED[case]})).eval()
    gen = torch.Generator().manual_seed(32)
    with torch.no_grad():  # transformers' init leaves norms at 1/0 and biases at 0: give them their own values
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    model.save_pretrained(tmp_path)
    ours, cfg = load_wav2vec2(tmp_path)
    wave = torch.randn(2, 3000, generator=torch.Generator().manual_seed(33))
    with torch.no_grad():
        ref = model(wave)
        out = ours(wave)
    assert out.hidden.shape == ref.last_hidden_state.shape
    assert ((out.hidden - ref.last_hidden_state).norm() / ref.last_hidden_state.norm()).item() < 1e-5
    assert ((out.features - ref.extract_features).norm() / ref.extract_features.norm()).item() < 1e-5
    if "layer_norm_eps" in HONOURED[case]:
        assert cfg.layer_norm_eps == 0.5
        assert all(layer.norm.eps == 1e-5 for layer in ours.feature_encoder.conv_layers if layer.norm_kind)
