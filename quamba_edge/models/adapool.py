"""A small set model (pre-norm transformer encoder -> a pool from models/pooling.py -> head), and the checks
every set input passes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.models.pooling import EncoderLayer, make_pool


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
        self.pool = make_pool(cfg.pool, cfg.d_model, cfg.n_heads, cfg.pool_query)

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
