"""Shared fixtures: small random Mamba models and checkpoints written by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from quamba_edge.checkpoints.mamba import save_checkpoint
from quamba_edge.models.mamba import MambaConfig, MambaLM, init_weights

# The corpus cache is shared across runs (Makefile points it at ./.cache); tests never download models.
os.environ.setdefault("QUAMBA_EDGE_CACHE", str(Path(__file__).resolve().parents[1] / ".cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = MambaConfig(d_model=48, n_layer=2, vocab_size=256, d_state=8)  # d_inner 96 = 12 * 8


def make_model(cfg: MambaConfig = TINY, seed: int = 0) -> MambaLM:
    model = MambaLM(cfg)
    init_weights(model, seed)
    # Trained models have larger, less uniform weights than the init; widen D and A_log to match.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for layer in model.backbone.layers:
            layer.mixer.D.add_(torch.randn(cfg.d_inner, generator=gen) * 0.5)
            layer.mixer.A_log.add_(torch.randn(cfg.d_inner, cfg.d_state, generator=gen) * 0.3)
    return model.eval()


@pytest.fixture
def tiny_model() -> MambaLM:
    return make_model()


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny"
    save_checkpoint(make_model(), path)
    return path


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """About 40 KB of varied English-like text, so calibration sees realistic byte statistics."""
    gen = torch.Generator().manual_seed(0)
    words = ("the of and to a in that it was her she he not be his as had with for you my but all on at "
             "Elizabeth Darcy Emma Knightley letter morning sister happiness Mr. Mrs. said could would").split()
    picks = torch.randint(0, len(words), (7000,), generator=gen).tolist()
    text = " ".join(words[i] for i in picks)
    path = tmp_path / "text.txt"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def int8_agree(q: torch.Tensor, reference_prequant: torch.Tensor, tol: float = 1e-4) -> None:
    """q must equal round_half_even(reference_prequant) except where the reference sits within `tol`
    (relative to the int8 step) of a rounding tie, where it may differ by one."""
    expected = torch.clamp(torch.round(reference_prequant), -128, 127)
    diff = (q.float() - expected).abs()
    near_tie = ((reference_prequant - torch.floor(reference_prequant)) - 0.5).abs() < tol
    assert diff.max() <= 1, f"int8 mismatch by {diff.max()}"
    bad = (diff > 0) & ~near_tie
    assert not bad.any(), f"{int(bad.sum())} int8 values differ away from a rounding tie"


def rel_close(out: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5) -> None:
    """DESIGN.md's fp32 agreement: the largest error relative to the largest reference magnitude."""
    err = ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
    assert err < rtol, f"relative error {err:.3g} > {rtol}"


@pytest.fixture
def trt():
    """TensorRT's Python module, or tensorrt-rtx's (its parser and builder run without a GPU); skips without both."""
    from quamba_edge.backends.tensorrt import import_tensorrt
    from quamba_edge.errors import QuambaEdgeError

    try:
        return import_tensorrt(allow_rtx=True)
    except QuambaEdgeError as exc:
        pytest.skip(f"neither tensorrt nor tensorrt-rtx is installed: {exc}")
