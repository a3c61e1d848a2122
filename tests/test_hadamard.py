import pytest
import torch

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.quant.hadamard import SUPPORTED_K, factor, hadamard_matrix, rotate, small_hadamard


@pytest.mark.parametrize("K", SUPPORTED_K)
def test_small_hadamard_matrices(K):
    H = small_hadamard(K)
    assert set(H.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(H @ H.T, K * torch.eye(K, dtype=torch.float64))


@pytest.mark.parametrize("n", [768, 1536, 2048, 3072, 4096, 5120])
def test_public_mamba_widths(n):
    """Every d_inner of the public Mamba sizes (and the bundled model's 768)."""
    K, m = factor(n)
    assert K * m == n and K in SUPPORTED_K
    H = (hadamard_matrix(n, torch.float64) * n**0.5).round()  # the ±1 matrix H_K ⊗ H_m
    assert torch.equal(H.abs(), torch.ones(n, n, dtype=torch.float64))
    assert torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("n", [12, 40, 80, 224, 768, 640])
def test_fast_rotation_equals_the_dense_matrix(n):
    x = torch.randn(3, 5, n, dtype=torch.float64)
    torch.testing.assert_close(rotate(x), x @ hadamard_matrix(n, torch.float64).T)


def test_rotation_preserves_the_product_when_the_weight_is_rotated_too():
    n = 768
    y, W = torch.randn(4, n, dtype=torch.float64), torch.randn(32, n, dtype=torch.float64)
    M = hadamard_matrix(n, torch.float64)
    torch.testing.assert_close(rotate(y) @ (W @ M.T).T, y @ W.T)


def test_m_is_not_symmetric_for_k_12():
    M = hadamard_matrix(12 * 4, torch.float64)
    assert not torch.allclose(M, M.T)


def test_unsupported_width_lists_supported_sizes():
    with pytest.raises(QuambaEdgeError, match=r"d_inner=100.*12·2\^k.*--no-hadamard"):
        factor(100)
