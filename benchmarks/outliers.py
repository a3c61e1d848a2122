"""Why naive W8A8 fails on one model and holds on another: the activation outliers at the two points Quamba
treats, measured on the fp model.

    python benchmarks/outliers.py --models default default-mamba2 --json benchmarks/results/outliers.json

Points, per layer:
* `ssm_in`: the SSM input x (SiLU of the causal conv's output; Mamba-2's x channels only, not B and C), which
  Quamba clips at a percentile;
* `gated_scan`: the scan output gated, y * SiLU(z);
* `out_proj_in`: the tensor naive W8A8 quantizes for out_proj, which Quamba rotates with a Hadamard matrix.
  Mamba-1: `gated_scan` itself. Mamba-2: `gated_scan` RMS-normalized per group, without the norm's weight
  (quant/quamba2.py folds it into out_proj), so the two rows of a Mamba-2 model show what its norm removes.
For each: the ratio of the largest channel's abs-max to the median channel's (an outlier channel makes it
large), and the signal-to-quantization-noise ratio (SQNR, dB) of per-tensor abs-max int8 (naive's activation
quantizer: scale = max|x| / 127) over all calibration tokens; the summary gives the median over layers and the
worst layer. Quamba (Chiang et al., 2024, "Quamba: A Post-Training Quantization Recipe for Selective State
Space Models") names the SSM input and out_proj's input as where naive W8A8 loses its accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from quamba_edge.bench.report import machine
from quamba_edge.data.text import read_text, take_windows
from quamba_edge.data.tokenizers import ByteTokenizer
from quamba_edge.families.registry import load
from quamba_edge.io import atomic_write_json
from quamba_edge.quant.quamba2 import normalized_gate


def per_tensor_sqnr_db(x: torch.Tensor) -> float:
    """SQNR (dB) of symmetric per-tensor int8 with scale max|x| / 127: 10 log10(sum x^2 / sum (x - q(x))^2)."""
    scale = x.abs().max().clamp_min(1e-12) / 127
    q = (x / scale).round().clamp(-127, 127) * scale
    noise = (x - q).pow(2).sum().clamp_min(1e-30)
    return float(10 * torch.log10(x.pow(2).sum() / noise))


def channel_spread(x: torch.Tensor) -> float:
    """x (tokens, channels): the largest channel abs-max over the median channel abs-max."""
    amax = x.abs().amax(0)
    return float(amax.max() / amax.median().clamp_min(1e-12))


@torch.no_grad()
def measure(model: torch.nn.Module, batch: torch.Tensor) -> list[dict]:
    """Run `batch` (b, l) token ids through the fp model (Mamba-1 or Mamba-2: a mixer with conv1d and out_proj,
    Mamba-2's also with its gated `norm`); per layer and point its channel count, spread and SQNR."""
    layers = model.backbone.layers
    seen: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):
        mixer = layer.mixer
        d_inner = mixer.out_proj.in_features

        def conv_hook(m, inputs, out, i=i, d=d_inner):  # (b, channels, l) -> x channels (tokens, d_inner)
            seen[(i, "ssm_in")] = F.silu(out.float())[:, :d].transpose(1, 2).reshape(-1, d)

        def out_proj_hook(m, inputs, out, i=i):  # Mamba-1: y * SiLU(z), which naive quantizes as it is
            seen[(i, "gated_scan")] = seen[(i, "out_proj_in")] = inputs[0].float().reshape(-1, inputs[0].shape[-1])

        def norm_hook(m, inputs, out, i=i, cfg=mixer.cfg):  # Mamba-2: GatedRMSNorm(y, z); naive's tensor has no weight
            y, z = inputs
            seen[(i, "gated_scan")] = (y.float() * F.silu(z.float())).reshape(-1, y.shape[-1])
            seen[(i, "out_proj_in")] = normalized_gate(y, z, cfg).reshape(-1, y.shape[-1])

        handles.append(mixer.conv1d.register_forward_hook(conv_hook))
        gate = getattr(mixer, "norm", None)
        handles.append(gate.register_forward_hook(norm_hook) if gate is not None
                       else mixer.out_proj.register_forward_hook(out_proj_hook))
    try:
        model(batch)
    finally:
        for h in handles:
            h.remove()
    return [{"layer": i, "point": p, "channels": x.shape[1], "channel_spread": channel_spread(x),
             "per_tensor_sqnr_db": per_tensor_sqnr_db(x)} for (i, p), x in sorted(seen.items())]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default", "default-mamba2"])
    ap.add_argument("--samples", type=int, default=16, help="windows of the calibration text")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = take_windows(ByteTokenizer().encode(read_text("default")), args.samples, args.seq_len).tokens
    rows = []
    for spec in args.models:
        loaded = load(spec)
        for r in measure(loaded.model.float().eval(), batch):
            rows.append({"model": spec, "family": loaded.family.name, **r})
    table = Table(title=f"Activation outliers ({args.samples} x {args.seq_len} calibration bytes)")
    for col in ("model", "point", "spread, median layer", "spread, worst", "SQNR dB, median layer", "SQNR dB, worst"):
        table.add_column(col, justify="left" if col in ("model", "point") else "right")
    summary = []
    for spec in args.models:
        for point in ("ssm_in", "gated_scan", "out_proj_in"):
            sel = [r for r in rows if r["model"] == spec and r["point"] == point]
            spread = [r["channel_spread"] for r in sel]
            sqnr = [r["per_tensor_sqnr_db"] for r in sel]
            s = {"model": spec, "point": point, "spread_median": statistics.median(spread), "spread_max": max(spread),
                 "sqnr_median_db": statistics.median(sqnr), "sqnr_min_db": min(sqnr)}
            summary.append(s)
            table.add_row(spec, point, f"{s['spread_median']:.1f}x", f"{s['spread_max']:.1f}x",
                          f"{s['sqnr_median_db']:.1f}", f"{s['sqnr_min_db']:.1f}")
    Console().print(table)
    if args.json:
        command = "python benchmarks/outliers.py " + " ".join(sys.argv[1:] if argv is None else argv)
        atomic_write_json(args.json, {"command": command, "machine": machine("cpu"),
                                      "samples": args.samples, "seq_len": args.seq_len, "summary": summary,
                                      "rows": rows})
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
