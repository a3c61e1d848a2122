"""How much faster can int8 be than fp32 on this CPU, one thread? The ceiling for issue 7's "int8 >= 2x fp32".

    python benchmarks/cpu_int8_ceiling.py --out benchmarks/results/cpu_int8_ceiling.json

Times the matrix products a wav2vec 2.0 BASE keyword spotter spends its time in (a one-second clip: 49
frames through the transformer's linears, and the conv feature encoder's layers as the im2col products
that ONNX Runtime and FBGEMM run them as), each in isolation, in every int8 kernel family these libraries
offer here, side by side in one run:

* ONNX Runtime fp32 MatMul (MLAS SGEMM): the baseline.
* ONNX Runtime int8, u8 activations x s8 weights, the fast path. On x86 without VNNI it multiplies with
  vpmaddubsw, whose 16-bit pair sums saturate: not exact, which is why our sessions do not use it.
* ONNX Runtime int8 with session.x64quantprecision (the weights shifted to u8: exact), as our sessions run.
* PyTorch fp32 Linear and FBGEMM's static int8 Linear (u8 x s8 with the same saturation caveat).

The MAC-weighted sum over the model's shapes is the best whole-model int8/fp32 ratio these kernels allow
here, before any of the float work (norms, GELU, softmax, quantize/dequantize) is counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from quamba_edge.bench.report import machine
from quamba_edge.io import atomic_write_json

# (name, M, K, N, how many per clip) for wav2vec 2.0 BASE on a 1 s clip at 16 kHz: conv layers as im2col
# products (frames x (c_in * kernel) x c_out), then the transformer's linears at 49 frames. The first conv
# (1 input channel, 3199 x 10 x 512, 0.2% of the MACs) is left out; the two k=2 convs (99 and 49 frames)
# are timed as two products at their mean length.
BASE_SHAPES = (
    ("conv1 (k3 s2)", 1599, 1536, 512, 1),
    ("conv2 (k3 s2)", 799, 1536, 512, 1),
    ("conv3 (k3 s2)", 399, 1536, 512, 1),
    ("conv4 (k3 s2)", 199, 1536, 512, 1),
    ("conv5-6 (k2 s2)", 74, 1024, 512, 2),
    ("feature_proj", 49, 512, 768, 1),
    ("q/k/v/out", 49, 768, 768, 48),
    ("fc1", 49, 768, 3072, 12),
    ("fc2", 49, 3072, 768, 12),
)


def _graph(int8: bool, m: int, k: int, n: int) -> bytes:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    if not int8:
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    else:  # the Q/DQ pattern our exporter writes; ORT fuses it into MatMulIntegerToFloat
        inits = [numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "wq"),
                 numpy_helper.from_array(np.array(0.05, np.float32), "sx"),
                 numpy_helper.from_array(np.array(128, np.uint8), "zx"),
                 numpy_helper.from_array(np.array(0.001, np.float32), "sw"),
                 numpy_helper.from_array(np.array(0, np.int8), "zw")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"]),
                 helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "gemm", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def ort_runner(int8: bool, exact: bool, m: int, k: int, n: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if int8:
        opts.add_session_config_entry("session.qdqisint8allowed", "1")
        if exact:
            opts.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(_graph(int8, m, k, n), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    return lambda: session.run(None, {"x": x})


def torch_runners(m: int, k: int, n: int) -> dict:
    import warnings

    import torch.ao.nn.quantized as nnq

    x = torch.randn(m, k)
    linear = torch.nn.Linear(k, n)
    with warnings.catch_warnings():  # quantized tensors are deprecated in PyTorch, still the FBGEMM entry point
        warnings.simplefilter("ignore")
        torch.backends.quantized.engine = "fbgemm"
        qlinear = nnq.Linear(k, n)
        qlinear.set_weight_bias(torch.quantize_per_tensor(torch.randn(n, k), 0.01, 0, torch.qint8), torch.zeros(n))
        qlinear.scale, qlinear.zero_point = 0.05, 128
        xq = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)

    def fp32() -> None:
        with torch.no_grad():
            linear(x)

    return {"torch fp32": fp32, "torch fbgemm int8 (u8s8)": lambda: qlinear(xq)}


SYSTEMS = ("ort fp32", "ort int8 u8s8 (saturating)", "ort int8 exact (ours)", "torch fp32", "torch fbgemm int8 (u8s8)")


def cpu_facts() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines()[:30] if ":" in line)
    flags = set(fields.get("flags\t\t", "").split())
    return {"model_name": fields.get("model name\t", "").strip(), "family": fields.get("cpu family\t", "").strip(),
            "model": fields.get("model\t\t", "").strip(),
            "vnni": sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name, m, k, n, count in BASE_SHAPES:
        runners = {"ort fp32": ort_runner(False, False, m, k, n),
                   "ort int8 u8s8 (saturating)": ort_runner(True, False, m, k, n),
                   "ort int8 exact (ours)": ort_runner(True, True, m, k, n), **torch_runners(m, k, n)}
        ms = {s: _median_ms(runners[s], args.repeats) for s in SYSTEMS}
        rows.append({"layer": name, "m": m, "k": k, "n": n, "count": count, "ms": ms})
        print(f"{name:16s} " + "  ".join(f"{s}: {ms[s]:.2f}" for s in SYSTEMS), flush=True)
    total = {s: sum(r["ms"][s] * r["count"] for r in rows) for s in SYSTEMS}
    table = Table(title="one thread, ms per product (median); speed-up vs ONNX Runtime fp32 in brackets")
    for col in ("layer", "M x K x N", "x / clip", *SYSTEMS):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in [*rows, {"layer": "BASE clip total", "m": "", "k": "", "n": "", "count": "", "ms": total}]:
        base = r["ms"]["ort fp32"]
        shape = f"{r['m']}x{r['k']}x{r['n']}" if r["m"] != "" else ""
        table.add_row(r["layer"], shape, str(r["count"]),
                      *(f"{r['ms'][s]:.2f} ({base / r['ms'][s]:.2f}x)" for s in SYSTEMS))
    Console(width=200).print(table)
    cpu = cpu_facts()
    best = max(total["ort fp32"] / total[s] for s in SYSTEMS if "int8" in s)
    print(f"CPU: {cpu['model_name']} (family {cpu['family']} model {cpu['model']}), VNNI: {cpu['vnni'] or 'none'}; "
          f"best int8 speed-up over ORT fp32 on the BASE products: {best:.2f}x")
    result = {"rows": rows, "total_ms_per_clip": total, "best_int8_speedup": best, "cpu": cpu,
              "machine": machine("cpu"), "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d")}
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
