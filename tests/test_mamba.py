import pytest
import torch

from quamba_edge.models.mamba import MambaConfig

from .conftest import make_model


def test_prefill_then_decode_equals_a_longer_prefill(tiny_model):
    ids = torch.randint(0, 256, (3, 23), generator=torch.Generator().manual_seed(0))
    full, conv_full, ssm_full = tiny_model.step(ids)
    logits, conv, ssm = tiny_model.step(ids[:, :11])
    pieces = [logits]
    for t in range(11, 23):
        logits, conv, ssm = tiny_model.step(ids[:, t : t + 1], conv, ssm)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ssm, ssm_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv, conv_full)


def test_half_a_state_is_refused(tiny_model):
    ids = torch.randint(0, 256, (1, 4))
    conv, ssm = tiny_model.empty_state(1)
    with pytest.raises(ValueError, match="both conv_state and ssm_state"):
        tiny_model.step(ids, conv_state=conv)
    with pytest.raises(ValueError, match="both conv_state and ssm_state"):
        tiny_model.step(ids, ssm_state=ssm)


def test_chunked_prefill_equals_one_prefill(tiny_model):
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    full = tiny_model(ids)
    a, conv, ssm = tiny_model.step(ids[:, :17])
    b, _, _ = tiny_model.step(ids[:, 17:], conv, ssm)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-5)


def test_runs_in_any_float_dtype(tiny_model):
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2))
    ref = tiny_model(ids).double()
    for dtype, tol in ((torch.float64, 1e-5), (torch.bfloat16, 0.1)):
        out = make_model().to(dtype)(ids)
        assert out.dtype == dtype
        rel = ((out.double() - ref).norm() / ref.norm()).item()
        assert rel < tol, (dtype, rel)


def test_training_scan_gives_the_same_logits(tiny_model):
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(3))
    ref = tiny_model(ids)
    tiny_model.set_train_scan(True)
    torch.testing.assert_close(tiny_model(ids), ref, rtol=1e-5, atol=1e-5)


def test_config_defaults_follow_the_paper():
    cfg = MambaConfig(d_model=768, n_layer=24, vocab_size=50280)
    assert cfg.d_inner == 1536 and cfg.rank == 48
