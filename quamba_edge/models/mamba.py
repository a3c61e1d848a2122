"""Mamba-1 language model (Gu & Dao, 2023): a readable fp reference, CPU-first, any float dtype.

Parameter names follow the mamba-ssm checkpoint layout (`backbone.layers.{i}.mixer.in_proj.weight`,
...), so a mamba-ssm state dict loads without renaming. Shapes in comments: b batch, l length,
d = d_inner, n = d_state, r = dt_rank, k = d_conv.

Inference state is explicit: `conv_state` (n_layer, b, d, k-1) holds the last k-1 conv inputs and
`ssm_state` (n_layer, b, d, n) the scan state. Prefill and decode are the same function: a decode
step is a forward over one token with the state of the previous call.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quamba_edge.models.scan import selective_scan, selective_scan_train


class DictConfig:
    """`to_dict` / `from_dict` of a frozen config dataclass (config.json's `model_config`); from_dict drops keys the
    class does not have (older or other toolkits' extras)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class MambaConfig(DictConfig):
    d_model: int = 384
    n_layer: int = 6
    vocab_size: int = 256
    d_state: int = 16
    d_conv: int = 4
    expand: float = 2  # d_inner = int(expand * d_model), as mamba-ssm and transformers compute it
    dt_rank: int = 0  # 0 means ceil(d_model / 16), as in the paper
    norm_eps: float = 1e-5
    conv_bias: bool = True
    proj_bias: bool = False

    @property
    def d_inner(self) -> int:
        return int(self.expand * self.d_model)

    @property
    def rank(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)

    @property
    def conv_state_channels(self) -> int:
        """Channels of the conv state (the conv runs over x alone)."""
        return self.d_inner

    @property
    def ssm_state_shape(self) -> tuple[int, ...]:
        """The SSM state of one layer and one sequence: (d_inner, d_state)."""
        return (self.d_inner, self.d_state)

    def parameter_counts(self) -> tuple[int, int]:
        """(parameters of the int8-able layers, all other parameters incl. the tied embedding), whole model."""
        d, D, n, r, k = self.d_inner, self.d_model, self.d_state, self.rank, self.d_conv
        int8_layers = D * 2 * d + d * k + d * (r + 2 * n) + r * d + d * D
        other = d * n + 2 * d + d + D  # A_log, D, conv bias + dt bias, norm
        return self.n_layer * int8_layers, self.n_layer * other + self.vocab_size * D + D


# The public Mamba-1 sizes (state-spaces/mamba-*: d_model, n_layer; vocabulary padded to 50280), for
# estimates and benchmarks at a real model's shape when its weights are not at hand.
PUBLIC_SHAPES: dict[str, tuple[int, int]] = {
    "mamba-130m": (768, 24), "mamba-370m": (1024, 48), "mamba-790m": (1536, 48),
    "mamba-1.4b": (2048, 48), "mamba-2.8b": (2560, 64),
}


def public_shape(name: str) -> MambaConfig:
    d_model, n_layer = PUBLIC_SHAPES[name]
    return MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=50280)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MambaMixer(nn.Module):
    """in_proj -> causal depthwise conv1d -> SiLU -> selective scan (x_proj, dt_proj) -> gate -> out_proj."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        d, n, r = cfg.d_inner, cfg.d_state, cfg.rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * d, bias=cfg.proj_bias)
        self.conv1d = nn.Conv1d(d, d, cfg.d_conv, groups=d, padding=0, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(d, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1))
        self.D = nn.Parameter(torch.ones(d))
        self.out_proj = nn.Linear(d, cfg.d_model, bias=cfg.proj_bias)
        self.use_train_scan = False

    def forward(self, hidden: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """hidden (b, l, d_model); conv_state (b, d, k-1); ssm_state (b, d, n) -> out, new states."""
        cfg = self.cfg
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, l, d) each
        x_padded = torch.cat([conv_state, x.transpose(1, 2)], dim=2)  # (b, d, k-1+l)
        new_conv_state = x_padded[:, :, x_padded.shape[2] - (cfg.d_conv - 1) :]
        u = F.silu(self.conv1d(x_padded)).transpose(1, 2)  # (b, l, d)
        dt, B, C = self.x_proj(u).split([cfg.rank, cfg.d_state, cfg.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # (b, l, d)
        A = -torch.exp(self.A_log.float())  # (d, n)
        args = (u.float(), delta.float(), A, B.float(), C.float(), self.D.float())
        if self.use_train_scan:
            y, new_ssm_state = selective_scan_train(*args), ssm_state
        else:
            y, new_ssm_state = selective_scan(*args, ssm_state.float())
        y = y.to(hidden.dtype) * F.silu(z)
        return self.out_proj(y), new_conv_state, new_ssm_state.to(ssm_state.dtype)


class ResidualBlock(nn.Module):
    """h + mixer(RMSNorm(h)), threading the mixer's conv and SSM states (Mamba-1's mixer unless given one)."""

    def __init__(self, cfg: MambaConfig, mixer: nn.Module | None = None):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = mixer if mixer is not None else MambaMixer(cfg)

    def forward(self, h: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, conv_state, ssm_state = self.mixer(self.norm(h), conv_state, ssm_state)
        return h + out, conv_state, ssm_state


class Backbone(nn.Module):
    """Embedding, `n_layer` residual blocks around `mixer(cfg)` (Mamba-1's by default), final RMSNorm. `cfg` is
    any config with d_model, n_layer, vocab_size and norm_eps (Mamba-2's too)."""

    def __init__(self, cfg: MambaConfig, mixer: type[nn.Module] = MambaMixer):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(ResidualBlock(cfg, mixer(cfg)) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)


class StepLoop:
    """Prefill and decode as one loop over the layers, shared by the fp model, the quantized model and the
    quantized model on the kernel ops. A subclass supplies `embed(ids)`, `blocks()` (each block maps
    (h, conv_state_i, ssm_state_i) -> (h, conv_i, ssm_i)), `logits(h)` and `empty_state(batch)`.
    `in_place_decode`: the blocks update the states passed to a decode step in place (no copy per token)."""

    in_place_decode = False

    def step(self, input_ids: Tensor, conv_state: Tensor | None = None,
             ssm_state: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Run tokens (b, l) on top of a state; returns logits (b, l, vocab) and the new state.

        With no state this is prefill; with l = 1 and the previous state it is one decode step.
        """
        if (conv_state is None) != (ssm_state is None):
            raise ValueError("pass both conv_state and ssm_state (a decode step), or neither (a prefill)")
        decode = conv_state is not None and input_ids.shape[1] == 1
        if conv_state is None:
            conv_state, ssm_state = self.empty_state(input_ids.shape[0])
        h = self.embed(input_ids)
        new_conv, new_ssm = [], []
        for i, block in enumerate(self.blocks()):
            h, c, s = block(h, conv_state[i], ssm_state[i])
            new_conv.append(c)
            new_ssm.append(s)
        if decode and self.in_place_decode:
            return self.logits(h), conv_state, ssm_state
        return self.logits(h), torch.stack(new_conv), torch.stack(new_ssm)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.step(input_ids)[0]


class MambaLM(StepLoop, nn.Module):
    """Embedding, residual Mamba blocks, final RMSNorm, lm_head tied to the embedding."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.backbone.embedding.weight

    def empty_state(self, batch: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        dtype = dtype or self.lm_head.weight.dtype
        device = self.lm_head.weight.device
        conv = torch.zeros(cfg.n_layer, batch, cfg.d_inner, cfg.d_conv - 1, dtype=dtype, device=device)
        ssm = torch.zeros(cfg.n_layer, batch, cfg.d_inner, cfg.d_state, dtype=torch.float32, device=device)
        return conv, ssm

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.backbone.embedding(input_ids)

    def blocks(self):
        return self.backbone.layers

    def logits(self, h: Tensor) -> Tensor:
        """Final norm and the tied head on the residual stream (b, l, d_model)."""
        return self.lm_head(self.backbone.norm_f(h))

    def set_train_scan(self, enabled: bool) -> None:
        """Switch every mixer to the hand-differentiated scan (training from a zero state only)."""
        for layer in self.backbone.layers:
            layer.mixer.use_train_scan = enabled


def init_weights(model: MambaLM, seed: int) -> None:
    """The initialisation of the mamba-ssm reference: dt bias from a log-uniform dt in [1e-3, 1e-1]."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    with torch.no_grad():
        nn.init.normal_(model.backbone.embedding.weight, std=0.02, generator=gen)
        for layer in model.backbone.layers:
            mixer = layer.mixer
            for lin in (mixer.in_proj, mixer.x_proj, mixer.out_proj):
                bound = 1 / math.sqrt(lin.in_features)
                nn.init.uniform_(lin.weight, -bound, bound, generator=gen)
            # Residual-branch rescaling as in GPT-2 / mamba-ssm: out_proj / sqrt(n_layer).
            mixer.out_proj.weight /= math.sqrt(cfg.n_layer)
            dt_std = cfg.rank**-0.5
            nn.init.uniform_(mixer.dt_proj.weight, -dt_std, dt_std, generator=gen)
            dt = torch.exp(
                torch.rand(cfg.d_inner, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
            ).clamp(min=1e-4)
            mixer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            bound = 1 / math.sqrt(cfg.d_conv)
            nn.init.uniform_(mixer.conv1d.weight, -bound, bound, generator=gen)
            if mixer.conv1d.bias is not None:
                nn.init.uniform_(mixer.conv1d.bias, -bound, bound, generator=gen)
