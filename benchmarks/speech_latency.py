"""Keyword-spotter latency per one-second clip, batch 1, one thread: PyTorch and ONNX Runtime, fp32 and int8,
at the tiny shape we train here and at the wav2vec 2.0 BASE shape, side by side in one run.

    python benchmarks/speech_latency.py --out benchmarks/results/speech_latency.json

Weights do not change the time, so the BASE row uses random weights (no BASE checkpoint is reachable
here); the tiny row uses a fine-tuned model when --kws DIR is given. int8 is the W8A8 artifact
(`quamba-edge calibrate`, synthetic calibration audio), its engine built by `quamba-edge build-engine`
with the parity check. Every system is timed by `quamba-edge bench`'s loop (median of --repeats after
two warm-ups); the real-time factor is compute time / audio time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from quamba_edge import pipeline
from quamba_edge.bench.report import machine, measure_system
from quamba_edge.checkpoints.wav2vec2 import save_kws
from quamba_edge.data.speech import SAMPLE_RATE, write_wav
from quamba_edge.engine import build_engine
from quamba_edge.io import atomic_write_json
from quamba_edge.models.kws import KeywordSpotter, KwsConfig
from quamba_edge.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder

LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "hello", "goodbye",
          "record", "pause", "cancelled", "star")


def random_kws(cfg: Wav2Vec2Config, seed: int = 0) -> KeywordSpotter:
    torch.manual_seed(seed)
    return KeywordSpotter(Wav2Vec2Encoder(cfg), KwsConfig(labels=LABELS, pool="adapool")).eval()


def systems_for(name: str, checkpoint: Path, work: Path, calib_dir: Path) -> list[str]:
    """PyTorch fp32 and int8, ONNX Runtime fp32 and int8 for one checkpoint."""
    artifact = work / f"{name}-int8"
    pipeline.calibrate(str(checkpoint), "naive", str(calib_dir), 16, 0,
                  artifact, batch_size=4)
    engines = []
    for src, tag in ((checkpoint, "fp32"), (artifact, "int8")):
        out = work / f"{name}-engine-{tag}"
        build_engine(str(src), out, backend="ort", target="cpu", threads=1, max_clip_s=2.0)
        engines.append(str(out))
    return [str(checkpoint), str(artifact), *engines]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kws", type=Path, default=None, help="a fine-tuned tiny KWS checkpoint (default: random)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--clip-s", type=float, default=1.0)
    ap.add_argument("--shapes", nargs="+", default=["tiny", "base"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calib = work / "calib"
        calib.mkdir()
        gen = torch.Generator().manual_seed(0)
        for i in range(8):  # speech-like calibration audio: noise with a syllable-rate envelope
            t = torch.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
            audio = 0.1 * torch.randn(3 * SAMPLE_RATE, generator=gen) * (0.5 + 0.5 * torch.sin(2 * torch.pi * 4 * t))
            write_wav(calib / f"{i}.wav", audio.numpy())
        for shape in args.shapes:
            ckpt = work / f"{shape}-fp32"
            if shape == "tiny" and args.kws is not None:
                ckpt = args.kws
            else:
                cfg = Wav2Vec2Config.tiny() if shape == "tiny" else Wav2Vec2Config.BASE
                save_kws(random_kws(cfg), ckpt)
            for spec in systems_for(shape, ckpt, work, calib):
                row, _, _ = measure_system(spec, "cpu", 1, args.repeats, batch=1, clip_s=args.clip_s)
                row["shape"] = shape
                rows.append(row)
                print(f"{shape:5s} {row['system']:28s} {row['ms_per_clip']:9.2f} ms  RTF {row['rtf']:.4f}", flush=True)
    table = Table(title=f"keyword spotter, one {args.clip_s:g} s clip, batch 1, 1 thread, median of {args.repeats}")
    for col in ("shape", "system", "ms / clip", "real-time factor", "vs PyTorch fp32"):
        table.add_column(col, justify="left" if col in ("shape", "system") else "right")
    for r in rows:
        base = next(b for b in rows if b["shape"] == r["shape"] and b["backend"] == "pytorch"
                    and b["precision"] == "fp32")
        table.add_row(r["shape"], r["system"], f"{r['ms_per_clip']:.2f}", f"{r['rtf']:.4f}",
                      f"{base['ms_per_clip'] / r['ms_per_clip']:.2f}x")
    Console(width=120).print(table)
    if args.out:
        atomic_write_json(args.out, {"rows": rows, "machine": machine("cpu"), "command": "python " + " ".join(sys.argv),
                                     "date": time.strftime("%Y-%m-%d")})
    return rows


if __name__ == "__main__":
    main()
