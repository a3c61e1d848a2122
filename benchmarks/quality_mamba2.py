"""Quality of every Mamba-2 W8A8 recipe (issue 19): bits/byte and next-byte accuracy on the held-out novel.

    python benchmarks/quality_mamba2.py --model quamba_edge/assets/default-mamba2 \
        --out benchmarks/results/quality_mamba2.json

Recipes, each calibrated in this run on the first `--samples` windows of `--seq-len` bytes of the training
novels (file order, DESIGN.md): fp; naive (per-tensor abs-max W8A8, no rotation); quamba2 (percentile clip of
the SSM input x, Hadamard rotation before out_proj, per-head x and per-group B/C scales); quamba2 with each of
the three removed; quamba2 with per-channel weights. Mamba-2 is not yet a CLI family, so this script drives
models/mamba2.py and quant/quamba2.py directly (the same calibration data and bits/byte as
benchmarks/quality.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from quamba_edge.bench.report import machine
from quamba_edge.checkpoints.mamba2 import load_mamba2
from quamba_edge.data.text import load_windows, read_text, take_windows
from quamba_edge.data.tokenizers import tokenizer_for
from quamba_edge.evaluate import evaluate_lm
from quamba_edge.io import atomic_write_json
from quamba_edge.quant.quamba2 import calibrate
from quamba_edge.quant.recipes import Fp, Quamba2

RECIPES = [Fp(), Quamba2(percentile=None, hadamard=False, group_scales=False), Quamba2(),
           Quamba2(percentile=None), Quamba2(hadamard=False), Quamba2(group_scales=False),
           Quamba2(weight_granularity="channel")]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a Mamba-2 checkpoint directory")
    ap.add_argument("--samples", type=int, default=512, help="calibration windows")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--max-samples", type=int, default=256, help="evaluation windows of the held-out novel")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    model = load_mamba2(args.model)
    tok = tokenizer_for(args.model, model.cfg.vocab_size)
    calib = load_windows("default", tok, args.samples, args.seq_len)
    ids = tok.encode(read_text("default-heldout"))
    held = take_windows(ids, min(args.max_samples, len(ids) // args.seq_len), args.seq_len, what="held-out novel")
    rows = []
    for recipe in RECIPES:
        start = time.perf_counter()
        qmodel = model if isinstance(recipe, Fp) else calibrate(model, calib.tokens.split(8), recipe)[0]
        calib_s = time.perf_counter() - start
        start = time.perf_counter()
        row = evaluate_lm(qmodel, held.tokens, tok.byte_lengths())
        row.update({"recipe": recipe.label, "calibrate_seconds": round(calib_s, 1),
                    "eval_seconds": round(time.perf_counter() - start, 1)})
        rows.append(row)
        console.print(f"  {recipe.label:<28} {row['bits_per_byte']:.4f} bits/byte ({row['eval_seconds']} s)")
    fp = rows[0]["bits_per_byte"]
    table = Table(title=f"Mamba-2 W8A8 on the held-out novel ({rows[0]['tokens']:,} predicted bytes)")
    for col in ("recipe", "bits/byte", "vs fp", "next-byte acc."):
        table.add_column(col, justify="left" if col == "recipe" else "right")
    for r in rows:
        r["bpb_rel_to_fp"] = r["bits_per_byte"] / fp - 1
        table.add_row(r["recipe"], f"{r['bits_per_byte']:.4f}", f"{100 * r['bpb_rel_to_fp']:+.2f}%",
                      f"{100 * r['token_accuracy']:.2f}%")
    console.print(table)
    if args.out:
        atomic_write_json(args.out, {
            "benchmark": "quality_mamba2", "model": str(args.model), "model_config": model.cfg.to_dict(),
            "calibration": {"data": "default", "samples": args.samples, "seq_len": args.seq_len,
                            "digest": calib.digest},
            "heldout": {"windows": len(held.tokens), "digest": held.digest}, "machine": machine("cpu"),
            "command": "python benchmarks/quality_mamba2.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "rows": rows})
        console.print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
