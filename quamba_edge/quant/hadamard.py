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


def _quadratic_character(q: int) -> list[int]:
    squares = {(i * i) % q for i in range(1, q)}
    return [0] + [1 if a in squares else -1 for a in range(1, q)]


def _jacobsthal(q: int) -> Tensor:
    chi = _quadratic_character(q)
    return torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64)


def _paley1(q: int) -> Tensor:
    """Order q + 1 for a prime q ≡ 3 (mod 4): H = I + [[0, 1ᵀ], [-1, Q]]."""
    n = q + 1
    S = torch.zeros(n, n, dtype=torch.float64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = _jacobsthal(q)
    return torch.eye(n, dtype=torch.float64) + S


def _paley2(q: int) -> Tensor:
    """Order 2(q + 1) for a prime q ≡ 1 (mod 4), from the symmetric conference matrix C."""
    n = q + 1
    C = torch.zeros(n, n, dtype=torch.float64)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = _jacobsthal(q)
    plus = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    minus = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(C, plus) + torch.kron(torch.eye(n, dtype=torch.float64), minus)


def sylvester(m: int) -> Tensor:
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < m:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


@cache
def small_hadamard(K: int) -> Tensor:
    """The ±1 matrix H_K (float64), verified H·Hᵀ = K·I."""
    if K == 1:
        H = torch.ones(1, 1, dtype=torch.float64)
    elif K == 12:
        H = _paley1(11)
    elif K == 20:
        H = _paley1(19)
    elif K == 28:
        H = _paley2(13)
    elif K == 40:
        H = torch.kron(sylvester(2), _paley1(19))
    else:
        raise ValueError(f"no Hadamard construction for K={K}; supported: {SUPPORTED_K}")
    if not torch.equal(H @ H.T, K * torch.eye(K, dtype=torch.float64)):
        raise AssertionError(f"H_{K} construction is not Hadamard")
    return H


def factor(n: int) -> tuple[int, int]:
    """n = K · 2^k with K in SUPPORTED_K (smallest K first) -> (K, 2^k)."""
    for K in SUPPORTED_K:
        if n % K == 0:
            m = n // K
            if m & (m - 1) == 0:
                return K, m
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
    if hadamard_K is None:
        K, m = factor(n)
        hadamard_K = small_hadamard(K)
    else:
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
