import pytest
import torch

from quamba_edge.quant.int8 import dequantize, int8_matmul, quantize, quantize_weight, scale_from_amax


def test_round_half_to_even_and_clamp():
    s = torch.tensor(1.0)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 127.6, -128.4, -300.0, 1e9])
    assert quantize(x, s).tolist() == [0, 2, 2, 0, -2, 126, 127, -128, -128, 127]


def test_scale_and_round_trip_error_is_half_a_step():
    x = torch.randn(1000) * 3
    s = scale_from_amax(x.abs().max())
    assert torch.isclose(s * 127, x.abs().max())
    err = (dequantize(quantize(x, s), s) - x).abs().max()
    assert err <= s / 2 + 1e-7


def test_per_channel_weights_use_each_rows_amax():
    w = torch.randn(6, 32) * torch.arange(1, 7)[:, None]
    q, s = quantize_weight(w, "channel")
    assert s.shape == (6, 1)
    assert (q.abs().amax(1) == 127).all()
    with pytest.raises(ValueError):
        quantize_weight(w, "group")


@pytest.mark.parametrize("m,k,n", [(1, 768, 1536), (5, 24, 768), (3, 12, 20), (17, 96, 56), (2, 7, 3),
                                   (4, 1024, 8), (3, 5120, 16)])
@pytest.mark.parametrize("extreme", [False, True])
def test_int8_matmul_is_exact(m, k, n, extreme):
    """Exact int32 results, also at the float32 bound (k = 1024 of -128 x -128) and past it (float64)."""
    g = torch.Generator().manual_seed(m * k + n)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    if extreme:
        a.fill_(-128)
        b.fill_(-128)
    out = int8_matmul(a, b)
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), a.long() @ b.long().T)
