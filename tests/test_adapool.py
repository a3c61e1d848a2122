"""AdaPool, its baselines and the set model: masking, shapes, and bad input."""

from __future__ import annotations

import pytest
import torch

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.models.adapool import SetModel, SetModelConfig
from quamba_edge.models.pooling import POOLS, AdaPool, AvgPool


def model(pool: str, query="mean", seed: int = 0) -> SetModel:
    torch.manual_seed(seed)
    return SetModel(SetModelConfig(d_in=6, d_model=32, n_heads=4, n_layers=2, d_ff=48, d_out=3, pool=pool,
                                   pool_query=query)).eval()


@pytest.mark.parametrize("pool,query", [(p, "mean") for p in POOLS] + [("adapool", 0)])
def test_masked_positions_do_not_change_the_result(pool, query):
    m = model(pool, query)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 6, generator=gen)
    junk = torch.randn(2, 5, 6, generator=gen) * 100  # padded positions, wildly different values
    padded = torch.cat([x, junk], 1)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, :7] = True
    with torch.no_grad():
        assert torch.allclose(m(padded, mask), m(x), atol=1e-5)
        shuffled = torch.randperm(12, generator=gen)
        if query == "mean":  # the pools are permutation invariant over the set (query 0 is not)
            assert torch.allclose(m(padded[:, shuffled], mask[:, shuffled]), m(x), atol=1e-5)


def test_adapool_attention_can_isolate_the_signal():
    """With a query that matches only the signal keys, the pool returns their centroid, not the set mean."""
    d = 8
    pool = AdaPool(d, n_heads=1, query="mean")
    with torch.no_grad():
        for lin in (pool.k_proj, pool.v_proj, pool.out_proj):
            lin.weight.copy_(torch.eye(d))
            lin.bias.zero_()
        pool.q_proj.weight.zero_()
        pool.q_proj.bias.copy_(torch.tensor([50.0] + [0.0] * (d - 1)))  # attends to feature 0
    signal = torch.zeros(1, 3, d)
    signal[..., 0] = 1.0
    signal[..., 1] = torch.tensor([1.0, 2.0, 3.0])
    noise = torch.randn(1, 20, d, generator=torch.Generator().manual_seed(0)) * 0.1
    x = torch.cat([signal, noise], 1)
    out = pool(x)
    assert torch.allclose(out, signal.mean(1), atol=1e-3)
    assert not torch.allclose(AvgPool()(x), signal.mean(1), atol=1e-1)


def test_bad_sets_are_clear_errors():
    m = model("adapool")
    x = torch.randn(2, 5, 6)
    with pytest.raises(QuambaEdgeError, match="every position masked"):
        m(x, torch.tensor([[True] * 5, [False] * 5]))
    with pytest.raises(QuambaEdgeError, match=r"\(batch, n, 6\)"):
        m(torch.randn(2, 5, 7))
    x[1, 2, 3] = float("nan")
    with pytest.raises(QuambaEdgeError, match="NaN"):
        m(x)
    with pytest.raises(QuambaEdgeError, match="unknown pooling"):
        model("median")


def test_every_pool_starts_from_the_same_encoder():
    from quamba_edge.models.adapool import init_set_model

    models = {p: init_set_model(SetModel(SetModelConfig(d_in=16, d_model=16, d_out=16, n_heads=4, n_layers=2,
                                                       d_ff=32, pool=p, project=False, query_flag=True,
                                                       final_norm=False)), seed=3) for p in POOLS}
    ref = models["avg"].layers.state_dict()
    for m in models.values():
        assert all(torch.equal(v, ref[k]) for k, v in m.layers.state_dict().items())


@pytest.mark.parametrize("pool", POOLS)
def test_int8_set_model_tracks_fp32(pool):
    """W8A8 (static per-tensor scales) of every linear layer: within a few percent of fp32 on fresh sets,
    and each quantized layer is exactly dequantize -> float linear -> (no requantize) of its int8 inputs."""
    from quamba_edge.quant.int8 import dequantize, quantize
    from quamba_edge.quant.recipes import StaticW8A8
    from quamba_edge.quant.static import QuantizedLinear, quantize_static

    def quantize_set_model(m, batches):
        return quantize_static(m, batches, StaticW8A8(), data="sets")

    m = model(pool, 0 if pool == "adapool" else "mean", seed=2)
    gen = torch.Generator().manual_seed(3)
    calib = [(torch.randn(16, 10, 6, generator=gen), None) for _ in range(4)]
    q, amax = quantize_set_model(m, calib)
    assert len(amax) == sum(isinstance(x, torch.nn.Linear) for x in m.modules())
    assert not any(isinstance(x, torch.nn.Linear) for x in q.modules())
    x = torch.randn(32, 10, 6, generator=gen)
    with torch.no_grad():
        ref, out = m(x), q(x)
        assert ((out - ref).norm() / ref.norm()).item() < 0.05
        wrapper = next(x for x in q.modules() if isinstance(x, QuantizedLinear))
        layer = wrapper.q
        a = torch.randn(5, layer.in_features, generator=gen)
        a_q = quantize(a, layer.in_scale)
        expected = dequantize(a_q, layer.in_scale) @ dequantize(layer.weight, layer.weight_scale).T + layer.bias
        assert torch.allclose(wrapper(a), expected, atol=1e-5)
    with pytest.raises(QuambaEdgeError, match="no sets"):
        quantize_set_model(m, [])
