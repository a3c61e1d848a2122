"""Quantized Mamba-1 modules (W8A8, static per-tensor activation scales), built from an fp model.

Each module reads int8 and writes int8 (or fp32 where the contract keeps float), and does integer
arithmetic where a kernel would: int8 x int8 -> int32 for in_proj / x_proj / dt_proj / out_proj and
the depthwise conv. The scan runs in fp32 on dequantized inputs (DESIGN.md, "Scan math").

Data flow of one block (q: int8, s: its per-tensor scale):

    h (fp32 residual) -> RMSNorm -> q_in -> in_proj -> q_xz (x and z share s_xz)
    q_x -> causal conv1d -> SiLU -> q_u (percentile scale in `quamba`)
    q_u -> x_proj -> q_dbc (dt, B, C share s_dbc);  q_dt -> dt_proj (no bias) -> q_delta
    scan(q_u, q_delta, q_B, q_C, q_z; int8 A_log, D, delta_bias) -> y (fp32, gated by SiLU(z))
    y -> y·Mᵀ (Hadamard, `quamba`) -> q_y -> out_proj (weight W·Mᵀ) -> fp32 -> h + out
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quamba_edge.models.mamba import MambaConfig, RMSNorm, StepLoop
from quamba_edge.models.scan import selective_scan
from quamba_edge.quant.hadamard import rotate
from quamba_edge.quant.int8 import dequantize, int8_matmul, quantize
from quamba_edge.quant.recipes import Quamba

# Per-layer activation scales, in data-flow order; the calibration observers use the same names.
ACTIVATION_POINTS = ("norm", "xz", "u", "dbc", "delta", "y")


def _scalar() -> Tensor:
    return torch.ones((), dtype=torch.float32)


def _weight_scale(rows: int, granularity: str) -> Tensor:
    return torch.ones(rows, 1) if granularity == "channel" else _scalar()


class QRMSNorm(nn.Module):
    """RMSNorm in fp32 on the residual stream, output quantized for the next int8 matmul."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(d, eps)
        self.register_buffer("out_scale", _scalar())

    def forward(self, h: Tensor) -> Tensor:
        return quantize(self.norm(h.float()), self.out_scale)


class QLinear(nn.Module):
    """int8 activation x int8 weight -> int32, rescaled; int8 out with `out_scale`, else fp32 out."""

    def __init__(self, in_features: int, out_features: int, *, granularity: str, bias: bool,
                 int8_output: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", _weight_scale(out_features, granularity))
        self.register_buffer("in_scale", _scalar())
        self.register_buffer("out_scale", _scalar() if int8_output else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @torch.no_grad()
    def load_float(self, weight_q: Tensor, weight_scale: Tensor, in_scale: Tensor,
                   out_scale: Tensor | None, bias: Tensor | None = None) -> QLinear:
        self.weight.copy_(weight_q)
        self.weight_scale.copy_(weight_scale)
        self.in_scale.copy_(in_scale)
        if out_scale is not None:
            self.out_scale.copy_(out_scale)
        if bias is not None:
            self.bias.copy_(bias)
        return self

    def forward(self, x_q: Tensor) -> Tensor:
        lead = x_q.shape[:-1]
        acc = int8_matmul(x_q.reshape(-1, self.in_features), self.weight)  # (m, n) int32
        y = acc.float() * (self.in_scale * self.weight_scale.reshape(-1))
        if self.bias is not None:
            y = y + self.bias
        y = y.reshape(*lead, self.out_features)
        return quantize(y, self.out_scale) if self.out_scale is not None else y


class QConv1dSiLU(nn.Module):
    """Causal depthwise conv over int8 x (with the k-1 previous inputs prepended), SiLU, int8 u."""

    def __init__(self, d: int, k: int, *, granularity: str):
        super().__init__()
        self.k = k
        self.register_buffer("weight", torch.zeros(d, k, dtype=torch.int8))
        self.register_buffer("weight_scale", _weight_scale(d, granularity))
        self.register_buffer("bias", torch.zeros(d, dtype=torch.int8))
        self.register_buffer("bias_scale", _scalar())
        self.register_buffer("in_scale", _scalar())
        self.register_buffer("out_scale", _scalar())

    def forward(self, x_q: Tensor) -> Tensor:
        """x_q (b, d, k-1+l) int8 -> u_q (b, l, d) int8."""
        windows = x_q.unfold(2, self.k, 1).to(torch.int32)  # (b, d, l, k)
        acc = (windows * self.weight.to(torch.int32)[:, None, :]).sum(-1)  # (b, d, l), exact
        y = acc.float() * (self.in_scale * self.weight_scale) + dequantize(self.bias, self.bias_scale)[:, None]
        return quantize(F.silu(y), self.out_scale).transpose(1, 2)


class QSelectiveScan(nn.Module):
    """The fp32 scan on dequantized int8 inputs, with the SiLU(z) gate; returns y and the new state."""

    def __init__(self, d: int, n: int):
        super().__init__()
        for name, shape in (("A_log", (d, n)), ("D", (d,)), ("delta_bias", (d,))):
            self.register_buffer(name, torch.zeros(shape, dtype=torch.int8))
            self.register_buffer(f"{name}_scale", _scalar())
        for name in ("u_scale", "delta_scale", "dbc_scale", "z_scale"):
            self.register_buffer(name, _scalar())

    def forward(self, u_q: Tensor, delta_q: Tensor, B_q: Tensor, C_q: Tensor, z_q: Tensor,
                ssm_state: Tensor) -> tuple[Tensor, Tensor]:
        delta = F.softplus(dequantize(delta_q, self.delta_scale) + dequantize(self.delta_bias, self.delta_bias_scale))
        A = -torch.exp(dequantize(self.A_log, self.A_log_scale))
        u = dequantize(u_q, self.u_scale)
        y, state = selective_scan(
            u, delta, A, dequantize(B_q, self.dbc_scale), dequantize(C_q, self.dbc_scale),
            dequantize(self.D, self.D_scale), ssm_state,
        )
        return y * F.silu(dequantize(z_q, self.z_scale)), state


class QHadamardQuant(nn.Module):
    """y -> y·Mᵀ (when rotating) -> int8: the online half of Quamba's output rotation."""

    def __init__(self, d: int, rotate_output: bool):
        super().__init__()
        self.d, self.rotate_output = d, rotate_output
        self.register_buffer("out_scale", _scalar())

    def forward(self, y: Tensor) -> Tensor:
        return quantize(rotate(y, self.d) if self.rotate_output else y, self.out_scale)


class QMambaMixer(nn.Module):
    def __init__(self, cfg: MambaConfig, recipe: Quamba):
        super().__init__()
        self.cfg = cfg
        d, g = cfg.d_inner, recipe.weight_granularity
        self.in_proj = QLinear(cfg.d_model, 2 * d, granularity=g, bias=cfg.proj_bias, int8_output=True)
        self.conv1d = QConv1dSiLU(d, cfg.d_conv, granularity=g)
        self.x_proj = QLinear(d, cfg.rank + 2 * cfg.d_state, granularity=g, bias=False, int8_output=True)
        self.dt_proj = QLinear(cfg.rank, d, granularity=g, bias=False, int8_output=True)
        self.scan = QSelectiveScan(d, cfg.d_state)
        self.rotate = QHadamardQuant(d, recipe.hadamard)
        self.out_proj = QLinear(d, cfg.d_model, granularity=g, bias=cfg.proj_bias, int8_output=False)

    def forward(self, x_q: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x_q (b, l, d_model) int8; conv_state (b, d, k-1) int8; ssm_state (b, d, n) fp32."""
        cfg = self.cfg
        xz_q = self.in_proj(x_q)
        x_q, z_q = xz_q.chunk(2, dim=-1)
        x_padded = torch.cat([conv_state, x_q.transpose(1, 2)], dim=2)
        new_conv_state = x_padded[:, :, x_padded.shape[2] - (cfg.d_conv - 1) :]
        u_q = self.conv1d(x_padded)
        dbc_q = self.x_proj(u_q)
        dt_q, B_q, C_q = dbc_q.split([cfg.rank, cfg.d_state, cfg.d_state], dim=-1)
        delta_q = self.dt_proj(dt_q)
        y, new_ssm_state = self.scan(u_q, delta_q, B_q, C_q, z_q, ssm_state)
        return self.out_proj(self.rotate(y)), new_conv_state, new_ssm_state


class QResidualBlock(nn.Module):
    def __init__(self, cfg: MambaConfig, recipe: Quamba):
        super().__init__()
        self.norm = QRMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = QMambaMixer(cfg, recipe)

    def forward(self, h: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, conv_state, ssm_state = self.mixer(self.norm(h), conv_state, ssm_state)
        return h + out, conv_state, ssm_state


class QuantizedMambaLM(StepLoop, nn.Module):
    """Same interface as `MambaLM` (`step`, `forward`, `empty_state`); the conv state is int8 here."""

    def __init__(self, cfg: MambaConfig, recipe: Quamba):
        super().__init__()
        self.cfg, self.recipe = cfg, recipe
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(QResidualBlock(cfg, recipe) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = (QLinear(cfg.d_model, cfg.vocab_size, granularity="channel", bias=False, int8_output=False)
                     if recipe.int8_head else None)

    def empty_state(self, batch: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        device = self.embedding.weight.device
        conv = torch.zeros(cfg.n_layer, batch, cfg.d_inner, cfg.d_conv - 1, dtype=torch.int8, device=device)
        ssm = torch.zeros(cfg.n_layer, batch, cfg.d_inner, cfg.d_state, dtype=torch.float32, device=device)
        return conv, ssm

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.embedding(input_ids).float()

    def blocks(self):
        return self.layers

    def logits(self, h: Tensor) -> Tensor:
        """Final norm and head on the residual stream (b, l, d_model)."""
        normed = self.norm_f(h)
        if self.head is not None:  # --int8-head: per-channel int8 copy of the tied matrix
            return self.head(quantize(normed, self.head.in_scale))
        return F.linear(normed, self.embedding.weight)  # lm_head tied, fp32

    def state_dict_for_save(self) -> dict[str, Tensor]:
        return {k: v.contiguous() for k, v in self.state_dict().items()}
