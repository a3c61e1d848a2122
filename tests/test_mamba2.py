"""The Mamba-2 reference (issue 19): the chunked SSD form equals the recurrence, prefill then decode equals
one prefill, and the model equals transformers' Mamba2ForCausalLM on small configs (ngroups 1 and > 1) and at
the mamba2-130m shape, on fresh random weights and tokens."""

from __future__ import annotations

import json

import pytest
import torch

from quamba_edge.models.mamba2 import Mamba2Config, Mamba2LM, init_weights, public_shape
from quamba_edge.models.ssd import ssd_chunked, ssd_recurrent


def ssd_inputs(b=2, l=37, h=8, p=4, g=2, n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, h, p, generator=gen)
    dt = torch.nn.functional.softplus(torch.randn(b, l, h, generator=gen) - 1)
    A = -torch.rand(h, generator=gen) * 4 - 0.5
    B, C = torch.randn(2, b, l, g, n, generator=gen)
    D = torch.randn(h, generator=gen)
    state = torch.randn(b, h, p, n, generator=gen)
    return x, dt, A, B, C, D, state


@pytest.mark.parametrize("l,chunk,g", [(37, 8, 2), (64, 16, 1), (5, 64, 4), (1, 4, 1)])
def test_chunked_ssd_equals_the_recurrence(l, chunk, g):
    x, dt, A, B, C, D, state = ssd_inputs(l=l, g=g, seed=l)
    y_ref, h_ref = ssd_recurrent(x, dt, A, B, C, D, state)
    y, h = ssd_chunked(x, dt, A, B, C, D, state, chunk=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)


def test_a_head_reads_the_b_and_c_of_its_own_group():
    x, dt, A, B, C, D, _ = ssd_inputs(l=6, h=4, g=2)
    y, _ = ssd_recurrent(x, dt, A, B, C, D)
    C2 = C.clone()
    C2[:, :, 1] += 1.0  # group 1 feeds heads 2 and 3 only
    y2, _ = ssd_recurrent(x, dt, A, B, C2, D)
    assert torch.equal(y[:, :, :2], y2[:, :, :2]) and not torch.allclose(y[:, :, 2:], y2[:, :, 2:])


def small(**kw) -> Mamba2LM:
    cfg = Mamba2Config(**{"d_model": 64, "n_layer": 2, "vocab_size": 97, "d_state": 16, "headdim": 16,
                          "chunk_size": 8, **kw})
    model = Mamba2LM(cfg)
    init_weights(model, seed=1)
    return model.eval()


@pytest.mark.parametrize("ngroups", [1, 2])
def test_prefill_then_decode_equals_one_prefill(ngroups):
    model = small(ngroups=ngroups)
    ids = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        logits, conv, ssm = model.step(ids[:, :13])
        steps = [logits]
        for t in range(13, 21):
            out, conv, ssm = model.step(ids[:, t:t + 1], conv, ssm)
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


def hf_twin(cfg: Mamba2Config, seed: int):
    """transformers' Mamba2ForCausalLM with fresh random weights, and our model holding the same weights."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.Mamba2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, state_size=cfg.d_state, num_hidden_layers=cfg.n_layer,
        expand=cfg.expand, conv_kernel=cfg.d_conv, n_groups=cfg.ngroups, head_dim=cfg.headdim,
        num_heads=cfg.nheads, chunk_size=cfg.chunk_size, layer_norm_epsilon=cfg.norm_eps, use_conv_bias=cfg.conv_bias,
        use_bias=cfg.proj_bias, tie_word_embeddings=cfg.tie_embeddings, residual_in_fp32=True,
        time_step_limit=(cfg.dt_min, cfg.dt_max if cfg.dt_max is not None else float("inf")))
    torch.manual_seed(seed)
    hf = transformers.Mamba2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # transformers initialises D to 1 and the norms to 1: make every tensor random
        for name, p in hf.named_parameters():
            if name.endswith(("D", "norm.weight", "norm_f.weight")):
                p.uniform_(0.5, 1.5)
            elif name.endswith("A_log"):
                p.copy_(torch.log(torch.empty_like(p).uniform_(1, 16)))
    ours = Mamba2LM(cfg).eval()
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return hf, ours


@pytest.mark.parametrize("kw", [
    {"d_model": 64, "n_layer": 2, "vocab_size": 101, "d_state": 16, "headdim": 16, "ngroups": 1, "chunk_size": 8},
    {"d_model": 96, "n_layer": 3, "vocab_size": 64, "d_state": 32, "headdim": 24, "ngroups": 4, "chunk_size": 16},
    {"d_model": 64, "n_layer": 2, "vocab_size": 50, "d_state": 16, "headdim": 32, "ngroups": 2, "chunk_size": 8,
     "dt_min": 0.01, "dt_max": 0.05, "proj_bias": True, "conv_bias": False},
])
def test_equals_transformers_mamba2_on_small_configs(kw):
    cfg = Mamba2Config(**kw)
    hf, ours = hf_twin(cfg, seed=5)
    ids = torch.randint(0, cfg.vocab_size, (2, 29), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
        logits, conv, ssm = ours.step(ids[:, :20])
        steps = [logits]
        for t in range(20, 29):
            out, conv, ssm = ours.step(ids[:, t:t + 1], conv, ssm)
            steps.append(out)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat(steps, 1), want, rtol=1e-4, atol=1e-4)


def test_equals_transformers_mamba2_at_the_130m_shape():
    cfg = public_shape("mamba2-130m")
    assert (cfg.d_inner, cfg.nheads, cfg.conv_dim) == (1536, 24, 1792)
    hf, ours = hf_twin(cfg, seed=7)
    assert sum(p.numel() for p in ours.parameters()) > 125e6  # the real size, embedding included
    ids = torch.randint(0, cfg.vocab_size, (1, 80), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_a_config_whose_heads_do_not_split_is_refused():
    with pytest.raises(ValueError, match="must split into heads"):
        Mamba2Config(d_model=64, headdim=24)
    with pytest.raises(ValueError, match="groups"):
        Mamba2Config(d_model=64, headdim=16, ngroups=3)


# ------------------------------------------------------------------------------------------ checkpoints

def test_loads_a_transformers_mamba2_checkpoint_tied_or_not(tmp_path):
    from quamba_edge.checkpoints.mamba2 import load_mamba2

    for tied in (True, False):
        cfg = Mamba2Config(d_model=64, n_layer=2, vocab_size=70, d_state=16, headdim=16, ngroups=2, chunk_size=8,
                           tie_embeddings=tied)
        hf, _ = hf_twin(cfg, seed=11)
        if not tied:
            assert not hf.config.tie_word_embeddings
        out = tmp_path / f"hf-{tied}"
        hf.save_pretrained(out)
        model = load_mamba2(out)
        assert model.cfg == cfg and (model.lm_head.weight is model.backbone.embedding.weight) == tied
        ids = torch.randint(0, 70, (1, 19), generator=torch.Generator().manual_seed(12))
        with torch.no_grad():
            torch.testing.assert_close(model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_loads_the_mamba_ssm_layout_from_a_pickle_or_safetensors(tmp_path):
    from quamba_edge.checkpoints.mamba2 import load_mamba2, mamba_ssm_config, save_checkpoint

    model = small(ngroups=2)
    save_checkpoint(model, tmp_path / "st")
    pickled = tmp_path / "bin"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(mamba_ssm_config(model.cfg)))
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # as mamba-ssm saves: lm_head included
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        want = model(ids)
        for where in ("st", "bin"):
            loaded = load_mamba2(tmp_path / where)
            assert loaded.cfg == model.cfg
            torch.testing.assert_close(loaded(ids), want, rtol=0, atol=0)


def ssm_config(**ssm_cfg) -> dict:
    return {"d_model": 64, "n_layer": 2, "vocab_size": 97, "pad_vocab_size_multiple": 1,
            "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, **ssm_cfg}}


@pytest.mark.parametrize("raw,match", [
    (ssm_config(norm_before_gate=True), "ssm_cfg.norm_before_gate: true"),
    (ssm_config(D_has_hdim=True), "ssm_cfg.D_has_hdim: true"),
    (ssm_config(d_ssm=64), "ssm_cfg.d_ssm: 64"),
    (ssm_config(rmsnorm=False), "ssm_cfg.rmsnorm: false"),
    (ssm_config(headdim=24), "does not split into heads of 24"),
    (ssm_config(ngroups=3), "in 3 equal groups"),
    (ssm_config(dt_limit=[0.1, 0.01]), "dt_limit"),
    (ssm_config(mystery=1), r"does not take: \['mystery'\]"),
    ({**ssm_config(), "d_intermediate": 256}, "d_intermediate: 256"),
    ({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 50, "head_dim": 16,
      "num_heads": 5}, "num_heads: 5"),
    ({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 50, "head_dim": 16,
      "hidden_act": "gelu"}, 'hidden_act: "gelu"'),
    ({"d_model": 64, "n_layer": 2, "vocab_size": 50, "ssm_cfg": {"layer": "Mamba1"}}, "not a Mamba-2 config"),
])
def test_config_fields_that_change_the_math_are_refused_by_name(raw, match):
    from quamba_edge.checkpoints.mamba2 import config_from_raw
    from quamba_edge.errors import QuambaEdgeError

    with pytest.raises(QuambaEdgeError, match=match):
        config_from_raw(raw)


def test_mismatched_weights_and_a_falsely_tied_head_are_refused(tmp_path):
    from quamba_edge.checkpoints.mamba2 import load_mamba2, mamba_ssm_config
    from quamba_edge.errors import QuambaEdgeError

    model = small()
    (tmp_path / "config.json").write_text(json.dumps(mamba_ssm_config(model.cfg)))
    state = dict(model.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1  # a separate head under a tied config
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(QuambaEdgeError, match="set `tie_embeddings`"):
        load_mamba2(tmp_path)
    state = {k: v for k, v in model.state_dict().items() if k != "backbone.layers.1.mixer.D"}
    state["backbone.layers.0.mixer.dt_bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(QuambaEdgeError, match=r"missing: \['backbone.layers.1.mixer.D'\].*wrong shape"):
        load_mamba2(tmp_path)


# ------------------------------------------------------------------------------------- the mamba2 family

def test_the_registry_calibrates_loads_and_evaluates_a_mamba2_checkpoint(tmp_path):
    from quamba_edge import pipeline
    from quamba_edge.checkpoints.mamba2 import save_checkpoint
    from quamba_edge.families.registry import load
    from quamba_edge.quant.quamba2 import calibrate as calibrate_quamba2
    from quamba_edge.quant.recipes import Quamba2

    fp = Mamba2LM(Mamba2Config(d_model=48, n_layer=2, vocab_size=256, d_state=16, headdim=12, ngroups=2,
                               chunk_size=16))
    init_weights(fp, seed=4)
    save_checkpoint(fp.eval(), tmp_path / "ckpt")
    text = tmp_path / "text.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                    "must be in want of a wife. " * 20)
    loaded = load(tmp_path / "ckpt")
    assert loaded.family.name == "mamba2" and loaded.recipe.label == "fp"
    out, manifest = pipeline.calibrate(str(tmp_path / "ckpt"), "quamba", str(text), 4, 64, tmp_path / "q")
    assert manifest["family"] == "mamba2" and manifest["recipe_label"] == "quamba2"
    assert isinstance(manifest["scales"][0]["proj"], list) and len(manifest["scales"]) == 2
    artifact = load(out)
    ids = torch.frombuffer(bytearray(text.read_bytes()[:256]), dtype=torch.uint8).long().reshape(4, 64)
    want, _ = calibrate_quamba2(fp, ids.split(8), Quamba2())
    probe = tokens_for(artifact.cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(artifact.model(probe), want(probe), rtol=0, atol=0)  # the artifact holds it all
    fp_eval = pipeline.evaluate(loaded, str(text), 64, 4)
    q_eval = pipeline.evaluate(artifact, str(text), 64, 4)
    assert q_eval["recipe"] == "quamba2" and 0 < abs(q_eval["bits_per_byte"] - fp_eval["bits_per_byte"]) < 0.1
    naive = load(pipeline.calibrate(str(tmp_path / "ckpt"), "naive", str(text), 4, 64, tmp_path / "n")[0])
    assert naive.recipe == Quamba2(percentile=None, hadamard=False, group_scales=False)


def tokens_for(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 19), generator=torch.Generator().manual_seed(21))


def test_the_orin_roofline_estimates_mamba2_2_7b():
    from quamba_edge.bench.devices import PROFILES
    from quamba_edge.bench.roofline import estimate
    from quamba_edge.bench.systems import precision_and_config

    cfg, deployed, real = precision_and_config("mamba2-2.7b")
    assert (cfg.d_model, cfg.n_layer, cfg.nheads, cfg.d_state) == (2560, 64, 80, 128) and deployed is None
    big, other = cfg.parameter_counts()
    assert 2.6e9 < big + other < 2.8e9  # the public checkpoint's 2.7B parameters
    for tied in (True, False):  # the count is the model's own
        shape = Mamba2Config(d_model=64, n_layer=3, vocab_size=100, d_state=16, headdim=16, ngroups=2,
                             tie_embeddings=tied)
        with torch.device("meta"):
            assert sum(shape.parameter_counts()) == sum(p.numel() for p in Mamba2LM(shape).parameters())
    fp16 = estimate(cfg, "fp16", PROFILES["orin-nano-8gb"])
    int8 = estimate(cfg, "int8", PROFILES["orin-nano-8gb"])
    assert int8.tpot_ms < fp16.tpot_ms and int8.weight_bytes < 0.6 * fp16.weight_bytes
