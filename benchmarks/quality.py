"""Quality of every recipe on a bundled model: bits/byte and next-token accuracy on held-out text.

    python benchmarks/quality.py --all-recipes --out benchmarks/results/quality.json
    python benchmarks/quality.py --base default-mamba2 --all-recipes --samples 128 --max-samples 128 \
        --workdir out/quality-mamba2 --out benchmarks/results/quality_mamba2.json
    python benchmarks/quality.py --models default out/naive out/quamba --max-samples 128

`--all-recipes` calibrates every recipe of --base's family (512 x 512 tokens of the training novels by default,
file order) and evaluates each on the held-out novel. Mamba: fp, naive, quamba, the two quamba ablations and
quamba with an int8 lm_head. Mamba-2: fp, naive, quamba2 (Quamba's percentile clip and Hadamard rotation with
Quamba2's per-head x and per-group B/C scales), each of the three removed, per-channel weights, an int8 lm_head.
Every row is measured in this run; the table also shows bits/byte relative to fp32.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from quamba_edge import __version__, pipeline
from quamba_edge.bench.report import machine
from quamba_edge.families.registry import load
from quamba_edge.io import atomic_write_json
from quamba_edge.quant.recipes import Fp, Quamba2, make_recipe

ALL_RECIPES = {  # by family
    "mamba": [
        make_recipe("fp"),
        make_recipe("naive"),
        make_recipe("quamba"),
        make_recipe("quamba", hadamard=False),
        make_recipe("quamba", percentile_clip=False),
        make_recipe("quamba", int8_head=True),  # not in the paper: the lm_head int8 too (CPU decode speed)
    ],
    "mamba2": [
        Fp(),
        Quamba2(percentile=None, hadamard=False, group_scales=False),  # naive
        Quamba2(),
        Quamba2(percentile=None),
        Quamba2(hadamard=False),
        Quamba2(group_scales=False),
        Quamba2(weight_granularity="channel"),
        Quamba2(int8_head=True),
    ],
}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| recipe | bits/byte | vs fp32 | perplexity | next-byte accuracy |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        rel = f"{100 * r['bpb_rel_to_fp']:+.2f}%" if "bpb_rel_to_fp" in r else "-"
        lines.append(f"| {r['recipe']} | {r['bits_per_byte']:.4f} | {rel} | {r['perplexity']:.3f} | "
                     f"{100 * r['token_accuracy']:.2f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=[], help="artifacts or checkpoints to evaluate as they are")
    ap.add_argument("--all-recipes", action="store_true", help="calibrate every recipe from --base first")
    ap.add_argument("--base", default="default", help="checkpoint to calibrate with --all-recipes")
    ap.add_argument("--calib-data", default="default")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--data", default="default-heldout", help="evaluation text")
    ap.add_argument("--max-samples", type=int, default=0, help="evaluation windows (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("out/quality"))
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()

    specs: list[str] = list(args.models)
    calib_seconds: dict[str, float] = {}
    if args.all_recipes:
        family = load(args.base).family.name
        if family not in ALL_RECIPES:
            ap.error(f"--all-recipes takes a Mamba or Mamba-2 base; {args.base} is a {family} model")
        for recipe in ALL_RECIPES[family]:
            target = args.workdir / recipe.label
            console.print(f"calibrating [bold]{recipe.label}[/] -> {target}")
            start = time.perf_counter()
            pipeline.calibrate(args.base, recipe, args.calib_data, args.samples, args.seq_len, target)
            calib_seconds[recipe.label] = round(time.perf_counter() - start, 1)
            specs.append(str(target))
    if not specs:
        ap.error("nothing to evaluate: pass --models or --all-recipes")

    rows = []
    for spec in specs:
        loaded = load(spec)
        start = time.perf_counter()
        result = pipeline.evaluate(loaded, args.data, args.seq_len, args.max_samples or None)
        result["eval_seconds"] = round(time.perf_counter() - start, 1)
        result["model"] = spec
        if loaded.manifest and loaded.manifest.get("calibration"):
            cal = loaded.manifest["calibration"]
            result["calibration"] = {k: cal[k] for k in ("data", "samples", "seq_len", "digest")}
        if loaded.label in calib_seconds:
            result["calibrate_seconds"] = calib_seconds[loaded.label]
        rows.append(result)
        console.print(f"  {loaded.label:<22} {result['bits_per_byte']:.4f} bits/byte "
                      f"({result['eval_seconds']} s)")

    fp = next((r for r in rows if r["recipe"] == "fp"), None)
    table = Table(title=f"quality on {args.data} ({rows[0]['tokens']:,} predicted tokens, seq_len {args.seq_len})")
    for col in ("recipe", "bits/byte", "vs fp32", "perplexity", "token acc."):
        table.add_column(col, justify="right" if col != "recipe" else "left")
    for r in rows:
        if fp:
            r["bpb_rel_to_fp"] = r["bits_per_byte"] / fp["bits_per_byte"] - 1
        rel = f"{100 * r['bpb_rel_to_fp']:+.2f}%" if fp else "-"
        table.add_row(r["recipe"], f"{r['bits_per_byte']:.4f}", rel, f"{r['perplexity']:.3f}",
                      f"{100 * r['token_accuracy']:.2f}%")
    console.print(table)
    if args.markdown:
        print(markdown_table(rows))
    if args.out:
        atomic_write_json(args.out, {
            "benchmark": "quality", "toolkit_version": __version__, "torch": torch.__version__,
            "base": args.base, "machine": {**machine("cpu"), "platform": platform.platform(), "threads": args.threads},
            "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "rows": rows,
        })
        console.print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
