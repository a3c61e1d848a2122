"""Kernel timings: our int8 ops against a float baseline, op by op, and end-to-end decode on a GPU.

    python benchmarks/kernels.py --device cpu  --out benchmarks/results/kernels-cpu.json
    python benchmarks/kernels.py --device cuda --out benchmarks/results/kernels-<gpu>.json

On the CPU (one thread): each op's CPU twin (int8 in, the compiled csrc/cpu code) against the PyTorch
reference of the same op (`quamba_edge.kernels.reference`, what runs without the extension) and the fp32
PyTorch scan it replaces. On CUDA: our int8 kernels against an fp16 scan, mamba-ssm's
`selective_scan_fn` when it imports, else our PyTorch scan in fp16 (the row says which), at batch 1,
L in {128, 1024, 4096}, d_inner in {1536, 5120}, d_state 16; then decode latency of the whole model
at the Mamba-2.8B shape (random weights: timing only), int8 on our kernels against fp16 PyTorch.
With --artifact, a calibrated model end to end through bench's loop (prompt 512, 128 tokens): the
reference QuantizedMambaLM against the same model on the ops (per-token decode and time to first token).
Medians of --repeats after warm-up; rows carry `op`, `shape`, `device`, `int8_ms`, the baseline's ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import quamba_edge.kernels as kernels
from quamba_edge.bench.report import machine, measure_system
from quamba_edge.io import atomic_write_json
from quamba_edge.kernels import ops, reference
from quamba_edge.models.scan import selective_scan
from quamba_edge.quant.hadamard import factor, small_hadamard

D_STATE = 16


def timed(fn: Callable[[], object], device: str, repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of fn() (CUDA: synchronised, so the kernels' time is counted)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def scan_case(b: int, length: int, d: int, device: str, gen: torch.Generator):
    def i8(*shape):
        return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8).to(device)

    args = (i8(b, length, d), i8(b, length, d), i8(b, length, D_STATE), i8(b, length, D_STATE), i8(b, length, d),
            torch.randint(0, 128, (d, D_STATE), generator=gen, dtype=torch.int8).to(device), i8(d), i8(d),
            torch.tensor([0.03, 0.02, 0.015, 0.015, 0.04, 2.8 / 127, 1.5 / 127, 4.0 / 127], device=device))
    return args, torch.zeros(b, d, D_STATE, device=device)


def float_scan_inputs(args, dtype: torch.dtype):
    u, delta, B, C, z, A_log, D, delta_bias, scales = args
    f = [t.to(dtype) * s.to(dtype) for t, s in zip((u, delta, B, C, z), scales[:5])]
    A = -torch.exp(A_log.float() * scales[5])
    return f, A, (D.float() * scales[6]), (delta_bias.float() * scales[7])


def fp16_scan_baseline(args, device: str):
    """(name, callable) of the fp16 scan we compare against on CUDA."""
    (u, delta, B, C, z), A, D, delta_bias = float_scan_inputs(args, torch.float16)
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        ut, dt, zt = (t.transpose(1, 2).contiguous() for t in (u, delta, z))  # (b, d, l)
        Bt, Ct = (t.transpose(1, 2).contiguous() for t in (B, C))  # (b, n, l)
        return "mamba_ssm.selective_scan_fn fp16", lambda: selective_scan_fn(
            ut, dt, A, Bt, Ct, D, zt, delta_bias, delta_softplus=True, return_last_state=True)
    except ImportError:
        def ours():
            dt_f = torch.nn.functional.softplus(delta.float() + delta_bias).half()
            y, h = selective_scan(u, dt_f, A.half(), B, C, D.half())
            return y * torch.nn.functional.silu(z)

        return "quamba-edge PyTorch scan fp16 (mamba-ssm not installed)", ours


def op_rows(device: str, repeats: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    lengths = (128, 1024, 4096) if device == "cuda" else (1, 128, 512)
    return [row for d in (1536, 5120) for row in width_rows(d, lengths, device, repeats, gen)]


def width_rows(d: int, lengths: tuple[int, ...], device: str, repeats: int, gen: torch.Generator) -> list[dict]:
    """Every op at one d_inner: the scan over each prompt length, then one decode token's ops."""
    rows = []
    for length in lengths:
        args, h0 = scan_case(1, length, d, device, gen)
        shape = f"b1 L{length} d{d} n{D_STATE}"
        int8_ms = timed(lambda a=args, h=h0: ops.selective_scan(*a, h), device, repeats)
        row = {"op": "selective_scan", "shape": shape, "device": device, "int8_ms": int8_ms}
        if device == "cuda":
            name, baseline = fp16_scan_baseline(args, device)
            row.update(fp16_ms=timed(baseline, device, repeats), baseline=name)
        else:
            (u, delta, B, C, _), A, D, _ = float_scan_inputs(args, torch.float32)
            row["reference_ms"] = timed(lambda a=args, h=h0: reference.selective_scan(*a, h), device, repeats)
            fp32 = (u, delta, A, B, C, D, h0)
            row["fp32_scan_ms"] = timed(lambda f=fp32: selective_scan(*f), device, repeats)
        rows.append(row)
    # one decode step of the scan and the conv, and the two quantizing epilogues of a token
    args, h0 = scan_case(1, 1, d, device, gen)
    step_args = [t[:, 0].contiguous() if t.dim() == 3 else t for t in args]
    rows.append(_pair("selective_scan_step", f"b1 d{d} n{D_STATE}", device, repeats,
                      lambda: ops.selective_scan_step(*step_args, h0),
                      lambda: reference.selective_scan_step(*step_args, h0)))
    x = torch.randint(-128, 128, (1, d), generator=gen, dtype=torch.int8).to(device)
    conv = (torch.randint(-128, 128, (d, 4), generator=gen, dtype=torch.int8).to(device),
            torch.zeros(d, dtype=torch.int8, device=device), torch.full((d,), 0.004, device=device),
            torch.tensor([0.05, 0.01, 0.02], device=device))
    state = torch.zeros(1, d, 3, dtype=torch.int8, device=device)
    rows.append(_pair("conv1d_silu_step", f"b1 d{d} k4", device, repeats,
                      lambda: ops.conv1d_silu_step(x, state, *conv),
                      lambda: reference.conv1d_silu_step(x, state, *conv)))
    y = torch.randn(1, d, generator=gen).to(device)
    H = small_hadamard(factor(d)[0]).to(torch.int8).to(device)
    s = torch.tensor([0.05], device=device)
    rows.append(_pair("hadamard_quantize", f"1 x {d}", device, repeats,
                      lambda: ops.hadamard_quantize(y, H, s), lambda: reference.hadamard_quantize(y, H, s)))
    h = torch.randn(1, d // 2, generator=gen).to(device)
    w = torch.ones(d // 2, device=device)
    rows.append(_pair("rmsnorm_quantize", f"1 x {d // 2}", device, repeats,
                      lambda: ops.rmsnorm_quantize(h, w, 1e-5, s),
                      lambda: reference.rmsnorm_quantize(h, w, 1e-5, s)))
    rows.append(ssd_step_row(d, device, repeats, gen))
    return rows


def ssd_step_row(d: int, device: str, repeats: int, gen: torch.Generator) -> dict:
    """Mamba-2's SSD decode step at this width (heads of 64, d_state 128, one group: mamba2-130m at d 1536,
    mamba2-2.7b at 5120). On the CPU the op is its PyTorch reference (the native decoder is the CPU path)."""
    heads, p, n = d // 64, 64, 128
    e = d + 2 * n
    xbc = torch.randint(-128, 128, (1, e), generator=gen, dtype=torch.int8).to(device)
    vectors = (torch.full((e,), 0.02), torch.randn(1, heads, generator=gen), torch.randn(heads, generator=gen) - 2,
               -torch.rand(heads, generator=gen) * 8, torch.randn(heads, generator=gen))
    args = (xbc, *(t.to(device) for t in vectors))
    state = torch.zeros(1, heads, p, n, device=device)
    return _pair("ssd_step (Mamba-2)", f"b1 h{heads} p{p} n{n}", device, repeats,
                 lambda: ops.ssd_step(*args, state, 1, 0.0, 0.0), lambda: reference.ssd_step(*args, state, 1, 0.0, 0.0))


def _pair(op: str, shape: str, device: str, repeats: int, fast, ref) -> dict:
    return {"op": op, "shape": shape, "device": device, "int8_ms": timed(fast, device, repeats * 20),
            "reference_ms": timed(ref, device, repeats * 20)}


def decode_rows(repeats: int) -> list[dict]:
    """Decode latency at the Mamba-2.8B shape on CUDA: int8 on the kernel ops vs fp16 PyTorch eager.

    Two int8 rows: the paper's recipe (lm_head in float: here the fp32 tied embedding) and --int8-head.
    """
    from quamba_edge.kernels.mamba import KernelMambaLM
    from quamba_edge.models.mamba import MambaConfig, MambaLM
    from quamba_edge.quant.int8 import QLinear
    from quamba_edge.quant.quamba import QuantizedMambaLM
    from quamba_edge.quant.recipes import make_recipe

    cfg = MambaConfig(d_model=2560, n_layer=64, vocab_size=50280)
    prompt = torch.randint(0, cfg.vocab_size, (1, 128), device="cuda")
    token = prompt[:, -1:]

    def decode_ms(model) -> float:
        with torch.no_grad():
            _, conv, ssm = model.step(prompt)
            return timed(lambda: model.step(token, conv, ssm), "cuda", repeats * 10)

    with torch.device("cuda"):
        fp16 = MambaLM(cfg).half().eval()
    fp16_ms = decode_ms(fp16)
    del fp16
    rows = []
    for recipe in (make_recipe("quamba"), make_recipe("quamba", int8_head=True)):
        with torch.device("cuda"):
            q = QuantizedMambaLM(cfg, recipe).eval()
        with torch.no_grad():
            for mod in q.modules():  # random int8 weights at a sane scale: timing only
                if isinstance(mod, QLinear):
                    mod.weight.random_(-128, 128)
                    mod.weight_scale.fill_(1.0 / (127 * mod.in_features**0.5))
        rows.append({"op": "decode_step", "shape": f"mamba-2.8b b1 ({recipe.label})", "device": "cuda",
                     "int8_ms": decode_ms(KernelMambaLM(q)), "fp16_ms": fp16_ms,
                     "baseline": "fp16 PyTorch eager (our reference model)"})
        del q
        torch.cuda.empty_cache()
    return rows


def model_rows(artifact: str, device: str, repeats: int, prompt_len: int = 512, gen_len: int = 128) -> list[dict]:
    """A calibrated artifact end to end (bench's loop): the quantized model on the ops vs the reference."""
    m = {k: measure_system(artifact, device, 1, repeats, kernels=k, batch=1, prompt_len=prompt_len,
                           gen_len=gen_len)[0] for k in (False, True)}
    shape = f"{artifact} prompt {prompt_len}"
    return [{"op": "model_decode_step", "shape": shape, "device": device, "int8_ms": m[True]["tpot_ms"],
             "reference_ms": m[False]["tpot_ms"]},
            {"op": "model_prefill", "shape": shape, "device": device, "int8_ms": m[True]["ttft_ms"],
             "reference_ms": m[False]["ttft_ms"]}]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--artifact", default=None, help="also time this calibrated artifact end to end (CPU: the "
                                                     "reference model vs the same model on the ops)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    state = kernels.load(require=True)
    if args.device == "cuda" and not state.cuda:
        raise SystemExit("the CUDA kernels are not built: run on a machine with a GPU, nvcc and CUDA torch")
    rows = op_rows(args.device, args.repeats)
    if args.device == "cuda":
        rows += decode_rows(args.repeats)
    if args.artifact:
        rows += model_rows(args.artifact, args.device, args.repeats)
    base_key = "fp16_ms" if args.device == "cuda" else "reference_ms"
    table = Table(title=f"kernels on {args.device} ({kernels.backend(args.device)}), medians of {args.repeats}")
    for col in ("op", "shape", "int8 ms", base_key.replace("_", " ") + " (baseline)", "speedup"):
        table.add_column(col, justify="left" if col in ("op", "shape") else "right")
    for r in rows:
        base_key = "fp16_ms" if "fp16_ms" in r else "reference_ms"
        r["speedup"] = r[base_key] / r["int8_ms"]
        table.add_row(r["op"], r["shape"], f"{r['int8_ms']:.3f}", f"{r[base_key]:.3f}", f"{r['speedup']:.2f}x")
    Console().print(table)
    if args.out:
        payload = {"rows": rows, "machine": machine(args.device), "command": " ".join(sys.argv)}
        atomic_write_json(Path(args.out), payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
