"""Calibrate an fp Mamba on sample sequences and turn it into a `QuantizedMambaLM`.

The fp model is not modified and knows nothing of this: every activation Quamba quantizes is the
input or output of one of the mixer's Linear layers, so forward hooks on those see all of them:

    norm  = in_proj input        xz  = in_proj output          u = x_proj input (percentile)
    dbc   = x_proj output        delta = dt_proj output - bias  y = out_proj input (rotated: y·Mᵀ)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.models.mamba import MambaLM
from quamba_edge.quant.hadamard import factor, hadamard_matrix, rotate
from quamba_edge.quant.int8 import quantize, quantize_weight, scale_from_amax
from quamba_edge.quant.observers import AbsMaxObserver, PercentileObserver
from quamba_edge.quant.qmodels import ACTIVATION_POINTS, QuantizedMambaLM
from quamba_edge.quant.recipes import Fp, Quamba


@dataclass
class CalibrationResult:
    scales: list[dict[str, float]]  # per layer: activation point -> scale
    head_scale: float | None = None  # input of the int8 lm_head (recipe.int8_head only)


def _check_finite(x: Tensor, layer: int, point: str, batch: int) -> None:
    if not torch.isfinite(x).all():
        bad = "NaN" if torch.isnan(x).any() else "Inf"
        raise QuambaEdgeError(
            f"{bad} in layer {layer}, tensor '{point}', during calibration batch {batch}. The fp model "
            "itself produces it: check the checkpoint (try `quamba-edge eval` with --recipe fp) or the data."
        )


def observe_activations(
    model: MambaLM, batches: Iterable[Tensor], recipe: Quamba,
    on_batch: Callable[[int], None] | None = None,
) -> CalibrationResult:
    """Run the fp model over `batches` (each (b, l) token ids) and return one scale per quant point."""
    layers = list(model.backbone.layers)
    d_inner = model.cfg.d_inner
    if recipe.hadamard:
        factor(d_inner)  # fail before the long pass if no rotation exists for this width
    observers = []
    for _ in layers:
        obs = {p: AbsMaxObserver() for p in ACTIVATION_POINTS}
        if recipe.percentile is not None:
            obs["u"] = PercentileObserver(recipe.percentile)
        observers.append(obs)
    state = {"batch": 0}
    handles = []

    def record(layer: int, point: str, x: Tensor) -> None:
        _check_finite(x, layer, point, state["batch"])
        obs = observers[layer][point]
        if isinstance(obs, PercentileObserver):
            for sample in x:  # per sample, as the paper does
                obs.observe(sample)
        else:
            obs.observe(x)

    for i, layer in enumerate(layers):
        mixer = layer.mixer

        def hook_in_proj(_m, inp, out, i=i):
            record(i, "norm", inp[0])
            record(i, "xz", out)

        def hook_x_proj(_m, inp, out, i=i):
            record(i, "u", inp[0])
            record(i, "dbc", out)

        def hook_dt_proj(m, _inp, out, i=i):
            record(i, "delta", out - m.bias)

        def hook_out_proj(_m, inp, _out, i=i):
            y = inp[0]
            record(i, "y", rotate(y, d_inner) if recipe.hadamard else y)

        handles += [
            mixer.in_proj.register_forward_hook(hook_in_proj),
            mixer.x_proj.register_forward_hook(hook_x_proj),
            mixer.dt_proj.register_forward_hook(hook_dt_proj),
            mixer.out_proj.register_forward_hook(hook_out_proj),
        ]
    head_observer = AbsMaxObserver() if recipe.int8_head else None
    if head_observer is not None:
        def hook_norm_f(_m, _inp, out):
            _check_finite(out, len(layers), "head", state["batch"])
            head_observer.observe(out)

        handles.append(model.backbone.norm_f.register_forward_hook(hook_norm_f))
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
                state["batch"] += 1
                if on_batch:
                    on_batch(batch.shape[0])
    finally:
        for h in handles:
            h.remove()
    if state["batch"] == 0:
        raise QuambaEdgeError("calibration got no data: pass at least one sample (--samples 1 or more).")
    return CalibrationResult([{p: float(o.scale()) for p, o in obs.items()} for obs in observers],
                             float(head_observer.scale()) if head_observer is not None else None)


@torch.no_grad()
def build_quantized(model: MambaLM, calib: CalibrationResult, recipe: Quamba) -> QuantizedMambaLM:
    """Quantize weights and install the calibrated scales: the offline half of every recipe."""
    cfg, g = model.cfg, recipe.weight_granularity
    qm = QuantizedMambaLM(cfg, recipe)
    qm.embedding.weight.copy_(model.backbone.embedding.weight.float())
    qm.norm_f.weight.copy_(model.backbone.norm_f.weight.float())
    if recipe.int8_head:
        w_q, w_s = quantize_weight(model.backbone.embedding.weight, "channel")
        qm.head.load_float(w_q, w_s, torch.tensor(calib.head_scale), None)
    M = hadamard_matrix(cfg.d_inner) if recipe.hadamard else None
    for layer, qlayer, s in zip(model.backbone.layers, qm.layers, calib.scales):
        fp, q = layer.mixer, qlayer.mixer
        sc = {k: torch.tensor(v) for k, v in s.items()}
        qlayer.norm.norm.weight.copy_(layer.norm.weight.float())
        qlayer.norm.out_scale.copy_(sc["norm"])

        def lin(qlin, weight, in_s, out_s, bias=None):
            w_q, w_s = quantize_weight(weight, g)
            qlin.load_float(w_q, w_s, in_s, out_s, None if bias is None else bias.float())

        lin(q.in_proj, fp.in_proj.weight, sc["norm"], sc["xz"], fp.in_proj.bias)
        w_q, w_s = quantize_weight(fp.conv1d.weight.reshape(cfg.d_inner, cfg.d_conv), g)
        q.conv1d.weight.copy_(w_q)
        q.conv1d.weight_scale.copy_(w_s)
        bias = fp.conv1d.bias if fp.conv1d.bias is not None else torch.zeros(cfg.d_inner)
        b_s = scale_from_amax(bias.abs().max())
        q.conv1d.bias.copy_(quantize(bias, b_s))
        q.conv1d.bias_scale.copy_(b_s)
        q.conv1d.in_scale.copy_(sc["xz"])
        q.conv1d.out_scale.copy_(sc["u"])
        lin(q.x_proj, fp.x_proj.weight, sc["u"], sc["dbc"])
        lin(q.dt_proj, fp.dt_proj.weight, sc["dbc"], sc["delta"])  # bias moves into the scan
        for name, tensor in (("A_log", fp.A_log), ("D", fp.D), ("delta_bias", fp.dt_proj.bias)):
            t_s = scale_from_amax(tensor.detach().abs().max())
            getattr(q.scan, name).copy_(quantize(tensor.detach(), t_s))
            getattr(q.scan, f"{name}_scale").copy_(t_s)
        q.scan.u_scale.copy_(sc["u"])
        q.scan.delta_scale.copy_(sc["delta"])
        q.scan.dbc_scale.copy_(sc["dbc"])
        q.scan.z_scale.copy_(sc["xz"])
        q.rotate.out_scale.copy_(sc["y"])
        w_out = fp.out_proj.weight.float()
        if M is not None:
            w_out = w_out @ M.T  # W·Mᵀ, so that (y·Mᵀ)(W·Mᵀ)ᵀ = y·Wᵀ
        lin(q.out_proj, w_out, sc["y"], None, fp.out_proj.bias)
    return qm.eval()


def calibrate(
    model: MambaLM, batches: Iterable[Tensor], recipe: Quamba | Fp,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[QuantizedMambaLM | MambaLM, CalibrationResult | None]:
    """The Quamba handler: calibrate on `batches` (token ids (b, l)) and build the quantized model (an `Fp`
    config returns the model itself, uncalibrated)."""
    if not recipe.quantize:
        return model, None
    calib = observe_activations(model, batches, recipe, on_batch)
    return build_quantized(model, calib, recipe), calib
