"""One timing loop for every family and backend: a System runs a Workload, warm-up first, then `repeats`
timed runs; the workload turns the runs into medians and rates, this adds memory. PyTorch eager, ONNX
Runtime and TensorRT are measured the same way. Numbers are medians over repeats; the spread is the range."""

from __future__ import annotations

import os
from pathlib import Path

from quamba_edge.backends.base import System
from quamba_edge.errors import QuambaEdgeError


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Resident memory of this process now (Linux), in MiB; 0 where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(system: System, workload, *, repeats: int, threads: int, progress=None) -> dict:
    """One row: the system's name, backend, precision, the workload's figures, memory (RSS after the run, and
    the process's peak so far, which includes every system timed before this one)."""
    if repeats < 1:  # no median of nothing
        raise QuambaEdgeError(f"--repeats must be at least 1 (got {repeats}). Fix: pass --repeats 1 or more.")
    workload.check(system)
    workload.warmup(system)  # allocations, kernel selection
    runs = []
    for _ in range(repeats):
        runs.append(workload.once(system))
        if progress:
            progress()
    return {"system": system.label, "backend": system.backend, "precision": system.precision,
            "family": system.family.name, "threads": threads, "repeats": repeats,
            **workload.summarize(runs, system), "rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb()}
