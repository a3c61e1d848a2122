"""The quantized Mamba LM run through the kernel ops (CPU twins here) against `QuantizedMambaLM`.

Same weights, same scales: logits and states agree to fp32 precision except where an int8 rounding
tie goes the other way (a difference in the last fp32 bit before rounding); the bound allows that.
"""

from __future__ import annotations

import pytest
import torch

import quamba_edge.kernels as kernels
from quamba_edge.kernels.mamba import KernelMambaLM
from quamba_edge.models.mamba import MambaConfig
from quamba_edge.quant.quamba import calibrate
from quamba_edge.quant.recipes import make_recipe

from .conftest import make_model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module", autouse=True)
def twin():
    kernels.load(require=True)


@pytest.mark.parametrize("recipe", [make_recipe("quamba"), make_recipe("quamba", hadamard=False),
                                    make_recipe("naive"), make_recipe("quamba", int8_head=True)])
def test_kernel_model_matches_the_quantized_reference(recipe):
    cfg = MambaConfig(d_model=64, n_layer=2, vocab_size=256, d_state=16)  # d_inner 128 = 1 * 128
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (2, 48), generator=gen) for _ in range(3)]
    qmodel, _ = calibrate(make_model(cfg), batches, recipe)
    fast = KernelMambaLM(qmodel)
    ids = torch.randint(0, 256, (2, 40), generator=gen)
    with torch.no_grad():
        ref_logits, ref_conv, ref_ssm = qmodel.step(ids[:, :32])
        logits, conv, ssm = fast.step(ids[:, :32])
        assert rel_err(logits, ref_logits) < 2e-3 and rel_err(ssm, ref_ssm) < 2e-3
        assert (conv.int() - ref_conv.int()).abs().max() <= 1
        for t in range(32, 40):  # decode: the kernel path updates its own states in place
            ref_logits, ref_conv, ref_ssm = qmodel.step(ids[:, t:t + 1], ref_conv, ref_ssm)
            logits, conv, ssm = fast.step(ids[:, t:t + 1], conv, ssm)
            assert rel_err(logits, ref_logits) < 2e-3, t
        assert rel_err(ssm, ref_ssm) < 2e-3
