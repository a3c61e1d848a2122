"""Checkpoint layouts against an independent implementation (transformers' MambaForCausalLM)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from quamba_edge.checkpoints.common import resolve_model_dir
from quamba_edge.checkpoints.mamba import load_mamba, save_checkpoint
from quamba_edge.errors import QuambaEdgeError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_reference(tmp_path_factory):
    """A randomly initialised model at the real mamba-130m shape, saved by transformers (HF layout)
    and re-saved in the mamba-ssm layout (config.json + pytorch_model.bin)."""
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(
        vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, conv_kernel=4,
        use_bias=False, use_conv_bias=True, time_step_rank="auto", layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
    )
    model = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():  # make D and A_log differ across channels, as in a trained model
        for layer in model.backbone.layers:
            layer.mixer.D.add_(torch.randn_like(layer.mixer.D) * 0.5)
            layer.mixer.A_log.add_(torch.randn_like(layer.mixer.A_log) * 0.3)
    hf_dir = tmp_path_factory.mktemp("hf")
    model.save_pretrained(hf_dir)
    ssm_dir = tmp_path_factory.mktemp("mamba_ssm")
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in model.state_dict().items()}
    torch.save(state, ssm_dir / "pytorch_model.bin")
    (ssm_dir / "config.json").write_text(json.dumps({
        "d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": True,
        "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
    }))
    ids = torch.randint(0, 50280, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
    return hf_dir, ssm_dir, ids, logits


@pytest.mark.parametrize("layout", ["hf", "mamba-ssm"])
def test_both_layouts_match_transformers(hf_reference, layout):
    hf_dir, ssm_dir, ids, expected = hf_reference
    model = load_mamba(hf_dir if layout == "hf" else ssm_dir)
    assert model.cfg.n_layer == 24 and model.cfg.d_inner == 1536 and model.cfg.vocab_size == 50280
    with torch.no_grad():
        got = model(ids)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-4, rel
    assert (got - expected).abs().max() / expected.abs().max() < 1e-4


def test_our_safetensors_round_trip(tmp_path, tiny_model):
    save_checkpoint(tiny_model, tmp_path / "ck")
    again = load_mamba(tmp_path / "ck")
    ids = torch.randint(0, 256, (1, 10))
    torch.testing.assert_close(again(ids), tiny_model(ids), rtol=0, atol=0)


def test_missing_path_names_the_fix(tmp_path):
    with pytest.raises(QuambaEdgeError, match="no such checkpoint directory"):
        resolve_model_dir(tmp_path / "nope")


def test_unknown_layout(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_dim": 3}))
    with pytest.raises(QuambaEdgeError, match="no known Mamba layout"):
        load_mamba(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QuambaEdgeError, match="no config.json"):
        load_mamba(empty)


def test_truncated_safetensors(tiny_checkpoint):
    weights = tiny_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(QuambaEdgeError, match="corrupt or truncated"):
        load_mamba(tiny_checkpoint)


def test_weights_that_do_not_match_the_config(tiny_checkpoint, tiny_model):
    state = {k: v for k, v in tiny_model.state_dict().items() if k != "lm_head.weight"}
    state["backbone.layers.0.mixer.D"] = torch.zeros(7)
    del state["backbone.layers.1.mixer.A_log"]
    save_file(state, str(tiny_checkpoint / "model.safetensors"))
    with pytest.raises(QuambaEdgeError, match="do not match its config.json.*missing.*wrong shape"):
        load_mamba(tiny_checkpoint)


def test_pickles_load_with_weights_only(tmp_path, tiny_model):
    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    (tmp_path / "config.json").write_text(json.dumps({"d_model": 48, "n_layer": 2, "vocab_size": 256}))
    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(QuambaEdgeError, match="could not be loaded safely"):
        load_mamba(tmp_path)


def test_unreachable_hub_id_says_what_to_do():
    with pytest.raises(QuambaEdgeError, match="huggingface-cli download"):
        resolve_model_dir("state-spaces/mamba-130m-not-here")


def test_an_untied_lm_head_is_refused(tiny_checkpoint, tiny_model):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"] + 0.01
    save_file(state, str(tiny_checkpoint / "model.safetensors"))
    with pytest.raises(QuambaEdgeError, match="lm_head separate from its embedding"):
        load_mamba(tiny_checkpoint)
    state["lm_head.weight"] = state["backbone.embedding.weight"].clone()  # stored twice but equal: fine
    save_file(state, str(tiny_checkpoint / "model.safetensors"))
    load_mamba(tiny_checkpoint)
    raw = json.loads((tiny_checkpoint / "config.json").read_text())
    (tiny_checkpoint / "config.json").write_text(json.dumps({**raw, "tie_embeddings": False}))
    with pytest.raises(QuambaEdgeError, match="tied heads only"):
        load_mamba(tiny_checkpoint)


@pytest.mark.parametrize("model_type", ["mamba2", "falcon_mamba"])
def test_other_mamba_families_are_named_and_refused(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": model_type, "hidden_size": 64, "state_size": 16, "num_hidden_layers": 2, "vocab_size": 256}))
    with pytest.raises(QuambaEdgeError, match=f"model_type='{model_type}'.*Mamba-1"):
        load_mamba(tmp_path)


@pytest.mark.parametrize("layout", ["hf", "mamba-ssm"])
def test_a_fractional_expand_is_honoured_as_upstream_computes_it(tmp_path, layout):
    """mamba-ssm (and transformers before its strict configs) take d_inner = int(expand * d_model): expand 1.5
    at d_model 32 is 48. The reference is transformers' MambaForCausalLM built with intermediate_size 48."""
    from quamba_edge.quant.quamba import calibrate
    from quamba_edge.quant.recipes import make_recipe

    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2,
                                   conv_kernel=4, tie_word_embeddings=True)
    cfg.intermediate_size = int(1.5 * 32)
    model = transformers.MambaForCausalLM(cfg).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    if layout == "hf":
        config = {"model_type": "mamba", "hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 256,
                  "state_size": 8, "expand": 1.5, "intermediate_size": 48}
    else:
        state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in state.items()}
        config = {"d_model": 32, "n_layer": 2, "vocab_size": 256, "ssm_cfg": {"d_state": 8, "expand": 1.5}}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = load_mamba(tmp_path)
    assert ours.cfg.d_inner == 48
    ids = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = model(ids).logits, ours(ids)
    assert (got - expected).abs().max() / expected.abs().max() < 1e-4
    qmodel, _ = calibrate(ours, [ids], make_recipe("quamba"))  # 48 = 12 x 4: Hadamard H_12 (x) H_4
    assert qmodel(ids).shape == expected.shape


_SSM = {"d_model": 32, "n_layer": 2, "vocab_size": 256}


@pytest.mark.parametrize(("raw", "named"), [
    ({**_SSM, "rms_norm": False}, "`rms_norm: false`: LayerNorm"),
    ({**_SSM, "d_intermediate": 64}, "`d_intermediate: 64`"),
    ({**_SSM, "attn_layer_idx": [1]}, r"`attn_layer_idx: \[1\]`"),
    ({**_SSM, "ssm_cfg": {"layer": "Mamba2"}}, '`ssm_cfg.layer: "Mamba2"`'),
    ({**_SSM, "ssm_cfg": {"headdim": 64}}, "ssm_cfg has fields .*headdim"),
    ({**_SSM, "ssm_cfg": {"d_state": "16"}}, '`ssm_cfg.d_state: "16"`.*positive integer'),
    ({**_SSM, "ssm_cfg": {"expand": 0}}, "`ssm_cfg.expand: 0`"),
    ({**_SSM, "ssm_cfg": {"dt_rank": 2.5}}, "`ssm_cfg.dt_rank: 2.5`"),
    ({**_SSM, "ssm_cfg": {"conv_bias": "yes"}}, '`ssm_cfg.conv_bias: "yes"`'),
    ({**_SSM, "norm_epsilon": 0}, "`norm_epsilon: 0`"),
    ({**_SSM, "n_layer": 2.0}, "`n_layer: 2.0`"),
    ({**_SSM, "layer_norm_type": "rms"}, "does not have: \\['layer_norm_type'\\]"),
    ({"model_type": "mamba", "hidden_size": 32, "state_size": 8, "num_hidden_layers": 2, "vocab_size": 256,
      "hidden_act": "gelu"}, '`hidden_act: "gelu"`'),
    ({"model_type": "mamba", "hidden_size": 32, "state_size": 8, "num_hidden_layers": 2, "vocab_size": 256,
      "expand": 2, "intermediate_size": 48}, "`intermediate_size: 48`.*gives 64"),
])
def test_config_fields_that_change_the_math_are_refused_by_name(tmp_path, tiny_model, raw, named):
    save_checkpoint(tiny_model, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(QuambaEdgeError, match=named):
        load_mamba(tmp_path)


def test_a_layernorm_checkpoint_is_blamed_on_rms_norm_not_on_its_weights(tmp_path, tiny_model):
    """mamba-ssm with rms_norm=false has LayerNorm biases; the refusal names the field, not a key mismatch."""
    state = {k: v for k, v in tiny_model.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"backbone.layers.{i}.norm.bias"] = torch.zeros(48)
    state["backbone.norm_f.bias"] = torch.zeros(48)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"d_model": 48, "n_layer": 2, "vocab_size": 256, "rms_norm": False, "ssm_cfg": {"d_state": 8}}))
    with pytest.raises(QuambaEdgeError, match="rms_norm: false") as info:
        load_mamba(tmp_path)
    assert "do not match" not in str(info.value)


def test_every_upstream_config_field_has_a_decision():
    """The field tables cover transformers' MambaConfig (the installed version) field for field."""
    from dataclasses import fields

    from quamba_edge.checkpoints.mamba import HF_MAMBA_FIELDS

    names = {f.name for f in fields(transformers.MambaConfig) if f.name in transformers.MambaConfig.__annotations__}
    assert len(names) > 20 and names - set(HF_MAMBA_FIELDS) == set()
