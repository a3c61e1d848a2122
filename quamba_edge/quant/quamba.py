"""Quamba (Chiang et al., 2024) for Mamba-1: the quantized modules (W8A8, static per-tensor activation
scales) and the handler that calibrates an fp model and builds them.

Each module reads int8 and writes int8 (or fp32 where the contract keeps float), and does integer
arithmetic where a kernel would: int8 x int8 -> int32 for in_proj / x_proj / dt_proj / out_proj and
the depthwise conv. The scan runs in fp32 on dequantized inputs (DESIGN.md, "Scan math").

Data flow of one block (q: int8, s: its per-tensor scale):

    h (fp32 residual) -> RMSNorm -> q_in -> in_proj -> q_xz (x and z share s_xz)
    q_x -> causal conv1d -> SiLU -> q_u (percentile scale in `quamba`)
    q_u -> x_proj -> q_dbc (dt, B, C share s_dbc);  q_dt -> dt_proj (no bias) -> q_delta
    scan(q_u, q_delta, q_B, q_C, q_z; int8 A_log, D, delta_bias) -> y (fp32, gated by SiLU(z))
    y -> y·Mᵀ (Hadamard, `quamba`) -> q_y -> out_proj (weight W·Mᵀ) -> fp32 -> h + out

Calibration leaves the fp model unmodified: every activation Quamba quantizes is the input or output of
one of the mixer's Linear layers, so forward hooks on those see all of them (`taps` in observe_activations).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.models.mamba import MambaConfig, MambaLM, RMSNorm, StepLoop
from quamba_edge.models.scan import selective_scan
from quamba_edge.quant.hadamard import factor, hadamard_matrix, rotate
from quamba_edge.quant.int8 import QLinear, dequantize, quantize, quantize_weight, scalar_scale, weight_scale_buffer
from quamba_edge.quant.observers import AbsMaxObserver, PercentileObserver
from quamba_edge.quant.recipes import Fp, Quamba

# Per-layer activation scales, in data-flow order; the calibration observers use the same names.
ACTIVATION_POINTS = ("norm", "xz", "u", "dbc", "delta", "y")


class QRMSNorm(nn.Module):
    """RMSNorm in fp32 on the residual stream, output quantized for the next int8 matmul."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(d, eps)
        self.register_buffer("out_scale", scalar_scale())

    def forward(self, h: Tensor) -> Tensor:
        return quantize(self.norm(h.float()), self.out_scale)


class QConv1dSiLU(nn.Module):
    """Causal depthwise conv over int8 x (with the k-1 previous inputs prepended), SiLU, int8 u."""

    def __init__(self, d: int, k: int, *, granularity: str):
        super().__init__()
        self.k = k
        self.register_buffer("weight", torch.zeros(d, k, dtype=torch.int8))
        self.register_buffer("weight_scale", weight_scale_buffer(d, granularity))
        self.register_buffer("bias", torch.zeros(d, dtype=torch.int8))
        for name in ("bias_scale", "in_scale", "out_scale"):
            self.register_buffer(name, scalar_scale())

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
            self.register_buffer(f"{name}_scale", scalar_scale())
        for name in ("u_scale", "delta_scale", "dbc_scale", "z_scale"):
            self.register_buffer(name, scalar_scale())

    def forward(self, u_q: Tensor, delta_q: Tensor, B_q: Tensor, C_q: Tensor, z_q: Tensor,
                ssm_state: Tensor) -> tuple[Tensor, Tensor]:
        delta = F.softplus(dequantize(delta_q, self.delta_scale) + dequantize(self.delta_bias, self.delta_bias_scale))
        A = -torch.exp(dequantize(self.A_log, self.A_log_scale))
        y, state = selective_scan(dequantize(u_q, self.u_scale), delta, A, dequantize(B_q, self.dbc_scale),
                                  dequantize(C_q, self.dbc_scale), dequantize(self.D, self.D_scale), ssm_state)
        return y * F.silu(dequantize(z_q, self.z_scale)), state


class QHadamardQuant(nn.Module):
    """y -> y·Mᵀ (when rotating) -> int8: the online half of Quamba's output rotation."""

    def __init__(self, d: int, rotate_output: bool):
        super().__init__()
        self.d, self.rotate_output = d, rotate_output
        self.register_buffer("out_scale", scalar_scale())

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
        x_q, z_q = self.in_proj(x_q).chunk(2, dim=-1)
        x_padded = torch.cat([conv_state, x_q.transpose(1, 2)], dim=2)
        new_conv_state = x_padded[:, :, x_padded.shape[2] - (cfg.d_conv - 1) :]
        u_q = self.conv1d(x_padded)
        dt_q, B_q, C_q = self.x_proj(u_q).split([cfg.rank, cfg.d_state, cfg.d_state], dim=-1)
        y, new_ssm_state = self.scan(u_q, self.dt_proj(dt_q), B_q, C_q, z_q, ssm_state)
        return self.out_proj(self.rotate(y)), new_conv_state, new_ssm_state


class QResidualBlock(nn.Module):
    """h + mixer(int8 RMSNorm(h)): Quamba's Mamba-1 mixer unless given another (quamba2.py's)."""

    def __init__(self, cfg: MambaConfig, recipe: Quamba, mixer: nn.Module | None = None):
        super().__init__()
        self.norm = QRMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = mixer if mixer is not None else QMambaMixer(cfg, recipe)

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
        cfg, device = self.cfg, self.embedding.weight.device
        return (torch.zeros(cfg.n_layer, batch, cfg.d_inner, cfg.d_conv - 1, dtype=torch.int8, device=device),
                torch.zeros(cfg.n_layer, batch, cfg.d_inner, cfg.d_state, dtype=torch.float32, device=device))

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


@dataclass
class CalibrationResult:
    scales: list[dict[str, float]]  # per layer: activation point -> scale
    head_scale: float | None = None  # input of the int8 lm_head (recipe.int8_head only)


class CalibrationPass:
    """Forward hooks on an fp model's modules that hand activations to `record(layer, point, x)`, each checked for
    NaN/Inf first (the error names the layer, the point and the batch); `run` drives the model over the batches
    and removes the hooks. Shared by the Mamba-1 and Mamba-2 handlers."""

    def __init__(self, record: Callable[[int, str, Tensor], None]):
        self.record, self.seen, self.handles = record, 0, []

    def tap(self, module: nn.Module, layer: int,
            points: Callable[[nn.Module, tuple, Tensor], Iterable[tuple[str, Tensor]]]) -> None:
        """After each forward of `module`, record the (point, tensor) pairs `points(module, inputs, output)` gives."""
        def hook(m: nn.Module, inputs: tuple, output: Tensor) -> None:  # returns None: the output is not rewritten
            for point, x in points(m, inputs, output):
                if not torch.isfinite(x).all():
                    bad = "NaN" if torch.isnan(x).any() else "Inf"
                    raise QuambaEdgeError(
                        f"{bad} in layer {layer}, tensor '{point}', during calibration batch {self.seen}. The fp "
                        "model itself produces it: check the checkpoint (try `quamba-edge eval` with --recipe fp) "
                        "or the data.")
                self.record(layer, point, x)

        self.handles.append(module.register_forward_hook(hook))

    def run(self, model: nn.Module, batches: Iterable[Tensor], on_batch: Callable[[int], None] | None) -> None:
        """`model(batch)` for every batch, then the hooks are removed. Raises QuambaEdgeError for no batches."""
        try:
            for batch in batches:
                model(batch)
                self.seen += 1
                if on_batch:
                    on_batch(batch.shape[0])
        finally:
            for h in self.handles:
                h.remove()
        if self.seen == 0:
            raise QuambaEdgeError("calibration got no data: pass at least one sample (--samples 1 or more).")


@torch.no_grad()
def observe_activations(model: MambaLM, batches: Iterable[Tensor], recipe: Quamba,
                        on_batch: Callable[[int], None] | None = None) -> CalibrationResult:
    """Run the fp model over `batches` (each (b, l) token ids) and return one scale per quant point.
    Raises QuambaEdgeError for no batches, or a NaN/Inf activation (naming the layer, point and batch)."""
    layers, d_inner = list(model.backbone.layers), model.cfg.d_inner
    if recipe.hadamard:
        factor(d_inner)  # fail before the long pass if no rotation exists for this width
    observers: list[dict] = [{p: PercentileObserver(recipe.percentile) if p == "u" and recipe.percentile is not None
                              else AbsMaxObserver() for p in ACTIVATION_POINTS} for _ in layers]
    def record(layer: int, point: str, x: Tensor) -> None:
        obs = observers[layer][point]
        for sample in x if isinstance(obs, PercentileObserver) else [x]:  # the percentile per sample, as the paper
            obs.observe(sample)

    taps = {  # mixer layer -> the points it sees, from its (inputs, output); scales in fp32 whatever the dtype
        "in_proj": lambda m, x, y: (("norm", x[0].float()), ("xz", y.float())),
        "x_proj": lambda m, x, y: (("u", x[0].float()), ("dbc", y.float())),
        "dt_proj": lambda m, x, y: (("delta", (y - m.bias).float()),),
        "out_proj": lambda m, x, y: (("y", rotate(x[0].float(), d_inner) if recipe.hadamard else x[0].float()),),
    }
    calib = CalibrationPass(record)
    for i, layer in enumerate(layers):
        for name, tap in taps.items():
            calib.tap(getattr(layer.mixer, name), i, tap)
    if recipe.int8_head:
        observers.append({"head": AbsMaxObserver()})
        calib.tap(model.backbone.norm_f, len(layers), lambda m, x, y: (("head", y.float()),))
    calib.run(model, batches, on_batch)
    scales = [{p: float(o.scale()) for p, o in obs.items()} for obs in observers]
    return CalibrationResult(scales[: len(layers)], scales[-1]["head"] if recipe.int8_head else None)


def _load_int8(module: nn.Module, name: str, tensor: Tensor, granularity: str = "tensor") -> None:
    """Buffers `name` and `{name}_scale` <- `tensor` in int8 and its scale."""
    q, scale = quantize_weight(tensor, granularity)
    getattr(module, name).copy_(q)
    getattr(module, f"{name}_scale").copy_(scale)


@torch.no_grad()
def build_quantized(model: MambaLM, calib: CalibrationResult, recipe: Quamba) -> QuantizedMambaLM:
    """Quantize weights and install the calibrated scales: the offline half of every recipe."""
    cfg, g = model.cfg, recipe.weight_granularity
    qm = QuantizedMambaLM(cfg, recipe)
    qm.embedding.weight.copy_(model.backbone.embedding.weight.float())
    qm.norm_f.weight.copy_(model.backbone.norm_f.weight.float())
    if recipe.int8_head:
        qm.head.load_float(*quantize_weight(model.backbone.embedding.weight, "channel"),
                           torch.tensor(calib.head_scale), None)
    M = hadamard_matrix(cfg.d_inner) if recipe.hadamard else None
    for layer, qlayer, s in zip(model.backbone.layers, qm.layers, calib.scales):
        fp, q = layer.mixer, qlayer.mixer
        sc = {k: torch.tensor(v) for k, v in s.items()}
        qlayer.norm.norm.weight.copy_(layer.norm.weight.float())
        w_out = fp.out_proj.weight.float() if M is None else fp.out_proj.weight.float() @ M.T  # (y·Mᵀ)(W·Mᵀ)ᵀ = y·Wᵀ
        # (int8 layer, fp weight, fp bias, input scale, output scale); dt_proj's bias moves into the scan
        for qlin, weight, bias, s_in, s_out in ((q.in_proj, fp.in_proj.weight, fp.in_proj.bias, "norm", "xz"),
                                                (q.x_proj, fp.x_proj.weight, None, "u", "dbc"),
                                                (q.dt_proj, fp.dt_proj.weight, None, "dbc", "delta"),
                                                (q.out_proj, w_out, fp.out_proj.bias, "y", None)):
            qlin.load_float(*quantize_weight(weight, g), sc[s_in], sc.get(s_out), bias)  # bias: copied into fp32
        _load_int8(q.conv1d, "weight", fp.conv1d.weight.reshape(cfg.d_inner, cfg.d_conv), g)
        _load_int8(q.conv1d, "bias", fp.conv1d.bias if fp.conv1d.bias is not None else torch.zeros(cfg.d_inner))
        for name, tensor in (("A_log", fp.A_log), ("D", fp.D), ("delta_bias", fp.dt_proj.bias)):
            _load_int8(q.scan, name, tensor)
        for module, buffer, point in ((qlayer.norm, "out_scale", "norm"), (q.conv1d, "in_scale", "xz"),
                                      (q.conv1d, "out_scale", "u"), (q.scan, "u_scale", "u"),
                                      (q.scan, "delta_scale", "delta"), (q.scan, "dbc_scale", "dbc"),
                                      (q.scan, "z_scale", "xz"), (q.rotate, "out_scale", "y")):
            getattr(module, buffer).copy_(sc[point])
    return qm.eval()


def calibrate(
    model: MambaLM, batches: Iterable[Tensor], recipe: Quamba | Fp,
    on_batch: Callable[[int], None] | None = None, observe_on: MambaLM | None = None,
) -> tuple[QuantizedMambaLM | MambaLM, CalibrationResult | None]:
    """The Quamba handler: calibrate on `batches` (token ids (b, l)) and build the quantized model (an `Fp`
    config returns the model itself, uncalibrated). `observe_on`: a copy of `model` on another device or in
    another dtype that runs the calibration passes (calibrate --device/--dtype); weights come from `model`."""
    if not recipe.quantize:
        return model, None
    calib = observe_activations(model if observe_on is None else observe_on, batches, recipe, on_batch)
    return build_quantized(model, calib, recipe), calib
