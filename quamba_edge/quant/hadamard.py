"""Hadamard rotations for n = K·2^k, K ∈ {1, 12, 20, 28, 40}: M = (H_K ⊗ H_{2^k}) / √n, orthogonal.

Quamba rotates the scan output y before out_proj: y·Mᵀ has no outlier channels, so it quantizes well
per tensor, and out_proj's weight is replaced offline by W·Mᵀ so that (y·Mᵀ)(W·Mᵀ)ᵀ = y·Wᵀ.

H_{2^k} is Sylvester's. H_12 and H_20 come from Paley's first construction (q = 11, 19: primes ≡ 3
mod 4), H_28 from Paley's second (q = 13 ≡ 1 mod 4), H_40 = H_2 ⊗ H_20. Every one is checked for
H·Hᵀ = n·I when built. H_40 and the Paley-I matrices are not symmetric: M and Mᵀ are not the same.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

from quamba_edge.errors import QuambaEdgeError

SUPPORTED_K = (1, 12, 20, 28, 40)


def _conference(q: int, sign: float) -> Tensor:
    """[[0, 1ᵀ], [sign·1, Q]], Q the Jacobsthal matrix of the prime q: Q_ij = χ(j - i), χ its quadratic character."""
    squares = {(i * i) % q for i in range(1, q)}
    chi = [0] + [1 if a in squares else -1 for a in range(1, q)]
    S = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    S[0, 1:] = 1
    S[1:, 0] = sign
    S[1:, 1:] = torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64)
    return S


def sylvester(m: int) -> Tensor:
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < m:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


@cache
def small_hadamard(K: int) -> Tensor:
    """The ±1 matrix H_K (float64), verified H·Hᵀ = K·I; ValueError for K not in SUPPORTED_K."""
    if K == 1:
        H = sylvester(1)
    elif K in (12, 20):  # Paley I, q = K - 1 ≡ 3 (mod 4): H = I + S
        H = torch.eye(K, dtype=torch.float64) + _conference(K - 1, -1.0)
    elif K == 28:  # Paley II, q = 13 ≡ 1 (mod 4), from the symmetric conference matrix C
        minus = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        H = torch.kron(_conference(13, 1.0), sylvester(2)) + torch.kron(torch.eye(14, dtype=torch.float64), minus)
    elif K == 40:
        H = torch.kron(sylvester(2), small_hadamard(20))
    else:
        raise ValueError(f"no Hadamard construction for K={K}; supported: {SUPPORTED_K}")
    if not torch.equal(H @ H.T, K * torch.eye(K, dtype=torch.float64)):
        raise AssertionError(f"H_{K} construction is not Hadamard")
    return H


def factor(n: int) -> tuple[int, int]:
    """n = K · 2^k with K in SUPPORTED_K (smallest K first) -> (K, 2^k)."""
    for K in SUPPORTED_K:
        if n % K == 0 and (n // K) & (n // K - 1) == 0:
            return K, n // K
    sizes = ", ".join(f"{K}·2^k" for K in SUPPORTED_K)
    raise QuambaEdgeError(
        f"no supported Hadamard size for d_inner={n}: supported sizes are {sizes} (e.g. 768 = 12·64, "
        "5120 = 20·256). Fix: use a recipe without the rotation (`--no-hadamard`) for this model."
    )


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The orthogonal M = (H_K ⊗ H_{2^k}) / √n, dense (n, n)."""
    K, m = factor(n)
    return (torch.kron(small_hadamard(K), sylvester(m)) / n**0.5).to(dtype)


def rotate(x: Tensor, n: int | None = None, hadamard_K: Tensor | None = None) -> Tensor:
    """x·Mᵀ over the last dimension without forming M: H_K on the K axis, a fast Walsh-Hadamard on 2^k.

    With x viewed as X (…, K, m), (H_K ⊗ H_m)·vec(X) = H_K · X · H_mᵀ (H_m is symmetric). `hadamard_K`
    overrides the K factor `factor(n)` would pick (the kernels take it as an argument).
    """
    n = n or x.shape[-1]
    hadamard_K = small_hadamard(factor(n)[0]) if hadamard_K is None else hadamard_K
    K, m = hadamard_K.shape[0], n // hadamard_K.shape[0]
    lead = x.shape[:-1]
    X = x.reshape(*lead, K, m)
    h = 1
    while h < m:  # fast Walsh-Hadamard transform along the last axis, one butterfly level a pass
        pairs = X.reshape(*lead, K, m // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        X = torch.stack([a + b, a - b], dim=-2).reshape(*lead, K, m)
        h *= 2
    if K > 1:
        X = torch.einsum("ij,...jm->...im", hadamard_K.to(X.dtype), X)
    return X.reshape(x.shape) / n**0.5
