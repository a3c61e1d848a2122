import numpy as np
import pytest
import torch

from quamba_edge.quant.observers import AbsMaxObserver, PercentileObserver, abs_quantile


def test_absmax_is_a_running_max():
    obs = AbsMaxObserver()
    obs.observe(torch.tensor([1.0, -3.0]))
    obs.observe(torch.tensor([2.0]))
    assert obs.amax == 3.0
    assert torch.isclose(obs.scale(), torch.tensor(3.0 / 127))


@pytest.mark.parametrize("q", [0.5, 0.99, 0.99999, 1.0])
def test_quantile_matches_numpy(q):
    x = torch.randn(300, 700)
    assert abs_quantile(x, q) == pytest.approx(np.quantile(x.abs().double().numpy(), q), rel=1e-6)


def test_percentile_ema_across_samples():
    obs = PercentileObserver(1.0)
    obs.observe(torch.tensor([4.0, -1.0]))  # first sample sets m
    assert obs.amax == 4.0
    obs.observe(torch.tensor([14.0]))  # m <- m + 0.01 (cur - m)
    assert obs.amax == pytest.approx(4.1)


def test_percentile_clips_outliers():
    x = torch.randn(100_000)
    x[7] = 1000.0
    obs = PercentileObserver(0.9999)
    obs.observe(x)
    assert obs.amax < 10
