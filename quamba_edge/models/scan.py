"""The selective scan of Mamba-1 (Gu & Dao, 2023, Algorithm 2), in fp32 on any device.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t          h: (b, d, n)
    y_t = <h_t, C_t> + D * u_t

`selective_scan` is the readable reference used for inference and as the ground truth of every other
backend. `selective_scan_train` computes the same function with a hand-written backward: autograd
through a Python loop over time costs a full-size gradient per step, which makes CPU training ~10x
slower (see ENVIRONMENT.md). Here each time step is one fused multiply-add in both directions and
everything else is vectorised.
"""

from __future__ import annotations

import torch
from torch import Tensor


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    chunk: int = 64,
) -> tuple[Tensor, Tensor]:
    """u, delta: (b, l, d); A: (d, n); B, C: (b, l, n); D: (d,); h0: (b, d, n). Returns y (b, l, d), h_l.

    delta is already softplus'd (and biased). Time is processed in chunks so the (b, chunk, d, n)
    intermediates stay small at long prompt lengths. Without autograd the recurrence runs in place,
    one fused multiply-add per step; with autograd it builds a list (differentiable, slower).
    """
    b, l, d = u.shape
    n = A.shape[1]
    h = h0 if h0 is not None else u.new_zeros(b, d, n)
    in_place = not (torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C, D, h)))
    ys = []
    for start in range(0, l, chunk):
        span = slice(start, start + chunk)
        dA = torch.exp(delta[:, span, :, None] * A)  # (b, c, d, n)
        dBu = (delta[:, span] * u[:, span])[..., None] * B[:, span, None, :]  # (b, c, d, n)
        if in_place:
            states = dBu  # overwritten step by step with h_t = dA_t * h_{t-1} + dBu_t
            torch.addcmul(dBu[:, 0], dA[:, 0], h, out=states[:, 0])
            for t in range(1, states.shape[1]):
                torch.addcmul(states[:, t], dA[:, t], states[:, t - 1], out=states[:, t])
            h = states[:, -1].clone()
        else:
            steps = []
            for dA_t, dBu_t in zip(dA.unbind(1), dBu.unbind(1)):
                h = dA_t * h + dBu_t
                steps.append(h)
            states = torch.stack(steps, 1)
        ys.append((states @ C[:, span, :, None]).squeeze(-1))  # <h_t, C_t>: (b, c, d)
    y = torch.cat(ys, 1) + u * D
    return y, h


class _SelectiveScanTrain(torch.autograd.Function):
    """Same math as `selective_scan` with h0 = 0, time-major internally; returns y only."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D):
        # Time-major (l, b, d, n) so that each step reads and writes one contiguous slab.
        u_t, delta_t, B_t, C_t = (x.transpose(0, 1).contiguous() for x in (u, delta, B, C))
        dA = torch.exp(delta_t[..., None] * A)
        H = (delta_t * u_t)[..., None] * B_t[:, :, None, :]  # holds dBu, overwritten in place by h
        for t in range(1, H.shape[0]):
            torch.addcmul(H[t], dA[t], H[t - 1], out=H[t])
        y = (H @ C_t[..., None]).squeeze(-1) + u_t * D
        ctx.save_for_backward(u_t, delta_t, A, B_t, C_t, D, H, dA)
        return y.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, H, dA = ctx.saved_tensors
        gy = grad_y.transpose(0, 1).contiguous()  # (l, b, d)
        G = gy[..., None] * C[:, :, None, :]  # dL/dh_t, accumulated backwards in place
        for t in range(G.shape[0] - 2, -1, -1):
            torch.addcmul(G[t], dA[t + 1], G[t + 1], out=G[t])
        grad_C = (gy[:, :, None, :] @ H).squeeze(2)  # (l, b, n)
        grad_D = (gy * u).sum((0, 1))
        GB = (G @ B[..., None]).squeeze(-1)  # (l, b, d)
        grad_B = ((delta * u)[:, :, None, :] @ G).squeeze(2)
        # d/d(delta*A) = G_t * h_{t-1} * dA_t, with h_{-1} = 0.
        g_dA = torch.empty_like(dA)
        g_dA[0].zero_()
        torch.mul(dA[1:], H[:-1], out=g_dA[1:])
        g_dA[1:].mul_(G[1:])
        grad_A = (g_dA * delta[..., None]).sum((0, 1))
        g_delta = (g_dA * A).sum(-1) + GB * u
        grad_u = GB * delta + gy * D
        return (grad_u.transpose(0, 1), g_delta.transpose(0, 1), grad_A, grad_B.transpose(0, 1),
                grad_C.transpose(0, 1), grad_D)


def selective_scan_train(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """Training-speed scan from a zero state (full sequences only); equal to `selective_scan(...)[0]`."""
    return _SelectiveScanTrain.apply(u, delta, A, B, C, D)
