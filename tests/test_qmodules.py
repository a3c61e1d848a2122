"""Every quantized module against its dequantize -> compute in float64 -> requantize reference."""

import pytest
import torch
import torch.nn.functional as F

from quamba_edge.models.scan import selective_scan
from quamba_edge.quant.hadamard import hadamard_matrix
from quamba_edge.quant.int8 import QLinear, dequantize, quantize, quantize_weight, scale_from_amax
from quamba_edge.quant.quamba import QConv1dSiLU, QHadamardQuant, QRMSNorm, QSelectiveScan

from .conftest import int8_agree, rel_close


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand_q(shape, g):
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=g)


def test_rmsnorm_quant():
    g = _gen(0)
    m = QRMSNorm(64, 1e-5)
    with torch.no_grad():
        m.norm.weight.copy_(torch.rand(64, generator=g) + 0.5)
        m.out_scale.fill_(0.02)
    h = torch.randn(3, 7, 64, generator=g) * 4
    hd = h.double()
    ref = hd * torch.rsqrt(hd.pow(2).mean(-1, keepdim=True) + 1e-5) * m.norm.weight.double()
    int8_agree(m(h), ref / 0.02)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("int8_output", [True, False])
@pytest.mark.parametrize("k,n", [(96, 192), (24, 96), (12, 20)])
def test_linear(granularity, int8_output, k, n):
    g = _gen(k + n)
    w_q, w_s = quantize_weight(torch.randn(n, k, generator=g), granularity)
    bias = torch.randn(n, generator=g) * 0.1
    lin = QLinear(k, n, granularity=granularity, bias=True, int8_output=int8_output)
    out_s = torch.tensor(0.05) if int8_output else None
    lin.load_float(w_q, w_s, torch.tensor(0.03), out_s, bias)
    x_q = _rand_q((2, 5, k), g)
    ref = F.linear(dequantize(x_q, 0.03).double(), dequantize(w_q, w_s).double(), bias.double())
    out = lin(x_q)
    if int8_output:
        assert out.dtype == torch.int8
        int8_agree(out, ref / 0.05)
    else:
        assert out.dtype == torch.float32
        rel_close(out, ref)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_conv1d_silu(granularity):
    g = _gen(3)
    d, k, l = 32, 4, 11
    conv = QConv1dSiLU(d, k, granularity=granularity)
    w_q, w_s = quantize_weight(torch.randn(d, k, generator=g), granularity)
    b = torch.randn(d, generator=g)
    b_s = scale_from_amax(b.abs().max())
    with torch.no_grad():
        conv.weight.copy_(w_q)
        conv.weight_scale.copy_(w_s)
        conv.bias.copy_(quantize(b, b_s))
        conv.bias_scale.copy_(b_s)
        conv.in_scale.fill_(0.04)
        conv.out_scale.fill_(0.03)
    x_q = _rand_q((2, d, k - 1 + l), g)
    ref = F.conv1d(dequantize(x_q, 0.04).double(), dequantize(w_q, w_s).double()[:, None, :],
                   dequantize(conv.bias, b_s).double(), groups=d)
    out = conv(x_q)
    assert out.shape == (2, l, d)
    int8_agree(out, (F.silu(ref) / 0.03).transpose(1, 2))


def test_selective_scan_on_int8_inputs():
    g = _gen(4)
    b, l, d, n = 2, 13, 16, 8
    scan = QSelectiveScan(d, n)
    A_log = torch.log(torch.rand(d, n, generator=g) * 15 + 1)
    D, delta_bias = torch.randn(d, generator=g), torch.randn(d, generator=g) - 3
    with torch.no_grad():
        for name, t in (("A_log", A_log), ("D", D), ("delta_bias", delta_bias)):
            s = scale_from_amax(t.abs().max())
            getattr(scan, name).copy_(quantize(t, s))
            getattr(scan, f"{name}_scale").copy_(s)
        scan.u_scale.fill_(0.02)
        scan.delta_scale.fill_(0.01)
        scan.dbc_scale.fill_(0.03)
        scan.z_scale.fill_(0.05)
    u_q, delta_q, B_q, C_q, z_q = (_rand_q(s, g) for s in [(b, l, d), (b, l, d), (b, l, n), (b, l, n), (b, l, d)])
    h0 = torch.randn(b, d, n, generator=g)
    y, h = scan(u_q, delta_q, B_q, C_q, z_q, h0)

    def deq(name):
        return dequantize(getattr(scan, name), getattr(scan, f"{name}_scale")).double()

    delta = F.softplus(dequantize(delta_q, 0.01).double() + deq("delta_bias"))
    y_ref, h_ref = selective_scan(
        dequantize(u_q, 0.02).double(), delta, -torch.exp(deq("A_log")), dequantize(B_q, 0.03).double(),
        dequantize(C_q, 0.03).double(), deq("D"), h0.double(),
    )
    y_ref = y_ref * F.silu(dequantize(z_q, 0.05).double())
    rel_close(y, y_ref)
    rel_close(h, h_ref)


@pytest.mark.parametrize("rotate", [True, False])
def test_hadamard_quant(rotate):
    g = _gen(5)
    m = QHadamardQuant(96, rotate)
    with torch.no_grad():
        m.out_scale.fill_(0.01)
    y = torch.randn(2, 9, 96, generator=g)
    ref = y.double() @ hadamard_matrix(96, torch.float64).T if rotate else y.double()
    int8_agree(m(y), ref / 0.01)
