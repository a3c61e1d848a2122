"""TensorRT's own ONNX parser on an int8 Mamba artifact's graphs at full size (issue 16: the Mamba-2.8B graphs,
with their weights in ONNX external data, must parse). Exports the TensorRT form of the prefill and decode
graphs (symmetric int8 Q/DQ, weights in one shared `weights.data`), then parses each from its path with
`tensorrt` or, where that is missing (this machine, CI), `tensorrt_rtx`, whose parser needs no GPU; with
--build, also builds a plan (tensorrt_rtx builds without a GPU; slow at 2.8b). Peak RSS and seconds per stage.

    python benchmarks/trt_parse.py .cache/scale/mamba-2.8b/int8 --out benchmarks/results/trt_parse.json
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import onnx

from quamba_edge.backends.tensorrt import import_tensorrt, parse_onnx
from quamba_edge.bench.report import machine
from quamba_edge.export.graph import WeightFile
from quamba_edge.families import mamba
from quamba_edge.families.registry import load
from quamba_edge.io import atomic_write_json


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--build", action="store_true", help="also build a plan per graph (batch 1, prompt <= 64)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    trt = import_tensorrt(allow_rtx=True)
    loaded = load(args.artifact)
    model, cfg = loaded.model.eval(), loaded.cfg
    result = {"command": "python " + " ".join(sys.argv), "machine": machine("cpu"), "artifact": str(args.artifact),
              "model_config": cfg.to_dict(), "tensorrt_module": trt.__name__, "tensorrt_version": trt.__version__,
              "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        weights = WeightFile(Path(tmp) / "weights.data")
        paths = {}
        for graph in mamba.graphs:
            start = time.perf_counter()
            proto = mamba.export(model, graph, "int8", "int8", weights=weights)
            paths[graph] = Path(tmp) / f"{graph}.onnx"
            onnx.save(proto, str(paths[graph]))
            del proto
            result["rows"].append({"graph": graph, "stage": "export", "seconds": round(time.perf_counter() - start, 1),
                                   "graph_mb": paths[graph].stat().st_size / 2**20, "peak_rss_mb": peak_mb()})
        weights.close()
        result["weights_data_mb"] = (Path(tmp) / "weights.data").stat().st_size / 2**20
        for graph, path in paths.items():
            start = time.perf_counter()
            builder, network, _parser, _logger = parse_onnx(trt, path)
            row = {"graph": graph, "stage": "parse", "seconds": round(time.perf_counter() - start, 1),
                   "layers": network.num_layers, "inputs": network.num_inputs, "outputs": network.num_outputs,
                   "peak_rss_mb": peak_mb(), "ok": True}
            if args.build:
                config = builder.create_builder_config()
                profile = builder.create_optimization_profile()
                limits = mamba.limits(cfg, max_batch=1, max_prompt=64, opt_prompt=16)
                for name, (lo, opt, hi) in mamba.profile(graph, cfg, limits).items():
                    profile.set_shape(name, lo, opt, hi)
                config.add_optimization_profile(profile)
                start = time.perf_counter()
                plan = builder.build_serialized_network(network, config)
                row.update(build_seconds=round(time.perf_counter() - start, 1), built=plan is not None,
                           plan_mb=plan.nbytes / 2**20 if plan is not None else None, peak_rss_mb=peak_mb())
            result["rows"].append(row)
            print(row, flush=True)
            del builder, network
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
