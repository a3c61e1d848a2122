"""bench's outputs: measurements and estimates as rich tables, JSON with the machine, a PNG."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

from rich.table import Table

from quamba_edge import __version__
from quamba_edge.bench.devices import DeviceProfile, jetson_model, this_jetson
from quamba_edge.bench.power import PowerSampler
from quamba_edge.bench.roofline import estimate
from quamba_edge.bench.runner import SetRunner, SpeechRunner, measure, measure_sets, measure_speech
from quamba_edge.bench.systems import open_system, precision_and_config
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write_json


def on_jetson(device: str) -> bool:
    profile = this_jetson()
    return profile is not None and (device == "orin" or device == profile.name)


def machine(device: str) -> dict:
    import onnxruntime
    import torch

    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {"device": device, "cpu": cpu or platform.processor(), "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "quamba_edge": __version__, "jetson": jetson_model(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def measure_system(spec: str, device: str, threads: int, batch: int, prompt_len: int, gen_len: int,
                   repeats: int, on_repeat=None, kernels: bool = False, set_size: int = 128,
                   power: bool = False, clip_s: float = 1.0) -> dict:
    runner = open_system(spec, device=device, threads=threads, prompt_len=prompt_len, batch=batch, kernels=kernels)
    sampler = PowerSampler() if power else None
    with sampler or contextlib.nullcontext():
        if isinstance(runner, SetRunner):
            row = measure_sets(runner, batch=batch, set_size=set_size, repeats=repeats, threads=threads,
                               progress=on_repeat)
        elif isinstance(runner, SpeechRunner):
            row = measure_speech(runner, batch=batch, clip_s=clip_s, repeats=repeats, threads=threads,
                                 progress=on_repeat)
        else:
            row = measure(runner, batch=batch, prompt_len=prompt_len, gen_len=gen_len, repeats=repeats,
                          threads=threads, progress=on_repeat).to_dict()
    if sampler is not None:
        # Energy per unit of work at steady state: average board power x time per generated token (per set).
        watts = sampler.average_w()
        row.update(avg_power_w=watts, energy_j=sampler.energy_j(), power_samples=len(sampler.samples))
        if "tpot_ms" in row:
            row["j_per_token"] = watts * row["tpot_ms"] / 1e3 / batch
        elif "ms_per_clip" in row:
            row["j_per_clip"] = watts * row["ms_per_clip"] / 1e3
        else:
            row["j_per_set"] = watts * row["ms_per_set"] / 1e3
    row["source"] = spec
    return row


def estimates(systems: list[str], profile: DeviceProfile, batch: int, prompt_len: int, gen_len: int) -> list[dict]:
    """fp16 and int8 estimates for each system's model shape: a roofline compares precisions, so both are
    given whatever precision the system itself was built in (`deployed` marks that one)."""
    rows = []
    for spec in systems:
        cfg, deployed = precision_and_config(spec)
        pair = {p: estimate(cfg, p, profile, batch=batch, prompt_len=prompt_len, gen_len=gen_len).to_dict()
                for p in ("fp16", "int8")}
        for precision, est in pair.items():
            est.update(source=spec, deployed=precision == deployed,
                       speedup_vs_fp16=pair["fp16"]["total_s"] / est["total_s"])
            rows.append(est)
    return rows


def print_set_measurements(console, rows: list[dict]) -> None:
    first = rows[0]
    table = Table(title=f"set models: batch {first['batch']} sets of {first['set_size']}, {first['threads']} "
                        f"thread(s), median of {first['repeats']}")
    power = all("avg_power_w" in r for r in rows)
    cols = ["system", "ms / batch (range)", "ms / set", "sets/s", "RSS MiB", "vs first"]
    for col in cols + (["board W", "J/set"] if power else []):
        table.add_column(col, justify="right" if col != "system" else "left", no_wrap=True)
    for r in rows:
        lo, hi = r["ms_range"]
        cells = [r["system"], f"{r['ms_per_batch']:.2f} ({lo:.2f}-{hi:.2f})", f"{r['ms_per_set']:.3f}",
                 f"{r['sets_per_s']:.0f}", f"{r['rss_mb']:.0f}", f"{r['sets_per_s'] / first['sets_per_s']:.2f}x"]
        if power:
            cells += [f"{r['avg_power_w']:.2f}", f"{r['j_per_set']:.5f}"]
        table.add_row(*cells)
    console.print(table)


def print_speech_measurements(console, rows: list[dict]) -> None:
    first = rows[0]
    table = Table(title=f"speech models: batch {first['batch']} clips of {first['clip_s']:g} s, {first['threads']} "
                        f"thread(s), median of {first['repeats']}")
    power = all("avg_power_w" in r for r in rows)
    cols = ["system", "ms / clip (range)", "real-time factor", "RSS MiB", "vs first"]
    for col in cols + (["board W", "J/clip"] if power else []):
        table.add_column(col, justify="right" if col != "system" else "left", no_wrap=True)
    for r in rows:
        lo, hi = r["ms_range"]
        cells = [r["system"], f"{r['ms_per_clip']:.2f} ({lo / r['batch']:.2f}-{hi / r['batch']:.2f})",
                 f"{r['rtf']:.4f}", f"{r['rss_mb']:.0f}", f"{first['ms_per_clip'] / r['ms_per_clip']:.2f}x"]
        if power:
            cells += [f"{r['avg_power_w']:.2f}", f"{r['j_per_clip']:.4f}"]
        table.add_row(*cells)
    console.print(table)


def print_measurements(console, rows: list[dict]) -> None:
    sets = [r for r in rows if r.get("family") == "adapool"]
    if sets:
        print_set_measurements(console, sets)
    speech = [r for r in rows if r.get("family") == "wav2vec2"]
    if speech:
        print_speech_measurements(console, speech)
    rows = [r for r in rows if r.get("family") not in ("adapool", "wav2vec2")]
    if not rows:
        return
    first = rows[0]
    table = Table(title=f"measured: batch {first['batch']}, prompt {first['prompt_len']}, generate "
                        f"{first['gen_len']}, {first['threads']} thread(s), median of {first['repeats']}")
    for col in ("system", "TTFT ms", "TPOT ms (range)", "prompt tok/s", "decode tok/s", "RSS MiB", "vs first"):
        table.add_column(col, justify="right" if col != "system" else "left",
                         no_wrap=col in ("system", "TPOT ms (range)"))
    power = all("avg_power_w" in r for r in rows)
    if power:
        table.add_column("board W", justify="right")
        table.add_column("J/token", justify="right")
    base = first["decode_tok_s"]
    for r in rows:
        lo, hi = r["tpot_ms_range"]
        cells = [r["system"], f"{r['ttft_ms']:.1f}", f"{r['tpot_ms']:.2f} ({lo:.2f}-{hi:.2f})",
                 f"{r['prompt_tok_s']:.0f}", f"{r['decode_tok_s']:.1f}", f"{r['rss_mb']:.0f}",
                 f"{r['decode_tok_s'] / base:.2f}x"]
        if power:
            cells += [f"{r['avg_power_w']:.2f}", f"{r['j_per_token']:.4f}"]
        table.add_row(*cells)
    console.print(table)


def print_estimates(console, rows: list[dict], profile: DeviceProfile, paper: dict | None = None) -> None:
    first = rows[0]
    table = Table(title=f"ROOFLINE ESTIMATE for {profile.description} ({profile.bandwidth_gbs:g} GB/s, "
                        f"{profile.fp16_tflops:g} fp16 TFLOPS, {profile.int8_tops:g} int8 TOPS dense): not measured. "
                        f"Batch {first['batch']}, prompt {first['prompt_len']}, generate {first['gen_len']}")
    for col in ("system", "precision", "weights MB", "of memory", "prefill ms", "TPOT ms", "total s", "vs fp16",
                "bound"):
        table.add_column(col, justify="left" if col in ("system", "precision", "bound") else "right",
                         no_wrap=col in ("system", "precision", "bound", "of memory"))
    for r in rows:
        memory = f"{r['memory_fraction']:.1%}" + (" [red](too big)[/]" if r["memory_fraction"] > 0.85 else "")
        table.add_row(r["source"], r["precision"] + (" *" if r["deployed"] else ""), f"{r['weight_bytes'] / 1e6:.0f}",
                      memory, f"{r['prefill_ms']:.1f}", f"{r['tpot_ms']:.2f}", f"{r['total_s']:.2f}",
                      f"{r['speedup_vs_fp16']:.2f}x", r["decode_bound"])
    console.print(table)
    console.print("* the precision the system was built in (a public shape has none). Weights over ~85% of a "
                  "Jetson's memory leave too little for the OS, CUDA and the states.")
    if paper:
        side = Table(title=f"{paper['model']} on {paper['device']}: this estimate next to Quamba's measurement "
                           f"on {paper['paper_device']} (prompt {paper['prompt_len']}, generate {paper['gen_len']})")
        for col in ("", "fp16 s", "int8 s", "int8 speed-up"):
            side.add_column(col, justify="left" if not col else "right")
        side.add_row("roofline estimate (lower bound)", f"{paper['estimate_fp16_s']:.1f}",
                     f"{paper['estimate_int8_s']:.1f}", f"{paper['estimate_speedup']:.2f}x")
        side.add_row("Quamba, Figure 1 (measured)", f"~{paper['paper_fp16_s']:.0f}", f"~{paper['paper_int8_s']:.1f}",
                     f"{paper['paper_speedup']:.2f}x")
        side.add_row("measured / estimate", f"{paper['paper_fp16_over_estimate']:.2f}",
                     f"{paper['paper_int8_over_estimate']:.2f}",
                     f"{paper['paper_speedup'] / paper['estimate_speedup']:.0%} of the estimate")
        console.print(side)
        console.print(f"source: {paper['source']}. The figure's workload is assumed (the authors' profiling "
                      "defaults); the ratio does not depend on it while decode dominates.")


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        atomic_write_json(Path(path), payload)


def plot_tpot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise QuambaEdgeError("--plot needs matplotlib. Fix: pip install 'quamba-edge[plot]'") from exc
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        ax.plot(range(2, len(r["tpot_curve_ms"]) + 2), r["tpot_curve_ms"], label=r["system"])
    ax.set_xlabel("generated token")
    ax.set_ylabel("latency per token (ms, median over repeats)")
    ax.set_title(f"decode latency after a {rows[0]['prompt_len']}-token prompt")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    plt.close(fig)
