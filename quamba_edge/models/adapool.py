"""Pooling a set of transformer outputs into one vector: AdaPool and its baselines, and a small set model.

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
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quamba_edge.errors import QuambaEdgeError

POOLS = ("adapool", "avg", "max", "cls")


def check_sets(x: Tensor, mask: Tensor | None, d_in: int) -> None:
    """Bad sets are errors here, before any arithmetic can turn them into a silent NaN or a wrong answer."""
    if x.dim() != 3 or x.shape[-1] != d_in:
        raise QuambaEdgeError(f"sets must be (batch, n, {d_in}) tensors; got {tuple(x.shape)}. Fix: give each set "
                              f"element {d_in} features (the model's d_in).")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise QuambaEdgeError(f"got {x.shape[0]} set(s) of {x.shape[1]} element(s): there is nothing to pool.")
    if not torch.isfinite(x).all():
        raise QuambaEdgeError("the input sets contain NaN or inf values. Fix: clean or impute them first.")
    if mask is not None:
        if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise QuambaEdgeError(f"mask must be a bool tensor of shape {tuple(x.shape[:2])}, True where an "
                                  f"element is real; got {mask.dtype} {tuple(mask.shape)}.")
        empty = ~mask.any(dim=1)
        if empty.any():
            raise QuambaEdgeError(f"{int(empty.sum())} set(s) have every position masked (first: set "
                                  f"{int(empty.nonzero()[0])}): there is nothing to pool. Fix: drop empty sets.")


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

    def query_vector(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return AvgPool()(x, mask) if self.query == "mean" else x[:, int(self.query)]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        h, hd = self.n_heads, d // self.n_heads
        query = self.query_vector(x, mask)
        q = self.q_proj(query).view(b, h, 1, hd)
        k = self.k_proj(x).view(b, n, h, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, n, h, hd).transpose(1, 2)
        attn = masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), mask)  # (b, h, 1, n)
        pooled = self.out_proj((attn @ v).reshape(b, d))
        return pooled if self.query == "mean" else pooled + query


@dataclass(frozen=True)
class SetModelConfig:
    """`project=False` feeds the raw d_in features to the encoder and returns the pooled vector itself (the
    paper's KNN regression: d_in = d_model = d_out); `query_flag` adds a learned embedding to element 0,
    telling the encoder which element is the query; `final_norm` is a LayerNorm before pooling."""

    d_in: int = 16
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    d_out: int = 16
    pool: str = "adapool"
    pool_query: str | int = "mean"
    project: bool = True
    query_flag: bool = False
    final_norm: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


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


def make_pool(cfg: SetModelConfig) -> nn.Module:
    if cfg.pool == "adapool":
        return AdaPool(cfg.d_model, cfg.n_heads, cfg.pool_query)
    if cfg.pool in ("avg", "max", "cls"):
        return {"avg": AvgPool, "max": MaxPool, "cls": ClsToken}[cfg.pool]()
    raise QuambaEdgeError(f"unknown pooling {cfg.pool!r}; known: {', '.join(POOLS)}.")


class SetModel(nn.Module):
    """Input projection -> transformer encoder over the set -> pool -> linear head (classifier/regressor)."""


    def __init__(self, cfg: SetModelConfig):
        super().__init__()
        if not cfg.project and not cfg.d_in == cfg.d_model == cfg.d_out:
            raise ValueError("project=False needs d_in == d_model == d_out")
        self.cfg = cfg
        # Registration order matters: `init_set_model` reseeds and initialises the encoder first, so every
        # pooling method starts from the same encoder weights.
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff) for _ in range(cfg.n_layers))
        self.embed = nn.Linear(cfg.d_in, cfg.d_model) if cfg.project else nn.Identity()
        self.query_emb = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.query_flag else None
        self.norm = nn.LayerNorm(cfg.d_model) if cfg.final_norm else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.d_out) if cfg.project else nn.Identity()
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model)) if cfg.pool == "cls" else None
        self.pool = make_pool(cfg)

    def encode(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        check_sets(x, mask, self.cfg.d_in)
        h = self.embed(x)
        if self.query_emb is not None:  # element 0 is the query (before any class token is prepended)
            h = torch.cat([h[:, :1] + self.query_emb, h[:, 1:]], 1)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], 1, -1), h], 1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], 1)
        for layer in self.layers:
            h = layer(h, mask)
        return self.norm(h), mask

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h, mask = self.encode(x, mask)
        return self.head(self.pool(h, mask))


def init_set_model(model: SetModel, seed: int) -> SetModel:
    """Linear weights N(0, 0.02), zero biases, unit LayerNorms, from `seed`: the encoder is initialised first,
    so two models that differ only in their pooling get identical encoders (no lottery-ticket effect)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.02)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        for param in (model.query_emb, model.cls):
            if param is not None:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return model
