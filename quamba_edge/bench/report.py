"""bench's outputs: measurements and estimates as rich tables, JSON with the machine, a PNG."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

import onnxruntime
import torch
from rich.markup import escape
from rich.table import Table

from quamba_edge import __version__
from quamba_edge.backends.base import System
from quamba_edge.backends.compare import check_against
from quamba_edge.bench.devices import USABLE_FRACTION, DeviceProfile, jetson_model, this_jetson
from quamba_edge.bench.measure import measure, rss_mb
from quamba_edge.bench.power import PowerSampler
from quamba_edge.bench.roofline import estimate
from quamba_edge.bench.systems import open_system, precision_and_config
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.families.base import Column
from quamba_edge.io import atomic_write, atomic_write_json

# The instruction-set features that decide int8 speed on a CPU (x86 /proc/cpuinfo "flags", ARM "Features").
ISA_FLAGS = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve"}


def on_jetson(device: str) -> bool:
    profile = this_jetson()
    return profile is not None and (device == "orin" or device == profile.name)


def machine(device: str) -> dict:
    cpu, flags = "", []
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        present = set(next(line.split(":", 1)[1].split() for line in lines if line.startswith(("flags", "Features"))))
        flags = sorted(present & ISA_FLAGS)
    return {"device": device, "cpu": cpu or platform.processor(), "isa": flags, "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "quamba_edge": __version__, "jetson": jetson_model(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def measure_system(spec: str, device: str, threads: int, repeats: int, *, on_repeat=None, kernels: bool = False,
                   power: bool = False, against: tuple | None = None, prepack: bool = True,
                   **workload) -> tuple[dict, object, System]:
    """Open `spec` as a System and time its family's workload (`workload`: batch, prompt_len, gen_len, set_size,
    clip_s, each family taking the ones it knows); with `power`, also board power and energy per unit of work;
    with `against` = (first system, its workload, that workload's outputs on it), row["check"]: this system's
    outputs against those (`bench --check`). Returns the row, the workload (whose columns print it), the system."""
    baseline = rss_mb()  # the interpreter, its libraries and any system opened before this one
    system = open_system(spec, device=device, threads=threads, kernels=kernels, prepack=prepack)
    work = system.family.workload(system.cfg, **workload)
    if against is not None:
        first, first_work, reference = against
        if first.family is not system.family:
            raise QuambaEdgeError(f"--check compares systems of one model family; {spec} is {system.family.name}, "
                                  f"the first system {first.family.name}.")
        report = check_against(first, system, first_work.outputs, reference)
        check = {"against": first.label, "judged": report.tolerance > 0, "passed": report.passed,
                 "worst_tensor": report.worst["tensor"], "worst_rel_error": report.worst.get("rel_error"),
                 "tolerance": report.tolerance or None, "tensors": report.cases}
    sampler = PowerSampler() if power else None
    with sampler or contextlib.nullcontext():
        row = measure(system, work, repeats=repeats, threads=threads, progress=on_repeat)
    if sampler is not None:  # energy per unit of work at steady state: average board power x time per unit
        watts = sampler.average_w()
        row.update(avg_power_w=watts, energy_j=sampler.energy_j(), power_samples=len(sampler.samples),
                   **work.energy(row, watts))
    row.update(source=spec, baseline_rss_mb=baseline, weights_mb=system.weight_bytes / 2**20 or None)
    if against is not None:
        row["check"] = check
    return row, work, system


def print_checks(console, rows: list[dict]) -> bool:
    """The `bench --check` table; False when a judged check failed."""
    checked = [r for r in rows if "check" in r]
    if not checked:
        return True
    table = Table(title=f"outputs against {escape(checked[0]['check']['against'])} on the same inputs")
    for col in ("system", "worst tensor", "rel. error", "tolerance", "result"):
        table.add_column(col, justify="left" if col in ("system", "worst tensor", "result") else "right")
    for r in checked:
        c = r["check"]
        result = ("pass" if c["passed"] else "[red]FAIL[/]") if c["judged"] else "recorded (different precisions)"
        error = "-" if c["worst_rel_error"] is None else f"{c['worst_rel_error']:.2e}"
        table.add_row(r["system"], c["worst_tensor"], error, f"{c['tolerance']:g}" if c["tolerance"] else "-", result)
    console.print(table)
    return all(r["check"]["passed"] for r in checked)


def estimates(systems: list[str], profile: DeviceProfile, batch: int, prompt_len: int, gen_len: int) -> list[dict]:
    """fp16 and int8 estimates for each system's model shape: a roofline compares precisions, so both are
    given whatever precision the system itself was built in (`deployed` marks that one). An engine built in
    that precision lends its real bytes per decode step to its own row (`weight_source`: "engine files")."""
    rows = []
    for spec in systems:
        cfg, deployed, real = precision_and_config(spec)
        pair = {p: estimate(cfg, p, profile, batch=batch, prompt_len=prompt_len, gen_len=gen_len,
                            weight_bytes=real if p == deployed else None).to_dict()
                for p in ("fp16", "int8")}
        for precision, est in pair.items():
            est.update(source=spec, deployed=precision == deployed,
                       speedup_vs_fp16=pair["fp16"]["total_s"] / est["total_s"])
            rows.append(est)
    return rows


def print_measurements(console, measured: list[tuple[dict, object]]) -> None:
    """One table per workload kind, with the columns the workload declares, then memory, "vs first" (the
    workload's speed figure against the first system's) and, when every row has them, board power and energy."""
    groups: dict[str, tuple] = {}  # title -> (the first system's workload, the rows)
    for row, work in measured:
        groups.setdefault(work.title, (work, []))[1].append(row)
    for title, (work, rows) in groups.items():
        first = rows[0]
        columns = [Column("system", "system"), *work.columns, Column("process RSS MiB", "rss_mb", "{:.0f}"),
                   Column("vs first", work.speed_key, lambda r, f=first, k=work.speed_key: f"{r[k] / f[k]:.2f}x")]
        if all("avg_power_w" in r for r in rows):
            columns += [Column("board W", "avg_power_w", "{:.2f}"), *work.energy_columns]
        table = Table(title=f"{title}, {first['threads']} thread(s), median of {first['repeats']}")
        for col in columns:  # fold, never cut: a number shortened to "52…" is worse than one on two lines
            system = col.key == "system"
            table.add_column(col.header, justify="left" if system else "right", overflow="fold", no_wrap=system)
        for r in rows:
            table.add_row(*(col.cell(r) for col in columns))
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
        too_big = r["memory_fraction"] > USABLE_FRACTION
        memory = f"{r['memory_fraction']:.1%}" + (" [red](too big)[/]" if too_big else "")
        table.add_row(r["source"], r["precision"] + (" *" if r["deployed"] else ""), f"{r['weight_bytes'] / 1e6:.0f}"
                      + (" †" if r["weight_source"] == "engine files" else ""),
                      memory, f"{r['prefill_ms']:.1f}", f"{r['tpot_ms']:.2f}", f"{r['total_s']:.2f}",
                      f"{r['speedup_vs_fp16']:.2f}x", r["decode_bound"])
    console.print(table)
    console.print("* the precision the system was built in (a public shape or an fp32 build has none). † the "
                  "engine's own files (one decode step's graph and weights); other rows count the shape's weights. "
                  "Weights over ~85% of a Jetson's memory leave too little for the OS, CUDA and the states.")
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
    ax.set(xlabel="generated token", ylabel="latency per token (ms, median over repeats)",
           title=f"decode latency after a {rows[0]['prompt_len']}-token prompt")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
