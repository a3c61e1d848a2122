"""quamba-edge against llama.cpp on the same weights, one thread, in one run.

    make bench-peers     # builds llama-cpp-python once into a cached wheel, then runs this script
    python benchmarks/peers.py --llama-src .cache/peers/src --out benchmarks/results/peers.json
    python benchmarks/peers.py --arch mamba2 --out benchmarks/results/peers_mamba2.json   # Mamba-2 (issue 19)

The model is the mamba-130m shape with random weights (seed 0; see cpu_decode.py for why a shape).
It is written once as a mamba-ssm checkpoint; llama.cpp's own converter (convert_hf_to_gguf.py from
the llama-cpp-python sdist, with its bundled gguf-py) turns it into f32 and q8_0 gguf files, and
quamba-edge builds its fp32 and Quamba int8 ONNX Runtime engines and its native CPU engines (Quamba with
the paper's 16-bit head; --int8-head with the int8 head) from the same checkpoint. Every
system is timed by quamba-edge's bench loop (prompt, then greedy decode one token at a time), with
llama.cpp driven through llama-cpp-python's `eval` at n_threads = n_threads_batch = 1.

--arch mamba2: the mamba2-130m shape (24 layers, d_model 768, d_state 128, headdim 64, one group; random
weights, seed 0) written as a mamba-ssm checkpoint; llama.cpp converts it as `Mamba2ForCausalLM`. quamba-edge runs
its W8A8 model (Quamba2 recipe) on the native CPU decoder (the paper's 16-bit head, and --int8-head; its prefill
runs int8 GEMMs over 64-token chunks with the SSD recurrence along time) and in ONNX Runtime, and its fp32 model in
ONNX Runtime and PyTorch.

The bundled model cannot be compared on quality here: llama.cpp's Mamba converter supplies a GPT-NeoX
vocabulary (50k tokens), and the bundled model is byte-level (256).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cpu_decode import _system_name, mamba_130m_shape, save_model_artifacts
from rich.console import Console
from rich.table import Table

from quamba_edge.backends.base import System
from quamba_edge.backends.torch import TorchRunner
from quamba_edge.bench.measure import measure
from quamba_edge.bench.report import machine
from quamba_edge.bench.systems import open_system
from quamba_edge.data.text import load_windows
from quamba_edge.data.tokenizers import ByteTokenizer
from quamba_edge.engine import build_engine
from quamba_edge.families import mamba
from quamba_edge.io import atomic_write_json
from quamba_edge.kernels import native
from quamba_edge.models.mamba2 import Mamba2LM


def llama_cpp_system(gguf: Path, quant: str, cfg, max_tokens: int, threads: int = 1) -> System:
    """llama.cpp as a System with Mamba's two graphs (batch 1, greedy): its state lives inside the context,
    so the state outputs are None and the bench loop passes them back unused."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=max_tokens + 16,
                n_batch=max_tokens + 16, logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()

    def outputs() -> dict:
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))[None, :].copy()
        return {"logits": logits, "conv_state": None, "ssm_state": None}

    def prefill(feeds):
        llm.reset()
        llm.eval([int(t) for t in feeds["input_ids"][0]])
        return outputs()

    def decode(feeds):
        llm.eval([int(feeds["input_ids"][0, 0])])
        return outputs()

    runners = {"prefill": TorchRunner("prefill", prefill, "llama.cpp"),
               "decode": TorchRunner("decode", decode, "llama.cpp")}
    return System(runners, f"llama.cpp-{quant}", "llama.cpp", quant, cfg, mamba)


def convert(llama_src: Path, checkpoint: Path, outtype: str, out: Path) -> Path:
    converter = llama_src / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if not converter.exists():
        sys.exit(f"{converter} is missing. Fix: `make peers-wheel` (unpacks the llama-cpp-python sdist).")
    env = {**os.environ, "PYTHONPATH": str(converter.parent / "gguf-py")}
    cmd = [sys.executable, str(converter), str(checkpoint), "--outtype", outtype, "--outfile", str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"llama.cpp's converter failed ({' '.join(cmd)}):\n{result.stderr[-2000:]}")
    return out


def time_gguf(args) -> dict:
    """One llama.cpp system (args.gguf at args.shape, args.threads threads) timed by the same loop as ours."""
    from quamba_edge.models.mamba import public_shape

    cfg = public_shape(args.shape)
    quant = args.gguf.stem.rsplit("-", 1)[-1]
    system = llama_cpp_system(args.gguf, quant, cfg, args.prompt_len + args.gen_len, threads=args.threads)
    work = mamba.workload(cfg, batch=1, prompt_len=args.prompt_len, gen_len=args.gen_len)
    row = measure(system, work, repeats=args.repeats, threads=args.threads)
    row.pop("tpot_curve_ms", None)
    row.update(system=f"llama.cpp-{quant}", model=args.shape, gguf_mb=args.gguf.stat().st_size / 2**20)
    if args.out:
        atomic_write_json(args.out, row)
    return row


def mamba_systems(root: Path, args) -> tuple[str, object, list[System], dict, Path]:
    """Mamba-1 at the mamba-130m shape: ORT int8 (fp32 head, int8 head) and fp32 engines, the native CPU decoder
    with each head, PyTorch fp32; the checkpoint directory llama.cpp converts."""
    model = mamba_130m_shape()
    fp_dir, artifacts = save_model_artifacts(model, "mamba-130m-shape", root, args.calib_samples, 256)
    config = json.loads((fp_dir / "config.json").read_text())
    (fp_dir / "config.json").write_text(json.dumps({**config, "architectures": ["MambaLMHeadModel"]}))
    systems, names = [], {}
    for label, src in (*artifacts.items(), ("fp32", fp_dir)):
        eng = root / f"engine-{label}"
        build_engine(src, eng, precision="fp32" if label == "fp32" else None, max_prompt=args.prompt_len)
        systems.append(open_system(str(eng), device="cpu", threads=1))
    for label, head in (("quamba", "fp16"), ("quamba-int8-head", "int8")):  # the native CPU decoder
        eng = root / f"native-{label}"
        build_engine(artifacts[label], eng, backend="native", head=head, max_prompt=args.prompt_len)
        systems.append(open_system(str(eng), device="cpu", threads=1))
        names[id(systems[-1])] = f"quamba-edge-native-int8-{head}-head ({native.isa()})"
    systems.append(open_system(str(fp_dir), device="cpu", threads=1))
    return "mamba-130m-shape", model.cfg, systems, names, fp_dir


def mamba2_systems(root: Path, args) -> tuple[str, object, list[System], dict, Path]:
    """Mamba-2 at the mamba2-130m shape (random weights, seed 0): ORT int8 (Quamba2 W8A8, calibrated on the
    default corpus's bytes; fp32 head and --int8-head) and fp32 engines, the native decoder (fp16 and int8 head),
    PyTorch fp32 and int8;
    a copy of the checkpoint for llama.cpp's converter with the SSM fields it reads at the top level (it does
    not read mamba-ssm's ssm_cfg)."""
    from quamba_edge.artifact import save_artifact
    from quamba_edge.checkpoints.mamba2 import save_checkpoint
    from quamba_edge.families import mamba2
    from quamba_edge.models.mamba2 import init_weights, public_shape
    from quamba_edge.quant.quantize import quantize

    cfg = public_shape("mamba2-130m")
    model = Mamba2LM(cfg)
    init_weights(model, seed=0)
    fp_dir = root / "mamba2-130m-shape-fp"
    save_checkpoint(model.eval(), fp_dir)
    windows = load_windows("default", ByteTokenizer(), args.calib_samples, 256).tokens
    artifacts = {}
    for int8_head in (False, True):
        recipe = mamba2.quant_config("quamba", int8_head=int8_head)
        qmodel, scales = quantize(model, recipe, windows.split(8))
        artifacts[recipe.label] = save_artifact(
            qmodel, root / f"mamba2-130m-shape-{recipe.label}", family=mamba2.name, recipe=recipe,
            source={"model": "mamba2-130m shape, random weights (seed 0)"}, scales=scales)
    artifact = artifacts["quamba2"]
    systems = []
    for label, src in (*artifacts.items(), ("fp32", fp_dir)):
        eng = root / f"engine-{label}"
        build_engine(src, eng, precision="fp32" if label == "fp32" else None, max_prompt=args.prompt_len)
        systems.append(open_system(str(eng), device="cpu", threads=1))
    names = {}
    for label, head in (("quamba2", "fp16"), ("quamba2-int8-head", "int8")):  # the native CPU decoder (mamba2.cpp)
        eng = root / f"native-{label}"
        build_engine(artifacts[label], eng, backend="native", head=head, max_prompt=args.prompt_len)
        systems.append(open_system(str(eng), device="cpu", threads=1))
        names[id(systems[-1])] = f"quamba-edge-native-int8-{head}-head ({native.isa()})"
    systems += [open_system(str(fp_dir), device="cpu", threads=1), open_system(str(artifact), device="cpu", threads=1)]
    llama_dir = root / "mamba2-130m-shape-llama"
    shutil.copytree(fp_dir, llama_dir)
    config = json.loads((llama_dir / "config.json").read_text())
    (llama_dir / "config.json").write_text(json.dumps({
        **config, "architectures": ["Mamba2ForCausalLM"], "d_state": cfg.d_state, "head_dim": cfg.headdim,
        "n_groups": cfg.ngroups, "expand": cfg.expand, "d_conv": cfg.d_conv}))
    return "mamba2-130m-shape", cfg, systems, names, llama_dir


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-src", type=Path, default=Path(".cache/peers/src"))
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--arch", choices=("mamba", "mamba2"), default="mamba",
                    help="mamba: the mamba-130m shape (Quamba, native decoder); mamba2: the mamba2-130m shape")
    ap.add_argument("--gguf", type=Path, help="time only this gguf file (benchmarks/scale.py): one JSON row to --out")
    ap.add_argument("--shape", default="mamba-130m", help="with --gguf: its public shape (models/mamba.PUBLIC_SHAPES)")
    ap.add_argument("--threads", type=int, default=1, help="with --gguf: llama.cpp's threads")
    args = ap.parse_args(argv)
    if args.gguf:
        return [time_gguf(args)]
    torch.set_num_threads(1)
    console = Console(width=140)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        console.print("writing the checkpoint, calibrating, building engines")
        make_systems = mamba2_systems if args.arch == "mamba2" else mamba_systems
        shape, cfg, systems, names, gguf_source = make_systems(root, args)
        for quant in ("q8_0", "f32"):
            console.print(f"converting to gguf {quant} with llama.cpp's converter")
            gguf = convert(args.llama_src, gguf_source, quant, root / f"model-{quant}.gguf")
            systems.append(llama_cpp_system(gguf, quant, cfg, args.prompt_len + args.gen_len))
        for system in systems:
            console.print(f"timing {system.label}")
            work = mamba.workload(cfg, batch=1, prompt_len=args.prompt_len, gen_len=args.gen_len)
            m = measure(system, work, repeats=args.repeats, threads=1)
            name = names.get(id(system)) or (system.label if system.backend == "llama.cpp" else _system_name(m))
            row = {**m, "system": name, "model": shape}
            row.pop("tpot_curve_ms")
            rows.append(row)
    q8 = next(r for r in rows if r["system"] == "llama.cpp-q8_0")
    for r in rows:
        r["decode_vs_llama_q8_0"] = r["decode_tok_s"] / q8["decode_tok_s"]
        r["prompt_vs_llama_q8_0"] = r["prompt_tok_s"] / q8["prompt_tok_s"]
    table = Table(title=f"one thread, {rows[0]['model']}, prompt {args.prompt_len}, generate {args.gen_len} (medians)")
    for col in ("system", "prompt tok/s", "decode tok/s", "decode vs llama.cpp q8_0", "prompt vs llama.cpp q8_0"):
        table.add_column(col, justify="left" if col == "system" else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["system"], f"{r['prompt_tok_s']:.0f}", f"{r['decode_tok_s']:.1f}",
                      f"{r['decode_vs_llama_q8_0']:.2f}x", f"{r['prompt_vs_llama_q8_0']:.2f}x")
    console.print(table)
    if args.out:
        import llama_cpp

        atomic_write_json(args.out, {"command": "python " + " ".join(sys.argv), "machine": machine("cpu"),
                                     "llama_cpp_python": llama_cpp.__version__, "rows": rows,
                                     "date": time.strftime("%Y-%m-%d")})
        console.print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
