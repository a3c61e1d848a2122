"""The state-space dual (SSD) layer of Mamba-2 (Dao & Gu, 2024, "Transformers are SSMs"), fp32, any device.

Per head h (scalar decay A_h < 0, head dimension p, state size n; heads share B and C within a group):

    H_t = exp(dt_t A_h) H_{t-1} + dt_t x_t B_t^T          H: (p, n) per head
    y_t = H_t C_t + D_h x_t

`ssd_recurrent` runs that recurrence step by step: the ground truth, and the decode step (l = 1).
`ssd_chunked` computes the same function as matrix products over chunks of Q steps (the paper's
Listing 1, "SSD minimal"): inside a chunk y = (C B^T * L) (dt x) with the decay mask
L[i, j] = exp(sum_{j<k<=i} dt_k A); between chunks one state per chunk carries the rest. It is the
prefill form, and the one a graph for ONNX Runtime or TensorRT is built from.

Shapes: x (b, l, h, p); dt (b, l, h), already softplus'd, biased and clamped; A (h,), negative; B, C
(b, l, g, n) with h divisible by g (head i reads group i // (h / g)); D (h,); state (b, h, p, n).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _per_head(t: Tensor, heads: int) -> Tensor:
    """(b, l, g, n) -> (b, l, h, n): each group's B or C repeated for its h/g heads."""
    return t.repeat_interleave(heads // t.shape[2], dim=2)


def ssd_recurrent(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                  state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence, one step at a time (fp32). Returns y (b, l, h, p) and the final state (b, h, p, n)."""
    b, l, h, p = x.shape
    Bh, Ch = _per_head(B, h), _per_head(C, h)
    H = state if state is not None else x.new_zeros(b, h, p, B.shape[-1])
    decay = torch.exp(dt * A)  # (b, l, h)
    ys = []
    for t in range(l):
        H = decay[:, t, :, None, None] * H + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((H @ Ch[:, t, :, :, None]).squeeze(-1))  # (b, h, p)
    y = torch.stack(ys, 1) if ys else x.new_zeros(b, 0, h, p)
    return y + x * D[:, None], H


def segsum(a: Tensor) -> Tensor:
    """Segment sums (..., T) -> (..., T, T): out[i, j] = sum_{j<k<=i} a_k for i >= j, and 0 above the diagonal
    (where exp(out) must be masked). Each entry is its own sum, never a difference of two long cumulative
    sums, so a decay over thousands of steps keeps its precision (the paper's stable `segsum`)."""
    T = a.shape[-1]
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    return torch.cumsum(a[..., :, None] * strict, dim=-2)


def decay_mask(a: Tensor) -> Tensor:
    """exp(segsum(a)) on and below the diagonal, 0 above: L[i, j] = prod_{j<k<=i} exp(a_k)."""
    T = a.shape[-1]
    return torch.exp(segsum(a)) * torch.ones(T, T, device=a.device).tril()


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                state: Tensor | None = None, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """The same function as `ssd_recurrent`, as matrix products over chunks of `chunk` steps (fp32).

    The sequence is padded to a multiple of `chunk` with dt = 0 (decay 1, no input), so the padding leaves
    the state unchanged. The states between chunks are one more product with the chunks' decay mask (over
    c + 1 chunk boundaries, the initial state first), not a loop. Returns y (b, l, h, p) and the final state
    (b, h, p, n). export/mamba2.py writes the same steps as an ONNX graph."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    pad = (-l) % chunk
    if pad:
        x, dt, B, C = (torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    c = x.shape[1] // chunk
    xdt = (x * dt[..., None]).view(b, c, chunk, h, p)
    Bh, Ch = _per_head(B, h).view(b, c, chunk, h, n), _per_head(C, h).view(b, c, chunk, h, n)
    a = (dt * A).view(b, c, chunk, h).permute(0, 3, 1, 2)  # (b, h, c, Q): log-decay per step
    cum = torch.cumsum(a, -1)
    scores = torch.einsum("bclhn,bcshn->bhcls", Ch, Bh) * decay_mask(a)  # C_i . B_j, masked and decayed
    y_diag = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)
    to_end = torch.exp(cum[..., -1:] - cum)  # (b, h, c, Q): decay from each step to its chunk's end
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bh, to_end, xdt)  # each chunk's own contribution
    H0 = state if state is not None else x.new_zeros(b, h, p, n)
    states = torch.cat([H0[:, None], chunk_states], 1)  # (b, c+1, h, p, n)
    between = decay_mask(torch.nn.functional.pad(cum[..., -1], (1, 0)))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", between, states)  # the state entering chunk z; the last: final
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, states[:, :-1], torch.exp(cum))
    y = (y_diag + y_off).reshape(b, c * chunk, h, p)[:, :l]
    return y + x[:, :l] * D[:, None], states[:, -1]
