"""W8A8 for Mamba-2 (quant/quamba2.py) against the fp reference on fresh random weights and tokens: every
recipe tracks the fp model, prefill then decode equals one prefill, per-head scales protect the heads an
outlier head would otherwise crush, and bad calibration data is refused."""

from __future__ import annotations

import pytest
import torch

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.models.mamba2 import Mamba2Config, Mamba2LM, init_weights
from quamba_edge.quant import recipes
from quamba_edge.quant.quamba2 import BlockObserver, calibrate, proj_blocks, xbc_blocks
from quamba_edge.quant.recipes import Quamba2

RECIPES = [Quamba2(), Quamba2(percentile=None, hadamard=False, group_scales=False), Quamba2(hadamard=False),
           Quamba2(group_scales=False), Quamba2(percentile=None), Quamba2(weight_granularity="channel")]


def model(seed: int = 0, **kw) -> Mamba2LM:
    cfg = Mamba2Config(**{"d_model": 48, "n_layer": 2, "vocab_size": 64, "d_state": 16, "headdim": 12, "ngroups": 2,
                          "chunk_size": 8, **kw})
    m = Mamba2LM(cfg)
    init_weights(m, seed)
    return m.eval()


def tokens(seed: int, b: int = 2, l: int = 24) -> torch.Tensor:
    return torch.randint(0, 64, (b, l), generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.label)
def test_every_recipe_tracks_the_fp_model_on_fresh_tokens(recipe):
    fp = model()
    qm, scales = calibrate(fp, [tokens(s) for s in range(4)], recipe)
    assert len(scales) == 2 and scales[0]["proj"].shape == (2 * 96 + 2 * 2 * 16 + 8,)
    ids = tokens(100)
    with torch.no_grad():
        err = rel(qm(ids), fp(ids))
    assert err < 0.05, f"{recipe.label}: {err:.3f}"
    assert err > 0  # int8 does change the numbers: a quantized path that equals fp exactly is not quantized


def test_quantized_prefill_then_decode_equals_one_prefill():
    fp = model(seed=3)
    qm, _ = calibrate(fp, [tokens(s) for s in range(3)], Quamba2())
    ids = tokens(7, l=20)
    with torch.no_grad():
        full = qm(ids)
        logits, conv, ssm = qm.step(ids[:, :12])
        assert conv.dtype == torch.int8
        out = [logits]
        for t in range(12, 20):
            step, conv, ssm = qm.step(ids[:, t:t + 1], conv, ssm)
            out.append(step)
    # chunked and recurrent SSD differ in fp32 rounding, which can move an int8 rounding of the scan output
    assert rel(torch.cat(out, 1), full) < 2e-3


def test_per_head_scales_protect_the_other_heads_from_an_outlier_head():
    fp = model(seed=5)
    with torch.no_grad():  # head 0 of layer 0's SSM input runs 60x larger than the rest (a known Mamba-2 trait)
        fp.backbone.layers[0].mixer.conv1d.bias[:12] += 60.0
    ids = tokens(9)
    errs = {}
    for recipe in (Quamba2(hadamard=False), Quamba2(hadamard=False, group_scales=False)):
        qm, _ = calibrate(fp, [tokens(s) for s in range(4)], recipe)
        with torch.no_grad():
            errs[recipe.group_scales] = rel(qm(ids), fp(ids))
    assert errs[True] < 0.5 * errs[False], errs


def test_scale_blocks_cover_every_channel_once():
    cfg = model().cfg
    for group in (True, False):
        for blocks, width in ((proj_blocks(cfg, group), 2 * cfg.d_inner + 2 * 32 + cfg.nheads),
                              (xbc_blocks(cfg, group), cfg.conv_dim)):
            covered = [c for a, e in blocks for c in range(a, e)]
            assert sorted(covered) == list(range(width))
    assert len(xbc_blocks(cfg, True)) == cfg.nheads + 2 * cfg.ngroups and len(xbc_blocks(cfg, False)) == 3


def test_block_observer_takes_the_percentile_per_sample():
    obs = BlockObserver([(0, 4), (4, 8)], [0.5, None])
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8)
    obs.observe(x)
    first = [float(x[i, :, :4].abs().flatten().quantile(0.5)) for i in (0, 1)]
    assert obs.amax[0] == pytest.approx(first[0] + 0.01 * (first[1] - first[0]), rel=1e-3)
    assert obs.amax[1] == float(x[..., 4:].max())


def test_recipe_labels_and_manifest_round_trip():
    assert [r.label for r in RECIPES] == ["quamba2", "naive", "quamba2-no-hadamard", "quamba2-no-group-scales",
                                          "quamba2-no-percentile", "quamba2-channel"]
    for r in RECIPES:
        assert recipes.from_dict(recipes.to_dict(r)) == r


def test_calibration_refuses_no_data_and_a_nan():
    fp = model()
    with pytest.raises(QuambaEdgeError, match="no data"):
        calibrate(fp, [], Quamba2())
    with torch.no_grad():
        fp.backbone.layers[1].mixer.in_proj.weight[0, 0] = float("nan")
    with pytest.raises(QuambaEdgeError, match="NaN in layer 1, tensor 'proj'"):
        calibrate(fp, [tokens(0)], Quamba2())
