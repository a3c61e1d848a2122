"""Prefill and decode speed of the native CPU path (issue 17) against the PyTorch quantized reference and ONNX
Runtime int8, one thread, at the mamba-130m shape (24 layers, d_model 768, vocabulary 50280; random weights:
speed does not depend on their values, see cpu_decode.py).

    python benchmarks/native_decode.py --out benchmarks/results/native_decode.json

The model is calibrated with Quamba on random token ids (twice: the paper's fp32 head, and --int8-head),
a --prompt-len prompt is prefilled by the reference, and then each system decodes --gen-len tokens one at
a time from that state (greedy: each next id is the argmax of the logits). A row's decode tok/s is
gen-len / (time of those steps), the median over --repeats. A row's prompt tok/s is --prefill-len / (time of
one prefill of a --prefill-len prompt from zero states, to the last position's logits), the median over
--prefill-repeats (after a warm-up): the time to first token of that prompt. Systems:

- native-<head>: quamba_edge.kernels.native.NativeDecoder, one C++ call a token (decode) or a prompt (prefill,
  layer-major int8 GEMMs over the prompt), on the path QUAMBA_EDGE_ISA or the CPU picks (`isa` column; every
  path the CPU runs with --all-isas), head fp32 / fp16 / int8;
- pytorch-int8: QuantizedMambaLM.step, the reference (eager int8 emulation);
- ort-int8, ort-int8-head: the engines `quamba-edge build-engine` writes (--no-ort skips the build, minutes).

Results also report the bytes one decode step reads (packed int8 layers + head) and the bandwidth that
implies, so the numbers can be read against the machine's memory speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cpu_decode import MAMBA_130M_SHAPE, mamba_130m_shape
from rich.console import Console
from rich.table import Table

from quamba_edge.bench.report import machine
from quamba_edge.io import atomic_write_json
from quamba_edge.kernels import native
from quamba_edge.quant.quamba import calibrate
from quamba_edge.quant.recipes import make_recipe


def quantize(model, samples: int, seq_len: int, int8_head: bool):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, MAMBA_130M_SHAPE.vocab_size, (min(4, samples - i), seq_len), generator=gen)
               for i in range(0, samples, 4)]
    return calibrate(model, batches, make_recipe("quamba", int8_head=int8_head))


def time_decode(step, first_id: int, gen_len: int, repeats: int, restart) -> list[float]:
    """Seconds for gen_len greedy steps, per repeat; step(id) -> logits (1, vocab) torch or numpy."""
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        restart()
        token = first_id
        t0 = time.perf_counter()
        for _ in range(gen_len):
            token = int(np.argmax(np.asarray(step(token)).reshape(-1)))
        times.append(time.perf_counter() - t0)
    return times[1:]


def time_prefill(prefill, repeats: int) -> list[float]:
    """Seconds for one prefill() (a whole prompt to its last logits), per repeat after a warm-up."""
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        prefill()
        times.append(time.perf_counter() - t0)
    return times[1:]


def add_prefill(r: dict, times: list[float], length: int) -> dict:
    med = statistics.median(times)
    r.update(prefill_tok_s=length / med, ttft_ms=1e3 * med, prefill_repeats_s=times)
    return r


def native_rows(qmodel, conv0, ssm0, heads, isas, first_id, args, long_prompt) -> list[dict]:
    rows = []
    for isa in isas:
        for head in heads:
            dec = native.NativeDecoder(qmodel, head=head, isa=isa)
            ids = torch.zeros(1, dtype=torch.int64)

            def step(token: int, dec=dec, ids=ids):
                ids[0] = token
                return dec.step(ids)

            times = time_decode(step, first_id, args.gen_len, args.repeats, lambda d=dec: d.load_state(conv0, ssm0))
            head_bytes = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[head] * qmodel.cfg.vocab_size * qmodel.cfg.d_model
            layer_bytes = dec.packed_bytes - (head_bytes if head != "fp32" else 0)
            r = row(f"native-{head}", isa, times, args.gen_len, layer_bytes + head_bytes)
            rows.append(add_prefill(r, time_prefill(lambda d=dec: d.prefill(long_prompt), args.prefill_repeats),
                                    long_prompt.shape[1]))
    return rows


def row(system: str, isa: str, times: list[float], gen_len: int, step_bytes: int | None) -> dict:
    med = statistics.median(times)
    r = {"system": system, "isa": isa, "decode_tok_s": gen_len / med, "tpot_ms": 1e3 * med / gen_len,
         "repeats_s": times}
    if step_bytes:
        r["step_bytes"] = step_bytes
        r["achieved_gb_s"] = step_bytes / (med / gen_len) / 1e9
    return r


def pytorch_row(qmodel, conv0, ssm0, first_id, args, long_prompt) -> dict:
    state = {}

    def restart():
        state["conv"], state["ssm"] = conv0.clone(), ssm0.clone()

    @torch.no_grad()
    def step(token: int):
        logits, state["conv"], state["ssm"] = qmodel.step(torch.tensor([[token]]), state["conv"], state["ssm"])
        return logits[:, -1]

    label = "pytorch-int8" + ("-head" if qmodel.head is not None else "")
    r = row(label, "torch", time_decode(step, first_id, args.gen_len, args.repeats, restart), args.gen_len, None)

    @torch.no_grad()
    def prefill():
        return qmodel.step(long_prompt)[0][:, -1]

    return add_prefill(r, time_prefill(prefill, args.prefill_repeats), long_prompt.shape[1])


def ort_rows(qmodels: dict, calibs: dict, prompt: torch.Tensor, first_id: int, args, console,
             long_prompt: torch.Tensor) -> list[dict]:
    from quamba_edge.artifact import save_artifact
    from quamba_edge.bench.systems import open_system
    from quamba_edge.engine import build_engine

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, qmodel in qmodels.items():
            art = save_artifact(qmodel, Path(tmp) / label, family="mamba", recipe=qmodel.recipe,
                                source={"model": "mamba-130m-shape"}, calibration=None, scales=calibs[label].scales)
            eng = Path(tmp) / f"engine-{label}"
            console.print(f"  building the ORT engine for {label}")
            build_engine(art, eng, threads=1, max_prompt=max(args.prompt_len, args.prefill_len))
            system = open_system(str(eng), device="cpu", threads=1)
            out0 = system["prefill"].infer({"input_ids": prompt.numpy()})
            state: dict = {}

            def restart(out0=out0, state=state):
                state["conv"], state["ssm"] = out0["conv_state"], out0["ssm_state"]

            def step(token: int, system=system, state=state):
                out = system["decode"].infer({"input_ids": np.array([[token]], dtype=np.int64),
                                              "conv_state_in": state["conv"], "ssm_state_in": state["ssm"]})
                state["conv"], state["ssm"] = out["conv_state"], out["ssm_state"]
                return out["logits"]

            name = "ort-int8" + ("-head" if qmodel.head is not None else "")
            r = row(name, "ort", time_decode(step, first_id, args.gen_len, args.repeats, restart), args.gen_len, None)
            feeds = {"input_ids": long_prompt.numpy()}
            rows.append(add_prefill(r, time_prefill(lambda s=system, f=feeds: s["prefill"].infer(f),
                                                    args.prefill_repeats), long_prompt.shape[1]))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prefill-len", type=int, default=512, help="prompt tokens of the timed prefill (TTFT)")
    ap.add_argument("--prefill-repeats", type=int, default=3)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seq-len", type=int, default=64)
    ap.add_argument("--all-isas", action="store_true", help="time every path this CPU runs, not only the chosen one")
    ap.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime engines (their build takes minutes)")
    ap.add_argument("--no-pytorch", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    console = Console(width=150)
    model = mamba_130m_shape()
    console.print("calibrating the mamba-130m shape (fp32 head and int8 head)")
    (q, c), (q8, c8) = (quantize(model, args.calib_samples, args.calib_seq_len, h) for h in (False, True))
    prompt = torch.randint(0, MAMBA_130M_SHAPE.vocab_size, (1, args.prompt_len),
                           generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, conv0, ssm0 = q.step(prompt)
    first_id = int(logits[0, -1].argmax())
    long_prompt = torch.randint(0, MAMBA_130M_SHAPE.vocab_size, (1, args.prefill_len),
                                generator=torch.Generator().manual_seed(2))
    isas = native.supported_isas() if args.all_isas else [native.isa()]
    console.print(f"native decoder on {', '.join(isas)} (this CPU runs {', '.join(native.supported_isas())})")
    rows = native_rows(q, conv0, ssm0, ("fp32", "fp16"), isas, first_id, args, long_prompt)
    rows += native_rows(q8, conv0, ssm0, ("int8",), isas, first_id, args, long_prompt)
    if not args.no_pytorch:
        console.print("timing the PyTorch reference")
        rows += [pytorch_row(m, conv0, ssm0, first_id, args, long_prompt) for m in (q, q8)]
    if not args.no_ort:
        rows += ort_rows({"quamba": q, "quamba-int8-head": q8}, {"quamba": c, "quamba-int8-head": c8}, prompt,
                         first_id, args, console, long_prompt)
    ref = next((r for r in rows if r["system"] == "pytorch-int8"), None)
    for r in rows:
        if ref:
            r["decode_vs_pytorch_int8"] = r["decode_tok_s"] / ref["decode_tok_s"]
            r["prefill_vs_pytorch_int8"] = r["prefill_tok_s"] / ref["prefill_tok_s"]
    table = Table(title=f"one thread, mamba-130m shape: prefill of {args.prefill_len} tokens (median of "
                        f"{args.prefill_repeats}); decode {args.gen_len} tokens after {args.prompt_len} "
                        f"(median of {args.repeats})")
    for col in ("system", "isa", "prompt tok/s", "TTFT ms", "decode tok/s", "TPOT ms", "GB/s", "vs pytorch-int8"):
        table.add_column(col, justify="left" if col in ("system", "isa") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["system"], r["isa"], f"{r['prefill_tok_s']:.1f}", f"{r['ttft_ms']:.0f}",
                      f"{r['decode_tok_s']:.1f}", f"{r['tpot_ms']:.2f}",
                      f"{r['achieved_gb_s']:.1f}" if "achieved_gb_s" in r else "",
                      f"{r['prefill_vs_pytorch_int8']:.2f}x / {r['decode_vs_pytorch_int8']:.2f}x"
                      if "decode_vs_pytorch_int8" in r else "")
    console.print(table)
    if args.out:
        atomic_write_json(args.out, {"command": "python " + " ".join(sys.argv), "machine": machine("cpu"),
                                     "model": "mamba-130m-shape", "prompt_len": args.prompt_len,
                                     "gen_len": args.gen_len, "repeats": args.repeats,
                                     "prefill_len": args.prefill_len, "prefill_repeats": args.prefill_repeats,
                                     "rows": rows,
                                     "date": time.strftime("%Y-%m-%d")})
        console.print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
