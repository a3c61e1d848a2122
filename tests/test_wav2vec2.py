"""wav2vec2 encoder: agreement with transformers on HF and fairseq checkpoints, our format, bad inputs,
and the Gumbel quantizer. The checkpoints are random models the tests write themselves."""

from __future__ import annotations

import argparse
import ast
import fractions
import json
import math

import pytest
import torch
import torch.nn.functional as F

from quamba_edge.checkpoints.wav2vec2 import load_pretrain_heads, load_wav2vec2, save_wav2vec2
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.models.wav2vec2 import GumbelQuantizer, PretrainHeads, Wav2Vec2Config, Wav2Vec2Encoder

transformers = pytest.importorskip("transformers")

FAIRSEQ_BASE_CONV = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def perturb_vectors(model: torch.nn.Module, seed: int) -> None:
    """HF initialises norms to 1/0, biases to 0 and the weight-norm gain g to ||v||: a swapped LayerNorm,
    a dropped bias or an ignored g would then go unnoticed. Give those parameters their own values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            elif name.endswith(("original0", "weight_g")):
                p.mul_(1.0 + 0.3 * torch.rand(p.shape, generator=gen))


def small_hf_config(large_style: bool, last_conv_dim: int = 32) -> transformers.Wav2Vec2Config:
    """2 layers; large_style: LayerNorm in every conv (with bias) and a pre-LN transformer (LARGE-lv60)."""
    return transformers.Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        conv_dim=(32, 32, last_conv_dim), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer" if large_style else "group", do_stable_layer_norm=large_style,
        conv_bias=large_style, num_codevector_groups=2, num_codevectors_per_group=20, codevector_dim=32,
        proj_codevector_dim=24, mask_time_prob=0.05,
    )


def hf_to_fairseq(state: dict[str, torch.Tensor], layer_norm_conv: bool) -> dict[str, torch.Tensor]:
    """Rename a transformers state dict to fairseq's wav2vec2 names (written out here, independently of
    the loader, from fairseq's module layout)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("wav2vec2.")
        parts = key.split(".")
        if key.startswith("feature_extractor.conv_layers."):
            i, kind, leaf = parts[2], parts[3], parts[-1]
            slot = "0" if kind == "conv" else ("2.1" if layer_norm_conv else "2")
            key = f"feature_extractor.conv_layers.{i}.{slot}.{leaf}"
        elif key.startswith("feature_projection.layer_norm."):
            key = "layer_norm." + parts[-1]
        elif key.startswith("feature_projection.projection."):
            key = "post_extract_proj." + parts[-1]
        elif key == "masked_spec_embed":
            key = "mask_emb"
        elif key.startswith("encoder.pos_conv_embed.conv."):
            leaf = {"original0": "weight_g", "original1": "weight_v"}.get(parts[-1], parts[-1])
            key = "encoder.pos_conv.0." + leaf
        elif key.startswith("encoder.layers."):
            key = (key.replace(".attention.", ".self_attn.").replace(".layer_norm.", ".self_attn_layer_norm.")
                   .replace(".feed_forward.intermediate_dense.", ".fc1.")
                   .replace(".feed_forward.output_dense.", ".fc2."))
        elif key == "quantizer.codevectors":
            key = "quantizer.vars"
        elif key.startswith("project_hid."):
            key = "final_proj." + parts[-1]
        out[key] = value.clone()
    return out


def fairseq_model_cfg(hf: transformers.Wav2Vec2Config, conv_spec: str | None = None) -> dict:
    spec = conv_spec or repr([tuple(t) for t in zip(hf.conv_dim, hf.conv_kernel, hf.conv_stride)])
    return {
        "_name": "wav2vec2", "extractor_mode": "layer_norm" if hf.feat_extract_norm == "layer" else "default",
        "encoder_layers": hf.num_hidden_layers, "encoder_embed_dim": hf.hidden_size,
        "encoder_ffn_embed_dim": hf.intermediate_size, "encoder_attention_heads": hf.num_attention_heads,
        "activation_fn": "gelu", "layer_norm_first": hf.do_stable_layer_norm, "conv_feature_layers": spec,
        "conv_bias": hf.conv_bias, "conv_pos": hf.num_conv_pos_embeddings,
        "conv_pos_groups": hf.num_conv_pos_embedding_groups, "latent_vars": hf.num_codevectors_per_group,
        "latent_groups": hf.num_codevector_groups, "latent_dim": hf.codevector_dim,
        "final_dim": hf.proj_codevector_dim, "dropout": 0.1, "encoder_layerdrop": 0.05, "feature_grad_mult": 0.1,
        "quantize_targets": True,
    }


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """A randomly initialised BASE-shape transformers Wav2Vec2Model, saved, with reference outputs."""
    torch.manual_seed(0)
    model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config()).eval()
    perturb_vectors(model, 1)
    out_dir = tmp_path_factory.mktemp("hf_base")
    model.save_pretrained(out_dir)
    wave = torch.randn(2, 16000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(wave)
    return model, out_dir, wave, ref


@pytest.fixture(scope="module", params=[False, True], ids=["post-LN-group", "pre-LN-layer"])
def hf_small(request, tmp_path_factory):
    """A small Wav2Vec2ForPreTraining (so the checkpoint also carries the quantizer and heads)."""
    torch.manual_seed(3)
    model = transformers.Wav2Vec2ForPreTraining(small_hf_config(request.param)).eval()
    perturb_vectors(model, 4)
    out_dir = tmp_path_factory.mktemp("hf_small")
    model.save_pretrained(out_dir)
    return model, out_dir


# ------------------------------------------------------------------------------------- HF agreement


@pytest.fixture(scope="module")
def ours_base(hf_base):
    return load_wav2vec2(hf_base[1])


def test_base_hf_checkpoint_matches_transformers(hf_base, ours_base):
    _, _, wave, ref = hf_base
    ours, cfg = ours_base
    assert (cfg.hidden_size, cfg.num_layers, cfg.conv_dim, cfg.feat_extract_norm, cfg.layer_norm_first) == (
        768, 12, (512,) * 7, "group", False)
    with torch.no_grad():
        out = ours(wave)
    assert out.hidden.shape == ref.last_hidden_state.shape == (2, 49, 768)
    assert rel_err(out.hidden, ref.last_hidden_state) < 1e-4
    # the quantizer's input is the LayerNorm'd conv output, which HF returns as extract_features
    assert rel_err(out.features, ref.extract_features) < 1e-5
    assert out.frame_mask.all()


def test_small_hf_pretraining_checkpoint_matches(hf_small):
    model, out_dir = hf_small
    ours, cfg = load_wav2vec2(out_dir)  # keys carry the `wav2vec2.` prefix of Wav2Vec2ForPreTraining
    assert cfg.layer_norm_first == model.config.do_stable_layer_norm
    wave = torch.randn(3, 4000, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model.wav2vec2(wave)
        out = ours(wave)
    assert rel_err(out.hidden, ref.last_hidden_state) < 1e-5
    assert rel_err(out.features, ref.extract_features) < 1e-5


def test_hf_ctc_checkpoint_loads_encoder_without_lm_head(tmp_path):
    torch.manual_seed(23)
    hf_cfg = small_hf_config(large_style=False)
    hf_cfg.vocab_size, hf_cfg.mask_time_prob = 30, 0.0  # fine-tuned exports often carry no mask embedding
    model = transformers.Wav2Vec2ForCTC(hf_cfg).eval()
    perturb_vectors(model, 24)
    model.save_pretrained(tmp_path)
    ours, _ = load_wav2vec2(tmp_path)
    wave = torch.randn(2, 3000, generator=torch.Generator().manual_seed(25))
    with torch.no_grad():
        assert rel_err(ours(wave).hidden, model.wav2vec2(wave).last_hidden_state) < 1e-5
    assert torch.isfinite(ours.mask_emb).all()


def test_pretrain_heads_match_hf_quantizer_in_eval(hf_small):
    model, out_dir = hf_small
    quantizer, heads = load_pretrain_heads(out_dir)
    features = torch.randn(2, 30, 32, generator=torch.Generator().manual_seed(6))
    hidden = torch.randn(2, 30, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref_q, ref_ppl = model.quantizer(features)
        got = quantizer(features)
        pred, target = heads(hidden, got.quantized)
        assert torch.allclose(got.quantized, ref_q, atol=1e-6)
        assert torch.allclose(got.code_perplexity, ref_ppl, atol=1e-4)  # HF reports the argmax perplexity in eval
        assert torch.allclose(pred, model.project_hid(hidden), atol=1e-5)
        assert torch.allclose(target, model.project_q(ref_q), atol=1e-5)


def test_mask_uses_mask_emb_like_hf_mask_time_indices(hf_small):
    model, out_dir = hf_small
    ours, _ = load_wav2vec2(out_dir)
    wave = torch.randn(2, 4000, generator=torch.Generator().manual_seed(8))
    t = ours.frames_for(4000)
    mask = torch.rand(2, t, generator=torch.Generator().manual_seed(9)) < 0.4
    mask[:, 3:6] = True
    with torch.no_grad():
        ref = model.wav2vec2(wave, mask_time_indices=mask).last_hidden_state
        out = ours(wave, mask=mask)
        plain = ours(wave)
    assert rel_err(out.hidden, ref) < 1e-5
    assert rel_err(out.hidden, plain.hidden) > 1e-2  # the mask changed the output...
    assert torch.equal(out.features, plain.features)  # ...but not the quantizer targets


def test_padded_batch_matches_hf_and_unpadded_run(hf_small):
    model, out_dir = hf_small
    ours, cfg = load_wav2vec2(out_dir)
    gen = torch.Generator().manual_seed(10)
    short, long = 2500, 4000
    wave = torch.randn(2, long, generator=gen)
    wave[1, short:] = 0.0
    attention_mask = torch.ones(2, long, dtype=torch.long)
    attention_mask[1, short:] = 0
    with torch.no_grad():
        ref = model.wav2vec2(wave, attention_mask=attention_mask).last_hidden_state
        out = ours(wave, attention_mask=attention_mask)
        alone = ours(wave[1:, :short]).hidden[0]
    n_short = cfg.frames_for(short)
    assert out.frame_mask.sum(1).tolist() == [cfg.frames_for(long), n_short]
    valid = out.frame_mask
    assert rel_err(out.hidden[valid], ref[valid]) < 1e-5
    if cfg.feat_extract_norm == "layer":
        # per-frame norms: the real frames of a padded example equal an unpadded run of that example
        assert rel_err(out.hidden[1, :n_short], alone) < 1e-5
    else:
        # GroupNorm normalises over time, padding included (why BASE models are run without padding)
        assert rel_err(out.hidden[1, :n_short], alone) > 1e-3


# ------------------------------------------------------------------------------------- fairseq format


def test_fairseq_base_checkpoint_matches(hf_base, ours_base, tmp_path):
    """Same weights through the fairseq layout: every tensor equals the HF-loaded encoder's (whose
    output matches transformers above), and so do the outputs."""
    model, *_ = hf_base
    state = hf_to_fairseq(model.state_dict(), layer_norm_conv=False)
    assert "encoder.pos_conv.0.weight_g" in state and "feature_extractor.conv_layers.0.2.weight" in state
    cfg = fairseq_model_cfg(model.config, FAIRSEQ_BASE_CONV)
    path = tmp_path / "wav2vec_small.pt"
    torch.save({"cfg": {"model": cfg, "task": {"_name": "audio_pretraining"}}, "model": state}, path)
    del state
    ours, got_cfg = load_wav2vec2(path)
    assert got_cfg.conv_kernel == (10, 3, 3, 3, 3, 2, 2) and got_cfg.feature_grad_mult == 0.1
    reference = ours_base[0].state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, reference[key]), key
    wave = torch.randn(1, 4000, generator=torch.Generator().manual_seed(22))
    with torch.no_grad():
        assert torch.equal(ours(wave).hidden, ours_base[0](wave).hidden)


def test_fairseq_small_checkpoint_with_args_namespace_and_heads(hf_small, tmp_path):
    """Older fairseq checkpoints pickle an argparse.Namespace as `args`; it must load with weights_only."""
    model, _ = hf_small
    layer_conv = model.config.feat_extract_norm == "layer"
    state = hf_to_fairseq(model.state_dict(), layer_norm_conv=layer_conv)
    assert ("feature_extractor.conv_layers.1.2.1.weight" in state) == layer_conv
    path = tmp_path / "old.pt"
    torch.save({"args": argparse.Namespace(arch="wav2vec2", **fairseq_model_cfg(model.config)), "model": state},
               path)
    ours, cfg = load_wav2vec2(path)
    assert cfg.codevector_dim == 32 and cfg.final_dim == 24
    wave = torch.randn(2, 3000, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        assert rel_err(ours(wave).hidden, model.wav2vec2(wave).last_hidden_state) < 1e-5
        quantizer, heads = load_pretrain_heads(path)
        features = torch.randn(1, 9, 32, generator=torch.Generator().manual_seed(12))
        assert torch.allclose(quantizer(features).quantized, model.quantizer(features)[0], atol=1e-6)
        assert torch.equal(heads.final_proj.weight, model.project_hid.weight)


def test_fairseq_fine_tuned_checkpoint_loads_encoder(hf_small, tmp_path):
    model, _ = hf_small
    inner = hf_to_fairseq(model.wav2vec2.state_dict(), layer_norm_conv=model.config.feat_extract_norm == "layer")
    state = {f"w2v_encoder.w2v_model.{k}": v for k, v in inner.items()}
    state["w2v_encoder.proj.weight"] = torch.zeros(32, 64)  # the CTC output layer, not part of the encoder
    state["w2v_encoder.proj.bias"] = torch.zeros(32)
    cfg = {"model": {"_name": "wav2vec_ctc", "w2v_args": {"model": fairseq_model_cfg(model.config)}}}
    path = tmp_path / "ctc.pt"
    torch.save({"cfg": cfg, "model": state}, path)
    ours, _ = load_wav2vec2(path)
    wave = torch.randn(1, 3000, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        assert rel_err(ours(wave).hidden, model.wav2vec2(wave).last_hidden_state) < 1e-5
    with pytest.raises(QuambaEdgeError, match="no quantizer"):
        load_pretrain_heads(path)


def test_fairseq_target_glu_checkpoint_loads_encoder_and_refuses_heads(hf_small, tmp_path):
    """target_glu only changes the contrastive targets: the encoder loads, the heads are refused by name."""
    model, _ = hf_small
    state = hf_to_fairseq(model.state_dict(), layer_norm_conv=model.config.feat_extract_norm == "layer")
    state["target_glu.0.weight"], state["target_glu.0.bias"] = torch.zeros(48, 24), torch.zeros(48)
    path = tmp_path / "glu.pt"
    torch.save({"cfg": {"model": {**fairseq_model_cfg(model.config), "target_glu": True}}, "model": state}, path)
    ours, _ = load_wav2vec2(path)
    wave = torch.randn(1, 3000, generator=torch.Generator().manual_seed(27))
    with torch.no_grad():
        assert rel_err(ours(wave).hidden, model.wav2vec2(wave).last_hidden_state) < 1e-5
    with pytest.raises(QuambaEdgeError, match="`target_glu: True`"):
        load_pretrain_heads(path)


# -------------------------------------------------------------------- fairseq without post_extract_proj


def fairseq_forward_without_projection(state: dict[str, torch.Tensor], model_cfg: dict,
                                       wave: torch.Tensor) -> torch.Tensor:
    """fairseq's Wav2Vec2Model in eval with features_only and no masking, for a checkpoint whose last conv dim
    equals encoder_embed_dim, written out here from the raw fairseq weights in float64: conv stack -> layer_norm
    -> (no post_extract_proj) -> + positional conv (weight norm over dim 2, SamePad, GELU) -> transformer."""
    s = {k: v.double() for k, v in state.items()}
    d, heads = model_cfg["encoder_embed_dim"], model_cfg["encoder_attention_heads"]
    x = wave.double().unsqueeze(1)
    for i, (c, _, stride) in enumerate(ast.literal_eval(model_cfg["conv_feature_layers"])):
        p = f"feature_extractor.conv_layers.{i}."
        x = F.conv1d(x, s[p + "0.weight"], s.get(p + "0.bias"), stride=stride)
        if model_cfg["extractor_mode"] == "layer_norm":
            x = F.layer_norm(x.transpose(1, 2), (c,), s[p + "2.1.weight"], s[p + "2.1.bias"]).transpose(1, 2)
        elif i == 0:
            x = F.group_norm(x, c, s[p + "2.weight"], s[p + "2.bias"])
        x = F.gelu(x)
    assert x.shape[1] == d

    def ln(y: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(y, (d,), s[name + ".weight"], s[name + ".bias"])

    def lin(y: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(y, s[name + ".weight"], s[name + ".bias"])

    def attn(y: torch.Tensor, p: str) -> torch.Tensor:
        b, t, _ = y.shape
        q, k, v = (lin(y, f"{p}self_attn.{n}_proj").view(b, t, heads, -1).transpose(1, 2) for n in "qkv")
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        return lin((probs @ v).transpose(1, 2).reshape(b, t, d), p + "self_attn.out_proj")

    x = ln(x.transpose(1, 2), "layer_norm")  # the feature LayerNorm; fairseq has no projection after it here
    g, v = s["encoder.pos_conv.0.weight_g"], s["encoder.pos_conv.0.weight_v"]
    kernel = v.shape[-1]
    pos = F.conv1d(x.transpose(1, 2), g * v / v.norm(dim=(0, 1), keepdim=True), s["encoder.pos_conv.0.bias"],
                   padding=kernel // 2, groups=model_cfg["conv_pos_groups"])
    if kernel % 2 == 0:
        pos = pos[..., :-1]
    x = x + F.gelu(pos).transpose(1, 2)
    pre_ln = model_cfg["layer_norm_first"]
    if not pre_ln:
        x = ln(x, "encoder.layer_norm")
    for i in range(model_cfg["encoder_layers"]):
        p = f"encoder.layers.{i}."
        if pre_ln:
            x = x + attn(ln(x, p + "self_attn_layer_norm"), p)
            x = x + lin(F.gelu(lin(ln(x, p + "final_layer_norm"), p + "fc1")), p + "fc2")
        else:
            x = ln(x + attn(x, p), p + "self_attn_layer_norm")
            x = ln(x + lin(F.gelu(lin(x, p + "fc1")), p + "fc2"), p + "final_layer_norm")
    return ln(x, "encoder.layer_norm") if pre_ln else x


@pytest.mark.parametrize("large_style", [False, True], ids=["post-LN-group", "pre-LN-layer"])
def test_fairseq_checkpoint_without_projection_computes_like_fairseq(tmp_path, large_style):
    """Last conv dim == encoder_embed_dim: fairseq builds no post_extract_proj, so the checkpoint has none."""
    torch.manual_seed(40)
    hf_cfg = small_hf_config(large_style, last_conv_dim=64)
    source = transformers.Wav2Vec2Model(hf_cfg).eval()  # only a source of random weights (and a control)
    perturb_vectors(source, 41)
    state = hf_to_fairseq(source.state_dict(), layer_norm_conv=large_style)
    del state["post_extract_proj.weight"], state["post_extract_proj.bias"]
    model_cfg = fairseq_model_cfg(hf_cfg)
    path = tmp_path / "no_proj.pt"
    torch.save({"cfg": {"model": model_cfg}, "model": state}, path)

    ours, cfg = load_wav2vec2(path)
    assert cfg.feature_proj is False and isinstance(ours.feature_proj, torch.nn.Identity)
    wave = torch.randn(2, 3000, generator=torch.Generator().manual_seed(42))
    ref = fairseq_forward_without_projection(state, model_cfg, wave)
    with torch.no_grad():
        out = ours(wave)
        with_projection = source(wave).last_hidden_state
    assert out.hidden.shape == ref.shape == (2, cfg.frames_for(3000), 64)
    assert rel_err(out.hidden, ref) < 1e-5
    assert rel_err(with_projection, ref) > 1e-2  # the reference is not blind to a projection

    # our format keeps the flag; the KWS and quantization tests build on such an encoder
    save_wav2vec2(ours, cfg, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["config"]["feature_proj"] is False
    again, again_cfg = load_wav2vec2(tmp_path / "ours")
    assert again_cfg == cfg and isinstance(again.feature_proj, torch.nn.Identity)
    with torch.no_grad():
        assert torch.equal(again(wave).hidden, out.hidden)


def test_fairseq_checkpoint_missing_projection_with_different_dims_is_refused(tmp_path):
    """Dims differ, so fairseq has a post_extract_proj: a checkpoint without it is incomplete."""
    hf_cfg = small_hf_config(large_style=False)
    state = hf_to_fairseq(transformers.Wav2Vec2Model(hf_cfg).state_dict(), layer_norm_conv=False)
    del state["post_extract_proj.weight"], state["post_extract_proj.bias"]
    path = tmp_path / "incomplete.pt"
    torch.save({"cfg": {"model": fairseq_model_cfg(hf_cfg)}, "model": state}, path)
    with pytest.raises(QuambaEdgeError, match=r"missing: feature_proj\.bias, feature_proj\.weight") as err:
        load_wav2vec2(path)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


def test_files_saved_before_feature_proj_existed_load_with_a_projection(tmp_path):
    torch.manual_seed(43)
    cfg = Wav2Vec2Config.tiny()
    model = Wav2Vec2Encoder(cfg).eval()
    save_wav2vec2(model, cfg, tmp_path / "old")
    raw = json.loads((tmp_path / "old" / "config.json").read_text())
    del raw["config"]["feature_proj"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(raw))
    loaded, loaded_cfg = load_wav2vec2(tmp_path / "old")
    assert loaded_cfg == cfg and loaded_cfg.feature_proj and isinstance(loaded.feature_proj, torch.nn.Linear)
    assert torch.equal(loaded.feature_proj.weight, model.feature_proj.weight)


def test_fairseq_checkpoint_with_unsafe_globals_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"cfg": {"model": {}}, "model": {}, "extra_state": {"ratio": fractions.Fraction(1, 3)}}, path)
    with pytest.raises(QuambaEdgeError) as err:
        load_wav2vec2(path)
    message = str(err.value)
    assert "fractions.Fraction" in message and "Fix:" in message and "OUT.pt" in message


# ------------------------------------------------------------------------------------------ our format


def test_roundtrip_of_our_format_with_heads(tmp_path):
    torch.manual_seed(14)
    cfg = Wav2Vec2Config.tiny()
    model = Wav2Vec2Encoder(cfg).eval()
    quantizer, heads = GumbelQuantizer.from_config(cfg), PretrainHeads.from_config(cfg)
    out_dir = tmp_path / "ours"
    save_wav2vec2(model, cfg, out_dir, quantizer=quantizer, heads=heads)
    assert json.loads((out_dir / "config.json").read_text())["family"] == "wav2vec2"
    loaded, loaded_cfg = load_wav2vec2(out_dir)
    assert loaded_cfg == cfg
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    wave = torch.randn(2, 8000, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        assert torch.equal(loaded(wave).hidden, model(wave).hidden)
    q2, h2 = load_pretrain_heads(out_dir)
    assert torch.equal(q2.codevectors, quantizer.codevectors) and torch.equal(h2.project_q.weight,
                                                                              heads.project_q.weight)
    # saving again replaces the directory whole; no temporary directories are left behind
    save_wav2vec2(model, cfg, out_dir)
    assert not (out_dir / "pretrain_heads.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours"]


def test_save_refuses_to_overwrite_foreign_directory(tmp_path):
    cfg = Wav2Vec2Config.tiny()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(QuambaEdgeError, match="refusing to overwrite"):
        save_wav2vec2(Wav2Vec2Encoder(cfg), cfg, notes)
    assert (notes / "todo.txt").read_text() == "keep me"


def test_plain_pos_conv_kernel_loads_as_weight_norm(hf_small, tmp_path):
    """Checkpoints exported with weight norm removed store only the effective kernel; same model."""
    from safetensors.torch import load_file, save_file

    model, src = hf_small
    prefix = "wav2vec2.encoder.pos_conv_embed.conv."
    state = load_file(str(src / "model.safetensors"))
    kernel = model.wav2vec2.encoder.pos_conv_embed.conv.weight.detach().clone()  # g * v / ||v||
    assert not torch.allclose(kernel, state[prefix + "parametrizations.weight.original1"])
    del state[prefix + "parametrizations.weight.original0"], state[prefix + "parametrizations.weight.original1"]
    state[prefix + "weight"] = kernel
    out_dir = tmp_path / "plain"
    out_dir.mkdir()
    (out_dir / "config.json").write_text((src / "config.json").read_text())
    save_file(state, str(out_dir / "model.safetensors"))
    ours, _ = load_wav2vec2(out_dir)
    wave = torch.randn(1, 3000, generator=torch.Generator().manual_seed(21))
    with torch.no_grad():
        assert rel_err(ours(wave).hidden, model.wav2vec2(wave).last_hidden_state) < 1e-5


# ------------------------------------------------------------------------------------------- bad inputs


def test_missing_path_names_the_fix(tmp_path):
    with pytest.raises(QuambaEdgeError, match="no such wav2vec2 checkpoint.*Fix"):
        load_wav2vec2(tmp_path / "nope")
    with pytest.raises(QuambaEdgeError, match="no config.json"):
        load_wav2vec2(tmp_path)


def test_corrupt_files_are_reported(tmp_path):
    cfg = Wav2Vec2Config.tiny()
    out_dir = tmp_path / "m"
    save_wav2vec2(Wav2Vec2Encoder(cfg), cfg, out_dir)
    weights = out_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(QuambaEdgeError, match="corrupt or truncated"):
        load_wav2vec2(out_dir)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(QuambaEdgeError, match="could not be read as a torch checkpoint"):
        load_wav2vec2(junk)
    (out_dir / "config.json").write_text("{not json")
    with pytest.raises(QuambaEdgeError, match="not valid JSON"):
        load_wav2vec2(out_dir)


def test_config_that_disagrees_with_weights_is_reported(hf_small, tmp_path):
    model, src = hf_small
    bad = tmp_path / "bad"
    model.save_pretrained(bad)
    raw = json.loads((bad / "config.json").read_text())
    raw["intermediate_size"] = 96
    (bad / "config.json").write_text(json.dumps(raw))
    with pytest.raises(QuambaEdgeError, match=r"wrong shape: layers\.0\.fc1\.weight \(128, 64\) vs \(96, 64\)"):
        load_wav2vec2(bad)
    raw["intermediate_size"], raw["num_hidden_layers"] = 128, 3
    (bad / "config.json").write_text(json.dumps(raw))
    with pytest.raises(QuambaEdgeError, match=r"missing: layers\.2\.") as err:
        load_wav2vec2(bad)
    assert "Fix:" in str(err.value)


def test_foreign_models_are_refused(tmp_path):
    other = tmp_path / "hubert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(QuambaEdgeError, match="'hubert' model, not wav2vec2"):
        load_wav2vec2(other)
    path = tmp_path / "conformer.pt"
    torch.save({"cfg": {"model": {"_name": "wav2vec2", "layer_type": "conformer"}}, "model": {}}, path)
    with pytest.raises(QuambaEdgeError, match="`layer_type: 'conformer'`"):
        load_wav2vec2(path)
    path = tmp_path / "extra.pt"
    state = {"encoder.layers.0.self_attn.q_proj.weight": torch.zeros(2, 2),
             "encoder.layers.0.rel_pos.w": torch.zeros(2)}
    torch.save({"cfg": {"model": {}}, "model": state}, path)
    with pytest.raises(QuambaEdgeError, match=r"not part of a wav2vec2 model \(encoder\.layers\.0\.rel_pos\.w\)"):
        load_wav2vec2(path)


# ---------------------------------------------------------------------------------- frames and config


def test_frames_for_matches_hf_and_forward(hf_base):
    model, *_ = hf_base
    base = Wav2Vec2Config.BASE
    for samples in (400, 401, 719, 720, 16000, 16319, 16320, 48000):
        assert base.frames_for(samples) == int(model._get_feat_extract_output_lengths(samples))
    assert base.frames_for(399) == 0 and base.receptive_field == 400
    tiny = Wav2Vec2Config.tiny()
    assert tiny.total_stride == base.total_stride == 320  # same 50 Hz frame rate as BASE
    enc = Wav2Vec2Encoder(tiny).eval()
    with torch.no_grad():
        for samples in (tiny.receptive_field, 5000, 16000):
            assert enc(torch.randn(1, samples)).hidden.shape[1] == enc.frames_for(samples)
    with pytest.raises(QuambaEdgeError, match="shorter than one frame"):
        enc(torch.randn(1, tiny.receptive_field - 1))


def test_config_dict_roundtrip_and_validation():
    for cfg in (Wav2Vec2Config.BASE, Wav2Vec2Config.LARGE, Wav2Vec2Config.tiny()):
        assert Wav2Vec2Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(QuambaEdgeError, match="not divisible by num_heads"):
        Wav2Vec2Config(hidden_size=100, num_heads=12)
    with pytest.raises(QuambaEdgeError, match="unknown wav2vec2 config keys"):
        Wav2Vec2Config.from_dict({"hidden_sizes": 3})
    no_proj = Wav2Vec2Config.from_dict({**Wav2Vec2Config.tiny().to_dict(), "feature_proj": False})
    assert Wav2Vec2Config.from_dict(json.loads(json.dumps(no_proj.to_dict()))) == no_proj
    with pytest.raises(QuambaEdgeError, match=r"feature_proj=False needs conv_dim\[-1\] == hidden_size, not 512"):
        Wav2Vec2Config(feature_proj=False)


def test_forward_is_conv_features_then_contextualize():
    """Cached conv features (frozen-conv fine-tuning) must give exactly what the full forward gives."""
    torch.manual_seed(26)
    enc = Wav2Vec2Encoder(Wav2Vec2Config.tiny()).eval()
    wave = torch.randn(2, 6000)
    attention_mask = torch.ones(2, 6000, dtype=torch.long)
    attention_mask[1, 4000:] = 0
    t = enc.frames_for(6000)
    mask = torch.zeros(2, t, dtype=torch.bool)
    mask[:, 2:5] = True
    with torch.no_grad():
        full = enc(wave, attention_mask, mask)
        conv = enc.conv_features(wave)
        split = enc.contextualize(conv, enc.frame_mask(attention_mask, t), mask)
    assert conv.shape == (2, t, 128)
    for a, b in zip(full, split):
        assert torch.equal(a, b)
    assert full.frame_mask.sum(1).tolist() == [t, enc.frames_for(4000)]


def test_feature_grad_mult_scales_conv_gradient_only():
    cfg = Wav2Vec2Config.tiny()
    grads = []
    for mult in (1.0, 0.1):
        torch.manual_seed(17)
        enc = Wav2Vec2Encoder(Wav2Vec2Config.from_dict({**cfg.to_dict(), "feature_grad_mult": mult, "dropout": 0.0,
                                                         "attention_dropout": 0.0, "feat_proj_dropout": 0.0,
                                                         "layerdrop": 0.0})).train()
        enc(torch.randn(1, 3000, generator=torch.Generator().manual_seed(18))).hidden.pow(2).mean().backward()
        grads.append((enc.feature_encoder.conv_layers[0].conv.weight.grad.clone(), enc.feature_proj.weight.grad))
    assert torch.allclose(grads[1][0], grads[0][0] * 0.1, rtol=1e-4, atol=1e-9)
    assert torch.allclose(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------------- quantizer


def test_quantizer_eval_is_deterministic_hard_choice():
    torch.manual_seed(19)
    q = GumbelQuantizer(in_dim=16, groups=2, entries=8, codevector_dim=12).eval()
    x = torch.randn(3, 5, 16)
    out = q(x)
    assert out.quantized.shape == (3, 5, 12) and out.indices.shape == (3, 5, 2)
    assert torch.equal(q(x).quantized, out.quantized)
    book = q.codevectors.view(2, 8, 6)
    expected = torch.cat([book[0][out.indices[..., 0]], book[1][out.indices[..., 1]]], dim=-1)
    assert torch.equal(out.quantized, expected)  # each group contributes exactly one entry
    logits = q.weight_proj(x).view(3, 5, 2, 8)
    assert torch.equal(out.indices, logits.argmax(-1))
    assert 1.0 <= out.code_perplexity <= 16.0 and 0.0 <= out.diversity_loss <= 1.0


def test_quantizer_training_samples_one_hot_with_gradient():
    torch.manual_seed(20)
    q = GumbelQuantizer(in_dim=16, groups=2, entries=8, codevector_dim=12, temperature=2.0).train()
    x = torch.randn(4, 50, 16)
    out = q(x)
    book = q.codevectors.view(2, 8, 6)
    chosen = torch.cat([book[0][out.indices[..., 0]], book[1][out.indices[..., 1]]], dim=-1)
    assert torch.allclose(out.quantized, chosen, atol=1e-6)  # hard forward value...
    (out.quantized.sum() + out.diversity_loss).backward()
    assert q.weight_proj.weight.grad is not None and q.weight_proj.weight.grad.abs().sum() > 0  # ...soft gradient
    sampled_differs = (out.indices != q.weight_proj(x).view(4, 50, 2, 8).argmax(-1)).any()
    assert sampled_differs  # at temperature 2 the Gumbel sample is not always the argmax


def test_quantizer_perplexity_counts_only_masked_frames():
    q = GumbelQuantizer(in_dim=4, groups=1, entries=4, codevector_dim=4).eval()
    with torch.no_grad():
        q.weight_proj.weight.copy_(torch.eye(4) * 10)
        q.weight_proj.bias.zero_()
    x = torch.eye(4).repeat(2, 1).view(1, 8, 4)  # frames pick entries 0,1,2,3,0,1,2,3
    assert torch.allclose(q(x).code_perplexity, torch.tensor(4.0))
    only_entry_0 = torch.tensor([[True, False, False, False, True, False, False, False]])
    assert torch.allclose(q(x, mask=only_entry_0).code_perplexity, torch.tensor(1.0))
