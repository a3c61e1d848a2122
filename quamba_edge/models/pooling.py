"""Pooling a set of transformer outputs into one vector: AdaPool and its baselines, and the pre-norm
transformer layer the set models and keyword spotters put in front of them.

AdaPool (Brothers, ICML 2025, "Robust Noise Attenuation via Adaptive Pooling of Transformer Outputs") is
multi-head cross-attention whose query is computed from the set itself: by default the mean of the set,
or one chosen vector (with a skip connection that adds it back). When only k of the N vectors carry
signal (SNR = k/N), the attention can weight them and ignore the distractors; AvgPool weights all N
equally (optimal only at SNR 1), MaxPool keeps per-feature extremes, a class token depends on what the
encoder learns to write into it.

Every pool maps (batch, n, d) and an optional mask (batch, n), True where a position is real, to
(batch, d). Masked positions never change the result (tested).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quamba_edge.errors import QuambaEdgeError

POOLS = ("adapool", "avg", "max", "cls")


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last axis (the set); masked keys get zero weight exactly."""
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1)


class AvgPool(nn.Module):
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            return x.mean(1)
        w = mask.to(x.dtype)[..., None]
        return (x * w).sum(1) / w.sum(1)


class MaxPool(nn.Module):
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            x = x.masked_fill(~mask[..., None], float("-inf"))
        return x.amax(1)


class ClsToken(nn.Module):
    """Reads position 0, where `SetModel` prepends a learned token before the encoder."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return x[:, 0]


class AdaPool(nn.Module):
    """Multi-head attention from one query, computed from the set, to every element of the set.

    query="mean": the (masked) mean of the set; query=i: element i, added back after the attention
    (the skip connection), so the pool can only move away from that element where the set says so.
    """

    def __init__(self, d: int, n_heads: int = 4, query: str | int = "mean"):
        super().__init__()
        if d % n_heads:
            raise ValueError(f"d={d} is not divisible by n_heads={n_heads}")
        self.d, self.n_heads, self.query = d, n_heads, query
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        h, hd = self.n_heads, d // self.n_heads
        query = AvgPool()(x, mask) if self.query == "mean" else x[:, int(self.query)]
        q = self.q_proj(query).view(b, h, 1, hd)
        k = self.k_proj(x).view(b, n, h, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, n, h, hd).transpose(1, 2)
        attn = masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), mask)  # (b, h, 1, n)
        pooled = self.out_proj((attn @ v).reshape(b, d))
        return pooled if self.query == "mean" else pooled + query


def make_pool(name: str, d: int, n_heads: int, query: str | int = "mean") -> nn.Module:
    """The pool named `name` (one of POOLS); `n_heads` and `query` configure AdaPool."""
    if name == "adapool":
        return AdaPool(d, n_heads, query)
    if name in POOLS:
        return {"avg": AvgPool, "max": MaxPool, "cls": ClsToken}[name]()
    raise QuambaEdgeError(f"unknown pooling {name!r}; known: {', '.join(POOLS)}.")


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer with explicit linear layers (so each can be quantized and exported)."""

    def __init__(self, d: int, n_heads: int, d_ff: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        h, hd = self.n_heads, d // self.n_heads
        y = self.norm1(x)
        q, k, v = (p(y).view(b, n, h, hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        attn = masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), mask)
        x = x + self.out_proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


