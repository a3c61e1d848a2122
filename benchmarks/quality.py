"""Quality of every recipe on the bundled model: bits/byte and next-token accuracy on held-out text.

    python benchmarks/quality.py --all-recipes --out benchmarks/results/quality.json
    python benchmarks/quality.py --models default out/naive out/quamba --max-samples 128

`--all-recipes` calibrates fp, naive, quamba, the two quamba ablations and quamba with an int8
lm_head (512 x 512 tokens of the training novels, file order) and evaluates each on the held-out
novel. Every row is measured in this run; the table also shows bits/byte relative to fp32.
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
from quamba_edge.families.registry import load
from quamba_edge.io import atomic_write_json
from quamba_edge.quant.recipes import make_recipe

ALL_RECIPES = [
    make_recipe("fp"),
    make_recipe("naive"),
    make_recipe("quamba"),
    make_recipe("quamba", hadamard=False),
    make_recipe("quamba", percentile_clip=False),
    make_recipe("quamba", int8_head=True),  # not in the paper: the lm_head int8 too (CPU decode speed)
]


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
        for recipe in ALL_RECIPES:
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
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "threads": args.threads},
            "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "rows": rows,
        })
        console.print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
