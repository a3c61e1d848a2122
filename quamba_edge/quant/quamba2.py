"""W8A8 for Mamba-2: the quantized block and the handler that calibrates an fp `Mamba2LM` and builds it.

Quamba's ideas carried over from Mamba-1 (quant/quamba.py), and the one Quamba2 (Chiang et al., ICML 2025)
adds for this block, each a switch of `recipes.Quamba2`:

- percentile: the SSM input x = SiLU(conv(x)) gets its scale from the α-quantile of |x| per calibration
  sample, combined by an EMA (Quamba's input-max suppression); abs-max otherwise.
- hadamard: the normalised scan output g is rotated, g·Mᵀ, before it is quantized for out_proj, whose weight
  is W·diag(w_norm)·Mᵀ offline (the gated norm's weight folds into out_proj too).
- group_scales: x has one scale per head and B, C one per group (Quamba2's head-group and group scales),
  before and after the conv; without them each of z, x, B, C and dt has one per-tensor scale.

Data flow of one block (q: int8; every scale static, from calibration):

    h (fp32) -> RMSNorm -> q_norm -> in_proj (int8 x int8 -> int32) -> z, xBC, dt (int8, scales per segment)
    q_xBC -> causal depthwise conv (int32) -> SiLU -> q_x, q_B, q_C (per head / per group, or per tensor)
    SSD (fp32 on dequantized x, B, C; dt = clamp(softplus(dt + dt_bias)); A = -exp(A_log); D skip)
    g = RMSNorm_group(y * SiLU(z)) without its weight -> g·Mᵀ -> q_y -> out_proj (W·diag(w)·Mᵀ) -> fp32 -> h + out

dt_bias, A_log and D stay fp32 (3 x nheads numbers a layer); so do the embedding, the final norm, lm_head,
the residual stream and the SSD state, as in the Mamba-1 contract (DESIGN.md). The conv state is int8.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quamba_edge.models.mamba import RMSNorm, StepLoop
from quamba_edge.models.mamba2 import Mamba2Config, Mamba2LM
from quamba_edge.models.ssd import ssd_chunked, ssd_recurrent
from quamba_edge.quant.hadamard import factor, hadamard_matrix, rotate
from quamba_edge.quant.int8 import QLinear, dequantize, quantize, quantize_weight, scalar_scale, scale_from_amax
from quamba_edge.quant.observers import abs_quantile
from quamba_edge.quant.quamba import CalibrationPass, QResidualBlock
from quamba_edge.quant.recipes import Quamba2

# ------------------------------------------------------------------------------------- scale layouts

def proj_blocks(cfg: Mamba2Config, group_scales: bool) -> list[tuple[int, int]]:
    """Channel ranges of in_proj's output (z | x | B | C | dt) that share one scale."""
    d, gn, h = cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.nheads
    return [(0, d), *_xbc_blocks(cfg, group_scales, offset=d), (d + d + 2 * gn, d + d + 2 * gn + h)]


def _xbc_blocks(cfg: Mamba2Config, group_scales: bool, offset: int = 0) -> list[tuple[int, int]]:
    d, n, g, p = cfg.d_inner, cfg.d_state, cfg.ngroups, cfg.headdim
    x = [(i * p, (i + 1) * p) for i in range(cfg.nheads)] if group_scales else [(0, d)]
    b = [(d + i * n, d + (i + 1) * n) for i in range(g)] if group_scales else [(d, d + g * n)]
    c = [(a + g * n, e + g * n) for a, e in b]
    return [(a + offset, e + offset) for a, e in (*x, *b, *c)]


def xbc_blocks(cfg: Mamba2Config, group_scales: bool) -> list[tuple[int, int]]:
    """Channel ranges of the conv output (x | B | C) that share one scale."""
    return _xbc_blocks(cfg, group_scales)


class BlockObserver:
    """Static scales for channel blocks of one tensor (b, l, channels): abs-max per block, or for the blocks
    marked with a percentile the α-quantile of |x| per sample combined by an EMA (observers.PercentileObserver's
    rule). `scale()` returns one scale per channel, shape (channels,)."""

    def __init__(self, blocks: list[tuple[int, int]], percentile: list[float | None], momentum: float = 0.01):
        self.blocks, self.percentile, self.momentum = blocks, percentile, momentum
        self.amax: list[float | None] = [None] * len(blocks)

    def observe(self, x: Tensor) -> None:
        for i, ((a, e), p) in enumerate(zip(self.blocks, self.percentile)):
            part = x[..., a:e]
            if p is None:
                cur = float(part.abs().max())
                self.amax[i] = cur if self.amax[i] is None else max(self.amax[i], cur)
                continue
            for sample in part.reshape(part.shape[0], -1, e - a) if part.dim() > 2 else part[None]:
                cur = abs_quantile(sample, p)
                self.amax[i] = cur if self.amax[i] is None else self.amax[i] + self.momentum * (cur - self.amax[i])

    def scale(self) -> Tensor:
        if any(a is None for a in self.amax):
            raise RuntimeError("observer saw no data")
        out = torch.empty(self.blocks[-1][1])
        for (a, e), amax in zip(self.blocks, self.amax):
            out[a:e] = scale_from_amax(amax)
        return out


# ------------------------------------------------------------------------------------ quantized modules

class QMamba2Mixer(nn.Module):
    """The W8A8 Mamba-2 mixer: int8 in (the block's norm output), fp32 out (out_proj's output)."""

    def __init__(self, cfg: Mamba2Config, recipe: Quamba2):
        super().__init__()
        self.cfg, self.hadamard = cfg, recipe.hadamard
        d, e, h = cfg.d_inner, cfg.conv_dim, cfg.nheads
        g = recipe.weight_granularity
        self.in_proj = QLinear(cfg.d_model, d + e + h, granularity=g, bias=cfg.proj_bias, int8_output=False)
        self.register_buffer("proj_scale", torch.ones(d + e + h))  # per output channel, from the blocks
        self.register_buffer("conv_weight", torch.zeros(e, cfg.d_conv, dtype=torch.int8))
        self.register_buffer("conv_weight_scale", torch.ones(e, 1) if g == "channel" else scalar_scale())
        self.register_buffer("conv_bias", torch.zeros(e) if cfg.conv_bias else None)
        self.register_buffer("xbc_scale", torch.ones(e))
        for name in ("dt_bias", "A_log", "D"):
            self.register_buffer(name, torch.zeros(h))
        self.register_buffer("y_scale", scalar_scale())
        self.out_proj = QLinear(d, cfg.d_model, granularity=g, bias=cfg.proj_bias, int8_output=False)

    def forward(self, x_q: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x_q (b, l, d_model) int8; conv_state (b, e, k-1) int8; ssm_state (b, h, p, n) fp32."""
        cfg = self.cfg
        d, e, k = cfg.d_inner, cfg.conv_dim, cfg.d_conv
        q = quantize(self.in_proj(x_q), self.proj_scale)
        z_q, xbc_q, dt_q = q.split([d, e, cfg.nheads], dim=-1)
        padded = torch.cat([conv_state, xbc_q.transpose(1, 2)], dim=2)  # (b, e, k-1+l) int8
        new_conv_state = padded[:, :, padded.shape[2] - (k - 1):]
        acc = (padded.unfold(2, k, 1).to(torch.int32) * self.conv_weight.to(torch.int32)[:, None, :]).sum(-1)
        conv = acc.float() * (self.proj_scale[d:d + e, None] * self.conv_weight_scale)  # (b, e, l), exact sums
        if self.conv_bias is not None:
            conv = conv + self.conv_bias[:, None]
        xbc = quantize(F.silu(conv).transpose(1, 2), self.xbc_scale)  # (b, l, e) int8
        xbc = dequantize(xbc, self.xbc_scale)
        x, B, C = xbc.split([d, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state], dim=-1)
        dt = F.softplus(dequantize(dt_q, self.proj_scale[d + e:]) + self.dt_bias).clamp(cfg.dt_min, cfg.dt_max)
        groups = (cfg.ngroups, cfg.d_state)
        args = (x.unflatten(-1, (cfg.nheads, cfg.headdim)), dt, -torch.exp(self.A_log), B.unflatten(-1, groups),
                C.unflatten(-1, groups), self.D, ssm_state)
        y, new_ssm_state = ssd_recurrent(*args) if x.shape[1] == 1 else ssd_chunked(*args, chunk=cfg.chunk_size)
        gated = normalized_gate(y.flatten(-2), dequantize(z_q, self.proj_scale[:d]), cfg)
        y_q = quantize(rotate(gated, d) if self.hadamard else gated, self.y_scale)
        return self.out_proj(y_q), new_conv_state, new_ssm_state


def normalized_gate(y: Tensor, z: Tensor, cfg: Mamba2Config) -> Tensor:
    """RMSNorm_group(y · SiLU(z)) without the norm's weight (it is folded into out_proj), fp32 (b, l, d_inner)."""
    g = (y.float() * F.silu(z.float())).unflatten(-1, (cfg.ngroups, -1))
    return (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)).flatten(-2)


class QuantizedMamba2LM(StepLoop, nn.Module):
    """Same interface as `Mamba2LM` (`step`, `forward`, `empty_state`); the conv state is int8 here."""

    def __init__(self, cfg: Mamba2Config, recipe: Quamba2):
        super().__init__()
        self.cfg, self.recipe = cfg, recipe
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(QResidualBlock(cfg, recipe, QMamba2Mixer(cfg, recipe))
                                    for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        fp_head = cfg.tie_embeddings or not recipe.int8_head  # untied with --int8-head: only the int8 copy is kept
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False) if fp_head else None
        self.superseded_weights = () if fp_head else ("lm_head.weight",)  # older artifacts hold it; nothing reads it
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.head = (QLinear(cfg.d_model, cfg.vocab_size, granularity="channel", bias=False, int8_output=False)
                     if recipe.int8_head else None)  # --int8-head: a per-channel int8 copy of lm_head

    def empty_state(self, batch: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        cfg, device = self.cfg, self.embedding.weight.device
        return (torch.zeros(cfg.n_layer, batch, cfg.conv_dim, cfg.d_conv - 1, dtype=torch.int8, device=device),
                torch.zeros(cfg.n_layer, batch, cfg.nheads, cfg.headdim, cfg.d_state, device=device))

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.embedding(input_ids).float()

    def blocks(self):
        return self.layers

    def logits(self, h: Tensor) -> Tensor:
        """Final norm and the head (fp32, or int8 with --int8-head) on the residual stream (b, l, d_model) ->
        (b, l, vocab)."""
        normed = self.norm_f(h)
        if self.head is not None:
            return self.head(quantize(normed, self.head.in_scale))
        return self.lm_head(normed)


# ------------------------------------------------------------------------------------------ calibration

@torch.no_grad()
def observe_activations(model: Mamba2LM, batches: Iterable[Tensor], recipe: Quamba2,
                        on_batch: Callable[[int], None] | None = None) -> list[dict[str, Tensor]]:
    """Run the fp model over `batches` (token ids (b, l)); per layer the scales of `norm` (0-d), `proj`
    (in_proj's output channels), `xbc` (conv output channels) and `y` (0-d); with `recipe.int8_head` one more
    entry after the layers, {"head": the lm_head input's scale (0-d)}. Raises QuambaEdgeError for no
    batches, a NaN/Inf activation (naming the layer, point and batch), or a width with no Hadamard size."""
    cfg = model.cfg
    if recipe.hadamard:
        factor(cfg.d_inner)  # fail before the long pass if no rotation exists for this width
    n_x = cfg.nheads if recipe.group_scales else 1  # the x blocks come first in the conv output
    xbc = xbc_blocks(cfg, recipe.group_scales)
    pre = proj_blocks(cfg, recipe.group_scales)
    observers = [{"norm": BlockObserver([(0, cfg.d_model)], [None]),
                  "proj": BlockObserver(pre, [None] * len(pre)),
                  "xbc": BlockObserver(xbc, [recipe.percentile] * n_x + [None] * (len(xbc) - n_x)),
                  "y": BlockObserver([(0, cfg.d_inner)], [None])} for _ in model.backbone.layers]
    taps = {  # mixer module -> the points it sees, from its (inputs, output)
        "in_proj": lambda m, x, y: (("norm", x[0].float()), ("proj", y.float())),
        "conv1d": lambda m, x, y: (("xbc", F.silu(y.float()).transpose(1, 2)),),
        "norm": lambda m, x, y: (("y", _rotated(x[0], x[1], cfg, recipe)),),
    }
    calib = CalibrationPass(lambda layer, point, x: observers[layer][point].observe(x))
    for i, layer in enumerate(model.backbone.layers):
        for name, tap in taps.items():
            calib.tap(getattr(layer.mixer, name), i, tap)
    if recipe.int8_head:
        observers.append({"head": BlockObserver([(0, cfg.d_model)], [None])})
        calib.tap(model.backbone.norm_f, cfg.n_layer, lambda m, x, y: (("head", y.float()),))
    calib.run(model, batches, on_batch)
    return [{p: o.scale() if p in ("proj", "xbc") else o.scale()[0] for p, o in obs.items()} for obs in observers]


def _rotated(y: Tensor, z: Tensor, cfg: Mamba2Config, recipe: Quamba2) -> Tensor:
    g = normalized_gate(y, z, cfg)
    return rotate(g, cfg.d_inner) if recipe.hadamard else g


@torch.no_grad()
def build_quantized(model: Mamba2LM, scales: list[dict[str, Tensor]], recipe: Quamba2) -> QuantizedMamba2LM:
    """Quantize the weights and install the calibrated scales: the offline half of the recipe."""
    cfg, g = model.cfg, recipe.weight_granularity
    qm = QuantizedMamba2LM(cfg, recipe)
    qm.embedding.weight.copy_(model.backbone.embedding.weight.float())
    if not cfg.tie_embeddings and qm.lm_head is not None:
        qm.lm_head.weight.copy_(model.lm_head.weight.float())
    qm.norm_f.weight.copy_(model.backbone.norm_f.weight.float())
    if recipe.int8_head:
        qm.head.load_float(*quantize_weight(model.lm_head.weight.float(), "channel"), scales[-1]["head"], None)
    M = hadamard_matrix(cfg.d_inner) if recipe.hadamard else None
    for layer, qlayer, s in zip(model.backbone.layers, qm.layers, scales):
        fp, q = layer.mixer, qlayer.mixer
        qlayer.norm.norm.weight.copy_(layer.norm.weight.float())
        qlayer.norm.out_scale.copy_(s["norm"])
        q.in_proj.load_float(*quantize_weight(fp.in_proj.weight, g), s["norm"], None, fp.in_proj.bias)
        q.proj_scale.copy_(s["proj"])
        w, ws = quantize_weight(fp.conv1d.weight.reshape(cfg.conv_dim, cfg.d_conv), g)
        q.conv_weight.copy_(w)
        q.conv_weight_scale.copy_(ws)
        if q.conv_bias is not None:
            q.conv_bias.copy_(fp.conv1d.bias.float())
        q.xbc_scale.copy_(s["xbc"])
        for name in ("dt_bias", "A_log", "D"):
            getattr(q, name).copy_(getattr(fp, name).float())
        w_out = fp.out_proj.weight.float() * fp.norm.weight.float()  # W·diag(w_norm)
        if M is not None:
            w_out = w_out @ M.T  # (g·Mᵀ)(W·Mᵀ)ᵀ = g·Wᵀ
        q.out_proj.load_float(*quantize_weight(w_out, g), s["y"], None, fp.out_proj.bias)
        q.y_scale.copy_(s["y"])
    return qm.eval()


def calibrate(model: Mamba2LM, batches: Iterable[Tensor], recipe: Quamba2,
              on_batch: Callable[[int], None] | None = None,
              observe_on: Mamba2LM | None = None) -> tuple[QuantizedMamba2LM, list[dict[str, Tensor]]]:
    """The Mamba-2 handler: calibrate on `batches` (token ids (b, l)) and build the quantized model.
    `observe_on`: a copy of `model` on another device or in another dtype that runs the calibration passes
    (scales come back in fp32 on the CPU); the int8 weights come from `model`."""
    scales = observe_activations(model if observe_on is None else observe_on, batches, recipe, on_batch)
    scales = [{k: v.float().cpu() for k, v in layer.items()} for layer in scales]
    return build_quantized(model, scales, recipe), scales
