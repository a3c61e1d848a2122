"""TensorRT's own ONNX parser on an int8 artifact's graphs at full size (issue 16: the Mamba-2.8B graphs,
with their weights in ONNX external data, must parse), of any family: Mamba's prefill and decode, a keyword
spotter's or a set model's one graph. Exports the TensorRT form of the family's graphs (symmetric int8 Q/DQ,
weights in one shared `weights.data`), then parses each from its path with `tensorrt` or, where that is missing
(this machine, CI), `tensorrt_rtx`, whose parser needs no GPU; with --build, also builds a plan with the
family's own optimization profile at small limits (tensorrt_rtx builds without a GPU; slow at 2.8b). Peak RSS
and seconds per stage.

    python benchmarks/trt_parse.py .cache/scale/mamba-2.8b/int8 --out benchmarks/results/trt_parse.json
    python benchmarks/trt_parse.py KWS_OR_SET_ARTIFACT --build
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
from quamba_edge.families.registry import load
from quamba_edge.io import atomic_write_json

# --build's profile: batch 1 and short inputs, whichever family (each takes its own options and ignores the rest)
BUILD_LIMITS = {"max_batch": 1, "max_prompt": 64, "opt_prompt": 16, "max_clip_s": 2.0, "max_set_size": 128,
                "opt_set_size": 32}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--build", action="store_true", help="also build a plan per graph with the family's profile "
                    "(batch 1; prompts <= 64 tokens, clips <= 2 s, sets <= 128 elements)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    trt = import_tensorrt(allow_rtx=True)
    loaded = load(args.artifact)
    family, model, cfg = loaded.family, loaded.model.eval(), loaded.cfg
    precision = "int8" if loaded.recipe.quantize else "fp32"
    result = {"command": "python " + " ".join(sys.argv), "machine": machine("cpu"), "artifact": str(args.artifact),
              "family": family.name, "precision": precision, "model_config": cfg.to_dict(),
              "tensorrt_module": trt.__name__, "tensorrt_version": trt.__version__, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        weights = WeightFile(Path(tmp) / "weights.data")
        paths = {}
        for graph in family.graphs:
            start = time.perf_counter()
            proto = family.export(model, graph, precision, "int8", weights=weights)  # "int8": TensorRT's coding
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
                shapes = family.profile(graph, cfg, family.limits(cfg, **BUILD_LIMITS))
                row["shapes"] = {name: [list(s) for s in triple] for name, triple in shapes.items()}
                for name, (lo, opt, hi) in shapes.items():
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
