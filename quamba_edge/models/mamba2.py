"""Mamba-2 language model (Dao & Gu, 2024): a readable fp reference, CPU-first, any float dtype.

One block: in_proj to (z, x, B, C, dt); a causal depthwise conv over (x, B, C) and SiLU; the SSD layer
(models/ssd.py: a scalar decay A per head, heads of `headdim` channels, B and C shared by the heads of
each of `ngroups` groups, D skip); a gated RMSNorm (y * SiLU(z), normalised per group) and out_proj.
Parameter names follow the mamba-ssm layout (`backbone.layers.{i}.mixer.in_proj.weight`, `dt_bias`,
`A_log`, `D`, `norm.weight`, ...), which is also transformers' `Mamba2ForCausalLM` layout except for
`backbone.embeddings` (checkpoints/ renames it).

Shapes: b batch, l length, d = d_inner = expand * d_model, h = nheads = d / headdim, p = headdim,
g = ngroups, n = d_state, k = d_conv, e = conv_dim = d + 2 g n.

Inference state is explicit: `conv_state` (n_layer, b, e, k-1) holds the last k-1 conv inputs and
`ssm_state` (n_layer, b, h, p, n) the SSD state. Prefill and decode are the same `step()`: a decode step
is a forward over one token with the previous call's state. Prompts longer than one token take the
chunked (SSD) form, a single token the recurrence; both are the same function (tests/test_mamba2.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quamba_edge.models.mamba import Backbone, DictConfig, StepLoop
from quamba_edge.models.ssd import ssd_chunked, ssd_recurrent


@dataclass(frozen=True)
class Mamba2Config(DictConfig):
    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = 256
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 32
    ngroups: int = 1
    chunk_size: int = 64  # the SSD chunk of the prefill form (mamba-ssm trains with 256)
    norm_eps: float = 1e-5
    conv_bias: bool = True
    proj_bias: bool = False
    dt_min: float = 0.0  # dt is clamped to [dt_min, dt_max] after softplus (mamba-ssm's dt_limit)
    dt_max: float | None = None
    tie_embeddings: bool = True  # the mamba2-* checkpoints tie lm_head to the embedding; Codestral does not

    def __post_init__(self) -> None:
        d = self.expand * self.d_model
        if d % self.headdim or (d // self.headdim) % self.ngroups:
            raise ValueError(f"d_inner {d} must split into heads of {self.headdim} and the heads into "
                             f"{self.ngroups} groups (nheads {d / self.headdim:g})")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def conv_state_channels(self) -> int:
        """Channels of the conv state (the conv runs over x, B and C)."""
        return self.conv_dim

    @property
    def ssm_state_shape(self) -> tuple[int, ...]:
        """The SSD state of one layer and one sequence: (nheads, headdim, d_state)."""
        return (self.nheads, self.headdim, self.d_state)

    def parameter_counts(self) -> tuple[int, int]:
        """(parameters of the int8-able layers: in_proj, conv, out_proj; all other parameters incl. the
        embedding and an untied head), whole model."""
        d, D, e, h = self.d_inner, self.d_model, self.conv_dim, self.nheads
        int8_layers = D * (d + e + h) + e * self.d_conv + d * D
        other = 3 * h + e + d + D  # dt_bias, A_log, D; conv bias; gated norm; block norm
        head = 0 if self.tie_embeddings else self.vocab_size * D
        return self.n_layer * int8_layers, self.n_layer * other + self.vocab_size * D + head + D


# The public Mamba-2 sizes (state-spaces/mamba2-*: d_model, n_layer; d_state 128, headdim 64, ngroups 1,
# vocabulary padded to 50288), for estimates at a real model's shape when its weights are not at hand.
PUBLIC_SHAPES: dict[str, tuple[int, int]] = {
    "mamba2-130m": (768, 24), "mamba2-370m": (1024, 48), "mamba2-780m": (1536, 48),
    "mamba2-1.3b": (2048, 48), "mamba2-2.7b": (2560, 64),
}


def public_shape(name: str) -> Mamba2Config:
    d_model, n_layer = PUBLIC_SHAPES[name]
    return Mamba2Config(d_model=d_model, n_layer=n_layer, vocab_size=50288, d_state=128, headdim=64)


class GatedRMSNorm(nn.Module):
    """RMSNorm of y * SiLU(z) over groups of `group` channels (mamba-ssm's RMSNormGated with
    norm_before_gate=False and group_size = d_inner / ngroups), in fp32."""

    def __init__(self, d: int, group: int, eps: float):
        super().__init__()
        self.group, self.eps = group, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        g = (y.float() * F.silu(z.float())).unflatten(-1, (-1, self.group))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (g.flatten(-2) * self.weight.float()).to(y.dtype)


class Mamba2Mixer(nn.Module):
    """in_proj -> causal depthwise conv1d over (x, B, C) -> SiLU -> SSD -> gated RMSNorm -> out_proj."""

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        d, h = cfg.d_inner, cfg.nheads
        self.in_proj = nn.Linear(cfg.d_model, d + cfg.conv_dim + h, bias=cfg.proj_bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(h))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, h + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(d, d // cfg.ngroups, cfg.norm_eps)
        self.out_proj = nn.Linear(d, cfg.d_model, bias=cfg.proj_bias)

    def forward(self, hidden: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """hidden (b, l, d_model); conv_state (b, e, k-1); ssm_state (b, h, p, n) -> out, new states."""
        cfg = self.cfg
        l = hidden.shape[1]
        z, xbc, dt = self.in_proj(hidden).split([cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1)
        padded = torch.cat([conv_state, xbc.transpose(1, 2)], dim=2)  # (b, e, k-1+l)
        new_conv_state = padded[:, :, padded.shape[2] - (cfg.d_conv - 1):]
        xbc = F.silu(self.conv1d(padded)).transpose(1, 2)  # (b, l, e)
        x, B, C = xbc.split([cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(cfg.dt_min, cfg.dt_max)  # (b, l, h)
        A = -torch.exp(self.A_log.float())
        groups = (cfg.ngroups, cfg.d_state)
        args = (x.float().unflatten(-1, (cfg.nheads, cfg.headdim)), dt, A, B.float().unflatten(-1, groups),
                C.float().unflatten(-1, groups), self.D.float(), ssm_state.float())
        y, new_ssm_state = ssd_recurrent(*args) if l == 1 else ssd_chunked(*args, chunk=cfg.chunk_size)
        y = self.norm(y.flatten(-2).to(hidden.dtype), z)
        return self.out_proj(y), new_conv_state, new_ssm_state.to(ssm_state.dtype)


class Mamba2LM(StepLoop, nn.Module):
    """Embedding, residual Mamba-2 blocks, final RMSNorm, lm_head (tied to the embedding unless the config
    says otherwise)."""

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg, Mamba2Mixer)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def empty_state(self, batch: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Zero states: conv (n_layer, b, e, k-1) in the model's dtype, SSD (n_layer, b, h, p, n) in fp32."""
        cfg = self.cfg
        dtype = dtype or self.lm_head.weight.dtype
        device = self.lm_head.weight.device
        conv = torch.zeros(cfg.n_layer, batch, cfg.conv_dim, cfg.d_conv - 1, dtype=dtype, device=device)
        ssm = torch.zeros(cfg.n_layer, batch, cfg.nheads, cfg.headdim, cfg.d_state, dtype=torch.float32,
                          device=device)
        return conv, ssm

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.backbone.embedding(input_ids)

    def blocks(self):
        return self.backbone.layers

    def logits(self, h: Tensor) -> Tensor:
        """Final norm and the head on the residual stream (b, l, d_model) -> (b, l, vocab)."""
        return self.lm_head(self.backbone.norm_f(h))


def init_weights(model: Mamba2LM, seed: int) -> None:
    """mamba-ssm's Mamba2 initialisation: dt bias from a log-uniform dt in [1e-3, 1e-1], A_h uniform in
    [1, 16], out_proj scaled by 1/sqrt(n_layer)."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    with torch.no_grad():
        nn.init.normal_(model.backbone.embedding.weight, std=0.02, generator=gen)
        if not cfg.tie_embeddings:
            nn.init.normal_(model.lm_head.weight, std=0.02, generator=gen)
        for layer in model.backbone.layers:
            mixer = layer.mixer
            for lin in (mixer.in_proj, mixer.out_proj):
                bound = 1 / math.sqrt(lin.in_features)
                nn.init.uniform_(lin.weight, -bound, bound, generator=gen)
            mixer.out_proj.weight /= math.sqrt(cfg.n_layer)
            dt = torch.exp(torch.rand(cfg.nheads, generator=gen) * (math.log(0.1) - math.log(1e-3))
                           + math.log(1e-3)).clamp(min=1e-4)
            mixer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            mixer.A_log.copy_(torch.log(torch.empty(cfg.nheads).uniform_(1, 16, generator=gen)))
            bound = 1 / math.sqrt(cfg.d_conv)
            nn.init.uniform_(mixer.conv1d.weight, -bound, bound, generator=gen)
            if mixer.conv1d.bias is not None:
                nn.init.uniform_(mixer.conv1d.bias, -bound, bound, generator=gen)
