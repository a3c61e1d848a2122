"""The public Mamba sizes through the user's commands: calibrate, build-engine (int8 ONNX Runtime; the native CPU
decoder with the paper's fp16 head; fp16 up to --fp16-max) and bench,
each stage a separate `quamba-edge` process whose peak resident memory is read from the kernel
(wait4's rusage), with the artifact or engine size beside it.

Weights are random at the public shapes (state-spaces/mamba-130m ... -2.8b: speed and memory do not depend
on their values), saved as a mamba-ssm layout checkpoint (fp32 safetensors) with a byte-level BPE tokenizer
(8192 tokens) trained on the default corpus. Calibration uses few samples (--samples, --seq-len: say so
when quoting). Every row is written to the JSON as soon as it is measured, so a stopped run keeps them.

    python benchmarks/scale.py --shapes mamba-130m mamba-370m --out benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from quamba_edge.bench.report import machine
from quamba_edge.checkpoints.mamba import save_checkpoint
from quamba_edge.data.text import read_text
from quamba_edge.io import atomic_write_json, sha256_file
from quamba_edge.models.mamba import PUBLIC_SHAPES, MambaLM, init_weights, public_shape

CLI = str(Path(sys.executable).parent / "quamba-edge")


def train_tokenizer(path: Path, vocab: int = 8192) -> Path:
    """A GPT-NeoX-style byte-level BPE trained on the default (training) corpus: ids < 8192 fit every shape."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not path.exists():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([read_text("default")], trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(path))
    return path


def checkpoint(shape: str, root: Path, tokenizer: Path) -> Path:
    out = root / shape / "ckpt"
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        model = MambaLM(public_shape(shape))
        init_weights(model, seed=0)
        save_checkpoint(model, out)
        del model
    shutil.copy(tokenizer, out / "tokenizer.json")
    return out


# Forks the command from a fresh, small interpreter and prints its peak RSS (KiB) on the last line of stderr. Linux
# records the pre-exec memory of a forked child in its ru_maxrss, so a child forked straight from this script
# (which holds a whole checkpoint when it made one) would report at least this script's RSS.
PEAK_RSS = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def llama_rows(shape: str, ckpt: Path, root: Path, args) -> list[dict]:
    """llama.cpp q8_0 on the same weights (converted by llama.cpp's own converter, which uses its built-in
    GPT-NeoX vocabulary when the checkpoint has no tokenizer.json), timed by benchmarks/peers.py --gguf in a
    process of its own: one thread, then every core."""
    from peers import convert

    bare = root / "ckpt-llama"
    bare.mkdir(exist_ok=True)
    config = json.loads((ckpt / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({**config, "architectures": ["MambaLMHeadModel"]}))
    for f in ckpt.glob("*.safetensors"):
        (bare / f.name).unlink(missing_ok=True)
        (bare / f.name).symlink_to(f.resolve())
    start = time.perf_counter()
    gguf = convert(args.llama_src, bare, "q8_0", root / "model-q8_0.gguf")
    rows = [{"shape": shape, "stage": "convert llama.cpp q8_0", "seconds": round(time.perf_counter() - start, 1),
             "ok": True, "size_mb": round(gguf.stat().st_size / 2**20)}]
    for threads in sorted({1, os.cpu_count() or 1}):
        out = root / f"llama-{threads}.json"
        cmd = [Path(__file__).parent / "peers.py", "--gguf", gguf, "--shape", shape,
               "--threads", threads, "--prompt-len", args.prompt_len, "--gen-len", args.gen_len, "--repeats", 1,
               "--out", out]
        row = run(f"bench llama.cpp q8_0, {threads} thread{'s' if threads > 1 else ''}", shape, cmd, None, cli=False)
        if row["ok"]:
            result = json.loads(out.read_text())
            row.update({k: result.get(k) for k in ("decode_tok_s", "prompt_tok_s", "rss_mb")})
            row["weights_mb"] = row["size_mb"] = round(result["gguf_mb"])
        rows.append(row)
    return rows


def run(stage: str, shape: str, args: list, size_of: Path | None, cli: bool = True) -> dict:
    """One CLI process (`quamba-edge ARGS`, or ARGS as a command with cli=False): wall seconds, its own peak RSS
    (wait4, measured from a small parent), exit status, the output's size on disk."""
    start = time.perf_counter()
    command = [CLI, *map(str, args)] if cli else list(map(str, args))
    if not cli and command[0].endswith(".py"):
        command.insert(0, sys.executable)
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], capture_output=True, text=True)
    *err, peak_kib = proc.stderr.strip().splitlines() or ["0"]
    output = proc.stdout + "\n".join(err)
    row = {"shape": shape, "stage": stage, "seconds": round(time.perf_counter() - start, 1),
           "peak_rss_mb": round(int(peak_kib) / 1024), "ok": proc.returncode == 0,
           "command": " ".join(["quamba-edge"] * cli + list(map(str, args)))}
    if size_of is not None and size_of.exists():
        row["size_mb"] = round(sum(f.stat().st_size for f in size_of.rglob("*") if f.is_file()) / 2**20)
    if proc.returncode != 0:
        row["error"] = output.strip().splitlines()[-6:]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=list(PUBLIC_SHAPES))
    ap.add_argument("--work", type=Path, default=Path(".cache/scale"))
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fp16-max", default="mamba-790m", help="largest shape also built as an fp16 engine")
    ap.add_argument("--keep", action="store_true", help="keep checkpoints, artifacts and engines")
    ap.add_argument("--llama-shapes", nargs="*", default=["mamba-130m", "mamba-2.8b"],
                    help="shapes also timed in llama.cpp q8_0 (benchmarks/peers.py's peer), one thread and all")
    ap.add_argument("--trt-parse", action=argparse.BooleanOptionalAction, default=True,
                    help="parse the int8 graphs (TensorRT form, external data) with TensorRT's parser (trt_parse.py)")
    ap.add_argument("--llama-src", type=Path, default=Path(".cache/peers/src"), help="from `make peers-wheel`")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    ap.add_argument("--markdown", action="store_true", help="print --out's rows as a markdown table and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())["rows"]))
        return []
    console = Console(width=160)
    tokenizer = train_tokenizer(args.work / "tokenizer.json")
    rows: list[dict] = []
    meta = {"command": "python " + " ".join(sys.argv), "machine": machine("cpu"), "samples": args.samples,
            "seq_len": args.seq_len, "prompt_len": args.prompt_len, "gen_len": args.gen_len,
            "threads": args.threads, "tokenizer_sha256": sha256_file(tokenizer),
            "note": "random weights at the public shapes; calibration on few samples (see samples, seq_len); peak RSS "
                    "of each CLI process, forked from a small parent (earlier runs forked from this script and "
                    "reported at least its own RSS)"}
    order = list(PUBLIC_SHAPES)
    for shape in args.shapes:
        root = args.work / shape
        console.print(f"[bold]{shape}[/]: checkpoint")
        ckpt = checkpoint(shape, args.work, tokenizer)
        steps = [("calibrate", ["calibrate", "--model", ckpt, "--samples", args.samples, "--seq-len", args.seq_len,
                                "--out", root / "int8", "--threads", args.threads, "--json"], root / "int8"),
                 ("build-engine int8", ["build-engine", root / "int8", "--out", root / "engine-int8", "--max-prompt",
                                        args.prompt_len, "--threads", args.threads, "--json"], root / "engine-int8")]
        steps.append(("build-engine native", ["build-engine", root / "int8", "--backend", "native", "--head", "fp16",
                                              "--out", root / "engine-native", "--json"], root / "engine-native"))
        if order.index(shape) <= order.index(args.fp16_max):
            steps.append(("build-engine fp16", ["build-engine", ckpt, "--precision", "fp16", "--out",
                                                root / "engine-fp16", "--max-prompt", args.prompt_len, "--threads",
                                                args.threads, "--json"], root / "engine-fp16"))
        for stage, cli, size_of in steps:
            console.print(f"  {stage}")
            rows.append(run(stage, shape, cli, size_of))
            atomic_write_json(args.out, {**meta, "rows": rows})
            if not rows[-1]["ok"] and stage == "calibrate":
                break
        if args.trt_parse and (root / "int8" / "manifest.json").exists():  # TensorRT's parser on the int8 graphs
            console.print("  tensorrt-rtx parse")
            trt_json = root / "trt-parse.json"
            row = run("tensorrt-rtx parse int8", shape, [Path(__file__).parent / "trt_parse.py", root / "int8",
                                                         "--out", trt_json], None, cli=False)
            if row["ok"]:
                parsed = json.loads(trt_json.read_text())
                row.update(tensorrt=f"{parsed['tensorrt_module']} {parsed['tensorrt_version']}",
                           size_mb=round(parsed["weights_data_mb"]),
                           layers={r["graph"]: r["layers"] for r in parsed["rows"] if r["stage"] == "parse"})
            rows.append(row)
            atomic_write_json(args.out, {**meta, "rows": rows})
        for row in rows:
            if row["shape"] == shape and row["stage"].startswith("build-engine") and row.get("size_mb"):
                row["peak_over_size"] = round(row["peak_rss_mb"] / row["size_mb"], 2)
        kinds = (("int8", []), ("int8 low-memory", ["--low-memory"]), ("native", []), ("fp16", []))
        benches = [(e, flags) for e, flags in kinds if (root / f"engine-{e.split()[0]}" / "build.json").exists()]
        for engine, flags in benches:
            bench_json = root / f"bench-{engine.replace(' ', '-')}.json"
            console.print(f"  bench {engine}")
            row = run(f"bench {engine}", shape, ["bench", root / f"engine-{engine.split()[0]}", "--prompt-len",
                                                 args.prompt_len, "--gen-len", args.gen_len, "--repeats", 1,
                                                 "--threads", 1, *flags, "--json", bench_json], None)
            if row["ok"]:
                result = json.loads(bench_json.read_text())["results"][0]
                row.update({k: result.get(k) for k in ("decode_tok_s", "prompt_tok_s", "decode_weights_gb_s",
                                                       "rss_mb", "baseline_rss_mb", "weights_mb")})
                if row.get("weights_mb"):  # the budget: resident above the interpreter's own, over the weights
                    row["resident_over_weights"] = round((row["peak_rss_mb"] - row["baseline_rss_mb"])
                                                         / row["weights_mb"], 2)
            rows.append(row)
            atomic_write_json(args.out, {**meta, "rows": rows})
        if shape in args.llama_shapes:
            rows.extend(llama_rows(shape, ckpt, root, args))
            atomic_write_json(args.out, {**meta, "rows": rows})
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    table = Table(title="the public Mamba shapes through calibrate, build-engine and bench (random weights)")
    for col in ("shape", "stage", "ok", "seconds", "peak RSS MB", "size MB", "budget ratio", "decode tok/s", "GB/s"):
        table.add_column(col, justify="left" if col in ("shape", "stage") else "right")
    for r in rows:
        table.add_row(r["shape"], r["stage"], "yes" if r["ok"] else "[red]no[/]", f"{r['seconds']:.0f}",
                      str(r.get("peak_rss_mb", "-")), str(r.get("size_mb", "-")), _ratio(r),
                      f"{r['decode_tok_s']:.1f}" if r.get("decode_tok_s") else "-",
                      f"{r['decode_weights_gb_s']:.1f}" if r.get("decode_weights_gb_s") else "-")
    console.print(table)
    return rows


def _ratio(r: dict) -> str:
    """build-engine: peak over the engine's size (budget 2.5x); bench: resident above the interpreter's
    baseline over the weights (budget 1.25x)."""
    value = r.get("peak_over_size") or r.get("resident_over_weights")
    return f"{value:.2f}x" if value else "-"


def markdown(rows: list[dict]) -> str:
    lines = ["| shape | stage | ok | seconds | peak RSS MB | size MB | budget ratio | decode tok/s | prompt tok/s | "
             "weights GB/s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        tok = f"{r['decode_tok_s']:.1f}" if r.get("decode_tok_s") else "-"
        ptok = f"{r['prompt_tok_s']:.1f}" if r.get("prompt_tok_s") else "-"
        gbs = f"{r['decode_weights_gb_s']:.1f}" if r.get("decode_weights_gb_s") else "-"
        lines.append(f"| {r['shape']} | {r['stage']} | {'yes' if r['ok'] else 'no'} | {r['seconds']:.0f} | "
                     f"{r.get('peak_rss_mb', '-')} | {r.get('size_mb', '-')} | {_ratio(r)} | {tok} | {ptok} | {gbs} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
