"""CPU speed of our four systems side by side, one thread, in one run: PyTorch eager fp32 / int8 and
ONNX Runtime fp32 / int8 (the engines `quamba-edge build-engine` writes), on two models:

- `bundled`: the bundled default model (byte-level, 6 layers, d_model 384), calibrated with Quamba;
- `mamba-130m-shape`: a randomly initialised model at the mamba-130m shape (24 layers, d_model 768,
  vocabulary 50280), calibrated with Quamba on the default corpus. Speed does not depend on the
  weights' values, and the hubs are unreachable here, so the shape stands in for the checkpoint.

    python benchmarks/cpu_decode.py --out benchmarks/results/cpu_decode.json

Every row is timed by the same loop (quamba_edge.bench.runner): TTFT of a --prompt-len prompt, then
--gen-len greedy tokens; medians of --repeats after a warm-up. The ORT int8 decode step is also
profiled per op type, to say where its time goes.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from quamba_edge.backends import ort as ort_backend
from quamba_edge.bench.report import machine, measure_system
from quamba_edge.data.text import load_windows
from quamba_edge.data.tokenizers import ByteTokenizer
from quamba_edge.engine import build_engine
from quamba_edge.families.registry import load
from quamba_edge.io import atomic_write_json
from quamba_edge.models.mamba import MambaConfig, MambaLM, init_weights
from quamba_edge.quant.quamba import calibrate
from quamba_edge.quant.recipes import make_recipe

MAMBA_130M_SHAPE = MambaConfig(d_model=768, n_layer=24, vocab_size=50280)


def mamba_130m_shape(seed: int = 0) -> MambaLM:
    model = MambaLM(MAMBA_130M_SHAPE)
    init_weights(model, seed)
    return model.eval()


def quantize(model, samples: int, seq_len: int, int8_head: bool = False):
    windows = load_windows("default", ByteTokenizer(), samples, seq_len).tokens  # bytes: valid ids for both vocabs
    batches = [windows[i : i + 8] for i in range(0, len(windows), 8)]
    return calibrate(model, batches, make_recipe("quamba", int8_head=int8_head))


def save_model_artifacts(model, name: str, root: Path, samples: int, seq_len: int) -> tuple[Path, dict[str, Path]]:
    """fp checkpoint + Quamba artifacts (fp32 head as in the paper, and --int8-head) on disk, so every
    system is opened the way a user opens it."""
    from quamba_edge.artifact import save_artifact
    from quamba_edge.checkpoints.mamba import save_checkpoint

    fp_dir = root / f"{name}-fp"
    save_checkpoint(model, fp_dir)
    artifacts = {}
    for int8_head in (False, True):
        qmodel, calib = quantize(model, samples, seq_len, int8_head)
        artifacts[qmodel.recipe.label] = save_artifact(
            qmodel, root / f"{name}-{qmodel.recipe.label}", family="mamba", recipe=qmodel.recipe,
            source={"model": name}, calibration=None, scales=calib.scales)
    return fp_dir, artifacts


def profile_decode(engine_dir: Path, threads: int, steps: int = 20) -> dict[str, float]:
    """Share of the ORT decode step's kernel time per op type (ORT's own profiler)."""
    import onnxruntime as ort

    build = json.loads((engine_dir / "build.json").read_text())
    opts = ort_backend.session_options(threads, build["precision"] == "int8",
                                       activations=build.get("int8_activations") or "int8")
    opts.enable_profiling = True
    opts.profile_file_prefix = str(engine_dir / "profile")
    session = ort.InferenceSession(str(engine_dir / "decode.onnx"), opts, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=ort_backend.DISABLED_FOR_INT8)
    feeds = {}
    for inp in session.get_inputs():
        shape = [1 if isinstance(d, str) else d for d in inp.shape]
        dtype = {"tensor(int64)": np.int64, "tensor(int8)": np.int8, "tensor(float)": np.float32}[inp.type]
        feeds[inp.name] = np.zeros(shape, dtype)
    for _ in range(steps):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {"step_kernel_ms": total / steps / 1e3,
            **{op: round(us / total, 4) for op, us in per_op.most_common(10)}}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--models", nargs="*", default=["bundled", "mamba-130m-shape"])
    ap.add_argument("--skip-pytorch-int8", action="store_true", help="its prefill is slow (eager int8 emulation)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(width=150)
    rows: list[dict] = []
    profiles: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.models:
            model = load("default").model if name == "bundled" else mamba_130m_shape()
            console.print(f"[bold]{name}[/]: calibrating and building engines")
            fp_dir, artifacts = save_model_artifacts(model, name, root, args.calib_samples, args.calib_seq_len)
            systems = [str(fp_dir)] + ([] if args.skip_pytorch_int8 else [str(artifacts["quamba"])])
            for label, src in (("fp32", fp_dir), *artifacts.items()):
                eng = root / f"{name}-engine-{label}"
                build_engine(src, eng, precision="fp32" if label == "fp32" else None, threads=args.threads,
                             max_prompt=args.prompt_len)
                systems.append(str(eng))
            for label in artifacts:
                profiles[f"{name} {label}"] = profile_decode(root / f"{name}-engine-{label}", args.threads)
            for spec in systems:
                console.print(f"  timing {spec}")
                m, _, _ = measure_system(spec, "cpu", args.threads, args.repeats, batch=1, prompt_len=args.prompt_len,
                                      gen_len=args.gen_len)
                row = {**m, "system": _system_name(m), "label": m["system"], "model": name}
                row.pop("tpot_curve_ms")
                rows.append(row)
    for name in args.models:
        base = next(r for r in rows if r["model"] == name and r["system"] == "quamba-edge-pytorch-fp32")
        for r in rows:
            if r["model"] == name:
                r["decode_vs_pytorch_fp32"] = r["decode_tok_s"] / base["decode_tok_s"]
                r["prompt_vs_pytorch_fp32"] = r["prompt_tok_s"] / base["prompt_tok_s"]
    print_table(console, rows)
    for name, prof in profiles.items():
        top = ", ".join(f"{op} {100 * share:.0f}%" for op, share in prof.items() if op != "step_kernel_ms")
        console.print(f"{name}: ORT decode step {prof['step_kernel_ms']:.2f} ms of kernels: {top}")
    if args.out:
        atomic_write_json(args.out, {"command": "python " + " ".join(sys.argv), "machine": machine("cpu"),
                                     "rows": rows, "ort_int8_decode_profile": profiles,
                                     "date": time.strftime("%Y-%m-%d")})
        console.print(f"wrote {args.out}")
    return rows


def _system_name(row: dict) -> str:
    """quamba-edge-<backend>-<fp32 | int8 | int8-head>, the names benchmarks/results use."""
    precision = "int8-head" if "int8-head" in row["system"] else row["precision"]
    return f"quamba-edge-{row['backend']}-{precision}"


def print_table(console, rows: list[dict]) -> None:
    table = Table(title="CPU, one thread: prompt and decode speed (medians)")
    for col in ("model", "system", "prompt tok/s", "decode tok/s", "TPOT ms", "decode vs pytorch-fp32"):
        table.add_column(col, justify="left" if col in ("model", "system") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["model"], r["system"], f"{r['prompt_tok_s']:.0f}", f"{r['decode_tok_s']:.1f}",
                      f"{r['tpot_ms']:.2f}", f"{r.get('decode_vs_pytorch_fp32', 1):.2f}x")
    console.print(table)


def markdown(rows: list[dict]) -> str:
    lines = ["| model | system | prompt tok/s | decode tok/s | decode vs PyTorch fp32 |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['system']} | {r['prompt_tok_s']:.0f} | {r['decode_tok_s']:.1f} | "
                     f"{r['decode_vs_pytorch_fp32']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
