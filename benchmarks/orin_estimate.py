"""Roofline estimates (not measurements) of Mamba-1 generation on the Orin profiles, fp16 vs Quamba int8,
for the public Mamba sizes, next to the one figure the Quamba paper reports for a Jetson.

    python benchmarks/orin_estimate.py --out benchmarks/results/orin_estimate.json

Quamba (Chiang et al., 2024) reports 1.72x lower generation latency for W8A8 Mamba-2.8B than fp16 on an
Orin Nano 8G. At batch 1 decode reads every weight once per token, so the roofline's fp16/int8 ratio
is the ratio of bytes per token; it is the ceiling the measured speed-up can approach, not reach.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quamba_edge.bench.devices import PROFILES
from quamba_edge.bench.roofline import QUAMBA_FIGURE_1, estimate
from quamba_edge.io import atomic_write_json
from quamba_edge.models.mamba import PUBLIC_SHAPES, public_shape

PAPER_RATIO = QUAMBA_FIGURE_1["speedup"]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = []
    for device, profile in PROFILES.items():
        for name in PUBLIC_SHAPES:
            cfg = public_shape(name)
            fp16, int8 = (estimate(cfg, p, profile, prompt_len=args.prompt_len, gen_len=args.gen_len)
                          for p in ("fp16", "int8"))
            rows.append({"device": device, "model": name, "fp16_tpot_ms": fp16.tpot_ms, "int8_tpot_ms": int8.tpot_ms,
                         "fp16_total_s": fp16.total_s, "int8_total_s": int8.total_s,
                         "decode_speedup": fp16.tpot_ms / int8.tpot_ms,
                         "fp16_weights_fit": fp16.weight_bytes < profile.memory_gb * 1e9,
                         "kind": "roofline estimate (not a measurement)"})
    table = Table(title=f"ROOFLINE ESTIMATE, not measured: prompt {args.prompt_len}, generate {args.gen_len}, batch 1")
    for col in ("device", "model", "fp16 TPOT ms", "int8 TPOT ms", "fp16 total s", "int8 total s", "int8 speed-up"):
        table.add_column(col, justify="left" if col in ("device", "model") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["device"], r["model"], f"{r['fp16_tpot_ms']:.1f}", f"{r['int8_tpot_ms']:.1f}",
                      f"{r['fp16_total_s']:.2f}", f"{r['int8_total_s']:.2f}", f"{r['decode_speedup']:.2f}x")
    console = Console(width=140)
    console.print(table)
    nano = next(r for r in rows if r["device"] == "orin-nano-8gb" and r["model"] == "mamba-2.8b")
    console.print(f"Mamba-2.8B on orin-nano-8gb: roofline int8 speed-up {nano['decode_speedup']:.2f}x; the paper "
                  f"measured {PAPER_RATIO}x ({PAPER_RATIO / nano['decode_speedup']:.0%} of the roofline ratio).")
    if args.out:
        atomic_write_json(args.out, {"command": "python " + " ".join(sys.argv), "rows": rows,
                                     "paper_ratio_mamba_2.8b_orin_nano_8g": PAPER_RATIO,
                                     "date": time.strftime("%Y-%m-%d")})
    return rows


if __name__ == "__main__":
    main()
