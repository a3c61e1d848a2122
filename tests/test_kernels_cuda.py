"""The CUDA kernels against the PyTorch reference, on a GPU (`pytest -m cuda` on a GPU machine or in the
Jetson image). Same inputs and bounds as the CPU-twin tests: int8 exact except rounding ties, fp32
within 1e-5 relative; plus the whole quantized model on the kernels against QuantizedMambaLM.
"""

from __future__ import annotations

import pytest
import torch

import quamba_edge.kernels as kernels
from quamba_edge.kernels.mamba import KernelMambaLM
from quamba_edge.models.mamba import MambaConfig
from quamba_edge.quant.hadamard import factor, rotate, small_hadamard
from quamba_edge.quant.quamba import QHadamardQuant, QRMSNorm, calibrate
from quamba_edge.quant.recipes import make_recipe

from .conftest import make_model
from .test_kernels import (
    assert_int8_equal_except_ties,
    conv_args,
    conv_module,
    conv_pre_round,
    make_scan,
    rand_int8,
    rel_err,
    scan_inputs,
    scan_scales,
)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (pytest -m cuda there)")]
ops = kernels.ops


@pytest.fixture(scope="module", autouse=True)
def cuda_kernels():
    state = kernels.load(require=True)
    assert state.cuda and kernels.backend("cuda") == "cuda", "the extension was built without its CUDA kernels"


def cuda(*tensors):
    return [t.cuda() for t in tensors]


@pytest.mark.parametrize("b,length,d,n", [(1, 1, 64, 16), (2, 37, 1536, 16), (1, 300, 160, 8), (2, 5, 40, 64)])
def test_selective_scan_cuda(b, length, d, n):
    gen = torch.Generator().manual_seed(length)
    scan = make_scan(d, n, gen)
    u, delta, B, C, z, h0 = scan_inputs(b, length, d, n, gen)
    y_ref, h_ref = scan(u, delta, B, C, z, h0)
    args = cuda(u, delta, B, C, z, scan.A_log, scan.D, scan.delta_bias, scan_scales(scan))
    y, h = ops.selective_scan(*args, h0.cuda())
    assert rel_err(y.cpu(), y_ref) < 1e-5 and rel_err(h.cpu(), h_ref) < 1e-5
    state = h0.cuda()
    steps = [ops.selective_scan_step(*[t[:, i].contiguous() if t.dim() == 3 else t for t in args], state)
             for i in range(length)]
    assert rel_err(torch.stack(steps, 1).cpu(), y_ref) < 1e-5 and rel_err(state.cpu(), h_ref) < 1e-5


@pytest.mark.parametrize("b,length,d,k", [(1, 1, 64, 4), (2, 70, 1536, 4), (3, 3, 40, 2)])
def test_conv1d_silu_cuda(b, length, d, k):
    gen = torch.Generator().manual_seed(length)
    conv = conv_module(d, k, True, gen)
    x, state = rand_int8(b, length, d, gen=gen), rand_int8(b, d, k - 1, gen=gen)
    padded = torch.cat([state, x.transpose(1, 2)], 2)
    u, new_state = ops.conv1d_silu(x.cuda(), state.cuda(), *cuda(*conv_args(conv)))
    assert_int8_equal_except_ties(u.cpu(), conv(padded), conv_pre_round(conv, padded))
    assert torch.equal(new_state.cpu(), padded[:, :, -(k - 1):])
    rolling = state.cuda()
    steps = [ops.conv1d_silu_step(x[:, t].contiguous().cuda(), rolling, *cuda(*conv_args(conv))) for t in range(length)]
    assert torch.equal(torch.stack(steps, 1), u) and torch.equal(rolling, new_state)


@pytest.mark.parametrize("n", [768, 1536, 5120, 896, 4096])
def test_hadamard_and_rmsnorm_quantize_cuda(n):
    gen = torch.Generator().manual_seed(n)
    rot = QHadamardQuant(n, rotate_output=True)
    rot.out_scale.fill_(0.05)
    y = torch.randn(4, 3, n, generator=gen)
    H = small_hadamard(factor(n)[0]).to(torch.int8)
    q = ops.hadamard_quantize(y.cuda(), H.cuda(), rot.out_scale.reshape(1).cuda())
    assert_int8_equal_except_ties(q.cpu(), rot(y), rotate(y) / rot.out_scale)
    norm = QRMSNorm(n, 1e-5)
    norm.out_scale.fill_(0.03)
    x = torch.randn(5, n, generator=gen) * 2
    q = ops.rmsnorm_quantize(x.cuda(), norm.norm.weight.detach().cuda(), 1e-5, norm.out_scale.reshape(1).cuda())
    assert_int8_equal_except_ties(q.cpu(), norm(x), norm.norm(x).detach() / norm.out_scale)


def test_cuda_ops_reject_cpu_tensors_and_bad_shapes():
    gen = torch.Generator().manual_seed(0)
    scan = make_scan(32, 16, gen)
    u, delta, B, C, z, h0 = scan_inputs(1, 4, 32, 16, gen)
    args = cuda(u, delta, B, C, z, scan.A_log, scan.D, scan.delta_bias, scan_scales(scan))
    with pytest.raises(RuntimeError, match="ssm_state must be a contiguous float32"):
        ops.selective_scan(*args, h0)  # state left on the CPU
    with pytest.raises(RuntimeError, match="B/C has size"):
        ops.selective_scan(args[0], args[1], args[2][..., :8].contiguous(), *args[3:], h0.cuda())


def test_kernel_model_on_cuda_matches_the_reference():
    cfg = MambaConfig(d_model=128, n_layer=2, vocab_size=256, d_state=16)  # d_inner 256
    gen = torch.Generator().manual_seed(0)
    qmodel, _ = calibrate(make_model(cfg), [torch.randint(0, 256, (2, 64), generator=gen) for _ in range(2)],
                          make_recipe("quamba"))
    ids = torch.randint(0, 256, (2, 48), generator=gen)
    with torch.no_grad():
        ref_logits, ref_conv, ref_ssm = qmodel.step(ids)
        fast = KernelMambaLM(qmodel.cuda())
        logits, conv, ssm = fast.step(ids.cuda())
    assert rel_err(logits.cpu(), ref_logits) < 2e-3 and rel_err(ssm.cpu(), ref_ssm) < 2e-3
    assert (conv.cpu().int() - ref_conv.int()).abs().max() <= 1


@pytest.mark.parametrize("b,H,P,G,N", [(1, 4, 16, 1, 16), (3, 24, 64, 1, 128), (2, 8, 32, 4, 64)])
def test_mamba2_ssd_step_cuda(b, H, P, G, N):
    """csrc/cuda/ssd_step.cu against the reference op (quant/quamba2.py's SSD step), steps chained in place."""
    from .test_export_mamba2 import ssd_step_inputs

    gen = torch.Generator().manual_seed(H)
    state_ref = torch.randn(b, H, P, N, generator=gen)
    state = state_ref.cuda()
    for step in range(3):
        args = ssd_step_inputs(b, H, P, G, N, gen)
        y_ref = kernels.reference.ssd_step(*args[:6], state_ref, G, 0.001, 0.1 if step else 0.0)
        y = ops.ssd_step(*cuda(*args[:6]), state, G, 0.001, 0.1 if step else 0.0)
        assert rel_err(y.cpu(), y_ref) < 1e-5 and rel_err(state.cpu(), state_ref) < 1e-5
