"""The on-device benchmark behind benchmarks/jetson.sh: fp16 against Quamba int8 TensorRT engines on the
Jetson it runs on, with board power, next to the roofline estimate for the same board; llama.cpp too
when it is installed. One JSON file holds everything, so the first real Orin numbers can be committed
to benchmarks/results/ as they come.

    bash benchmarks/jetson.sh                    # on the Jetson, inside the image of Dockerfile.jetson
    python benchmarks/jetson_run.py --backend ort --device cpu --target cpu ...   # the same steps on a CPU

Every step is the user's own command (`quamba-edge calibrate / build-engine / bench`), run as a
subprocess and recorded with its exit status, so a failed step is in the file rather than lost. The
steps: calibrate the model with the Quamba recipe; build an fp engine (fp16 for TensorRT, fp32 for
ONNX Runtime on a CPU) and the int8 engine; bench both with one loop (and --power on a Jetson); the
roofline estimate for the same workload; llama-bench on a gguf file if both are given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from quamba_edge import __version__
from quamba_edge.bench.devices import this_jetson
from quamba_edge.bench.jetson import jetson_info
from quamba_edge.bench.power import system_root
from quamba_edge.io import atomic_write_json


def run_step(log: list[dict], name: str, argv: list[str], timeout_s: int = 3600) -> bool:
    """Run one command, keep its status and the tail of its output in the log; True when it succeeded."""
    start = time.perf_counter()
    print(f"[jetson-bench] {name}: {' '.join(argv)}", flush=True)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        status, tail = proc.returncode, (proc.stdout + proc.stderr)[-4000:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        status, tail = -1, str(exc)
    log.append({"step": name, "argv": argv, "returncode": status, "seconds": time.perf_counter() - start,
                "output_tail": tail})
    print(tail if status else f"[jetson-bench] {name}: ok ({log[-1]['seconds']:.1f} s)", flush=True)
    return status == 0


def llama_bench(gguf: Path | None, prompt_len: int, gen_len: int, log: list[dict]) -> dict:
    """llama.cpp's own benchmark on the same workload, when llama-bench and a gguf file are both given."""
    tool = shutil.which("llama-bench")
    if tool is None or gguf is None:
        return {"skipped": "llama-bench not on PATH" if tool is None else "no --llama-gguf given"}
    out = subprocess.run([tool, "-m", str(gguf), "-p", str(prompt_len), "-n", str(gen_len), "-o", "json"],
                         capture_output=True, text=True)
    log.append({"step": "llama-bench", "argv": [tool, "-m", str(gguf)], "returncode": out.returncode,
                "output_tail": out.stderr[-2000:]})
    if out.returncode:
        return {"failed": out.stderr[-2000:]}
    return {"gguf": str(gguf), "results": json.loads(out.stdout)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="the fp model: `default` (bundled) or a checkpoint")
    ap.add_argument("--backend", default="tensorrt", choices=("tensorrt", "ort"))
    ap.add_argument("--device", default="orin", help="bench --device: orin on the Jetson, cpu for a dry run")
    ap.add_argument("--target", default=None, help="build-engine --target (default: this Jetson's profile)")
    ap.add_argument("--calib-data", default="default", help="calibrate --data")
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=512, help="calibration tokens per sequence")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--power", action=argparse.BooleanOptionalAction, default=None,
                    help="sample board power (default: on a Jetson)")
    ap.add_argument("--llama-gguf", type=Path, default=None, help="a gguf of the same model for llama-bench")
    ap.add_argument("--work", type=Path, default=Path("out/jetson"))
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default: benchmarks/results/jetson-"
                                                           "<profile>-<date>.json)")
    args = ap.parse_args(argv)

    info = jetson_info(system_root())
    profile = this_jetson()
    target = args.target or (profile.name if profile else "cpu")
    power = profile is not None if args.power is None else args.power
    fp_precision = "fp16" if args.backend == "tensorrt" else "fp32"
    cli = [sys.executable, "-m", "quamba_edge.cli"]
    work = args.work
    log: list[dict] = []

    artifact, fp_engine, int8_engine = work / "quamba", work / f"engine-{fp_precision}", work / "engine-int8"
    built = run_step(log, "calibrate", cli + ["calibrate", "--model", args.model, "--recipe", "quamba",
                                              "--data", args.calib_data, "--samples", str(args.calib_samples),
                                              "--seq-len", str(args.seq_len), "--out", str(artifact)])
    engines = {}
    max_prompt = str(max(args.prompt_len, 64))
    for precision, source, directory in ((fp_precision, args.model, fp_engine), ("int8", str(artifact), int8_engine)):
        if precision == "int8" and not built:
            continue
        extra = ["--precision", precision] if precision != "int8" else []
        if run_step(log, f"build-engine {precision}", cli + [
                "build-engine", source, "--backend", args.backend, "--target", target, "--out", str(directory),
                "--max-prompt", max_prompt, "--max-batch", "1", *extra]):
            engines[precision] = json.loads((directory / "build.json").read_text())

    bench_json = work / "bench.json"
    bench = {}
    dirs = [str(d) for p, d in ((fp_precision, fp_engine), ("int8", int8_engine)) if p in engines]
    if dirs and run_step(log, "bench", cli + ["bench", *dirs, "--device", args.device, "--prompt-len",
                                              str(args.prompt_len), "--gen-len", str(args.gen_len), "--repeats",
                                              str(args.repeats), "--json", str(bench_json)]
                         + (["--power"] if power else [])):
        bench = json.loads(bench_json.read_text())

    estimate_json = work / "estimate.json"
    estimate = {}
    est_profile = profile.name if profile else "orin-nano-8gb"
    if run_step(log, "estimate", cli + ["bench", args.model, "mamba-2.8b", "--device", est_profile, "--estimate",
                                        "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len),
                                        "--json", str(estimate_json)]):
        estimate = json.loads(estimate_json.read_text())

    rows = bench.get("results", [])
    speedup = None
    if len(rows) == 2:
        speedup = rows[0]["tpot_ms"] / rows[1]["tpot_ms"]
    result = {
        "schema": 1, "kind": "measurement" if profile else "dry run off a Jetson (not an Orin measurement)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quamba_edge": __version__,
        "jetson": asdict(info), "profile": profile.to_dict() if profile else None,
        "backend": args.backend, "device": args.device, "target": target,
        "workload": {"model": args.model, "prompt_len": args.prompt_len, "gen_len": args.gen_len, "batch": 1,
                     "repeats": args.repeats},
        "engines": {p: {k: b.get(k) for k in ("backend", "precision", "target", "versions", "parity", "plugins")}
                    for p, b in engines.items()},
        "bench": bench, "int8_decode_speedup_vs_fp": speedup, "estimate": estimate,
        "llama_cpp": llama_bench(args.llama_gguf, args.prompt_len, args.gen_len, log),
        "steps": log, "ok": all(step["returncode"] == 0 for step in log),
        "environment": {k: os.environ.get(k) for k in ("QUAMBA_EDGE_KERNELS", "QUAMBA_EDGE_TRT_PLUGINS")},
    }
    out = args.out or Path("benchmarks/results") / f"jetson-{est_profile if profile else 'dry-run'}-" \
                                                   f"{time.strftime('%Y%m%d')}.json"
    atomic_write_json(out, result)
    print(f"[jetson-bench] wrote {out}" + (f"; int8 vs {fp_precision} decode: {speedup:.2f}x" if speedup else ""))
    if not result["ok"]:
        failed = [s["step"] for s in log if s["returncode"]]
        print(f"[jetson-bench] failed steps: {', '.join(failed)} (their output is in the JSON)", file=sys.stderr)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
