"""One timing loop for every backend: prompt -> first token (TTFT), then one token at a time (TPOT).

A runner only knows how to `prefill(ids)` and `decode(token, state)`; the loop, the warm-up, the
greedy sampling and the statistics are shared, so PyTorch eager, ONNX Runtime and TensorRT are
measured the same way. Numbers are medians over repeats after one warm-up; the spread is the range.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quamba_edge.errors import QuambaEdgeError


class TorchRunner:
    """PyTorch eager: the fp reference, the quantized reference, or the quantized model on the kernel ops.

    Logits come back to the host every step (as from every other backend), which also synchronises CUDA.
    """

    def __init__(self, model, label: str, precision: str, device: str = "cpu", backend: str = "pytorch"):
        self.model, self.label, self.precision, self.backend = model.eval(), label, precision, backend
        self.cfg, self.device = model.cfg, torch.device(device)

    @torch.no_grad()
    def prefill(self, ids: np.ndarray):
        logits, conv, ssm = self.model.step(torch.from_numpy(ids).to(self.device))
        return logits[:, -1].float().cpu().numpy(), (conv, ssm)

    @torch.no_grad()
    def decode(self, token: np.ndarray, state):
        logits, conv, ssm = self.model.step(torch.from_numpy(token).to(self.device), *state)
        return logits[:, -1].float().cpu().numpy(), (conv, ssm)


class GraphRunner:
    """Two graph callables (ONNX Runtime sessions or TensorRT plans) with the DESIGN.md interface."""

    def __init__(self, prefill, decode, cfg, label: str, precision: str, backend: str):
        self._prefill, self._decode = prefill, decode
        self.cfg, self.label, self.precision, self.backend = cfg, label, precision, backend

    def prefill(self, ids: np.ndarray):
        out = self._prefill({"input_ids": ids})
        return out["logits"], (out["conv_state"], out["ssm_state"])

    def decode(self, token: np.ndarray, state):
        out = self._decode({"input_ids": token, "conv_state_in": state[0], "ssm_state_in": state[1]})
        return out["logits"], (out["conv_state"], out["ssm_state"])


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


@dataclass
class Measurement:
    system: str
    backend: str
    precision: str
    batch: int
    prompt_len: int
    gen_len: int
    threads: int
    repeats: int
    ttft_ms: float
    ttft_ms_range: tuple[float, float]
    tpot_ms: float
    tpot_ms_range: tuple[float, float]
    prompt_tok_s: float
    decode_tok_s: float
    rss_mb: float  # resident memory after the run
    peak_rss_mb: float  # the process's peak so far: includes every system timed before this one
    tpot_curve_ms: list[float]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _one_run(runner, prompt: np.ndarray, gen_len: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    logits, state = runner.prefill(prompt)
    token = logits.argmax(-1).astype(np.int64)[:, None]
    ttft = time.perf_counter() - t0
    steps = []
    for _ in range(gen_len - 1):
        t = time.perf_counter()
        logits, state = runner.decode(token, state)
        token = logits.argmax(-1).astype(np.int64)[:, None]
        steps.append(time.perf_counter() - t)
    return ttft, steps


def _at_least_one(**sizes: int) -> None:
    """A workload with nothing in it has no latency: say which size is zero instead of a median of nothing."""
    for name, value in sizes.items():
        if value < 1:
            flag = "--" + name.replace("_", "-")
            raise QuambaEdgeError(f"{flag} must be at least 1 (got {value}). Fix: pass {flag} 1 or more.")


def measure(runner, *, batch: int, prompt_len: int, gen_len: int, repeats: int, threads: int,
            seed: int = 0, progress=None) -> Measurement:
    if gen_len < 2:
        raise QuambaEdgeError("--gen-len must be at least 2 (the first token comes from the prompt).")
    _at_least_one(batch=batch, prompt_len=prompt_len, repeats=repeats)
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, runner.cfg.vocab_size, size=(batch, prompt_len), dtype=np.int64)
    _one_run(runner, prompt[:, : min(prompt_len, 64)], 4)  # warm-up: allocations, kernel selection
    ttfts, tpots, curves = [], [], []
    for _ in range(repeats):
        ttft, steps = _one_run(runner, prompt, gen_len)
        ttfts.append(ttft)
        tpots.append(statistics.median(steps))
        curves.append(steps)
        if progress:
            progress()
    ttft, tpot = statistics.median(ttfts), statistics.median(tpots)
    curve = [statistics.median(col) * 1e3 for col in zip(*curves)]
    return Measurement(
        system=runner.label, backend=runner.backend, precision=runner.precision, batch=batch,
        prompt_len=prompt_len, gen_len=gen_len, threads=threads, repeats=repeats,
        ttft_ms=ttft * 1e3, ttft_ms_range=(min(ttfts) * 1e3, max(ttfts) * 1e3),
        tpot_ms=tpot * 1e3, tpot_ms_range=(min(tpots) * 1e3, max(tpots) * 1e3),
        prompt_tok_s=batch * prompt_len / ttft, decode_tok_s=batch / tpot, rss_mb=rss_mb(), peak_rss_mb=peak_rss_mb(),
        tpot_curve_ms=curve,
    )


class SetRunner:
    """A set model behind one call, sets (b, n, d) + mask (b, n) -> (b, d_out): PyTorch or a graph."""

    def __init__(self, run, cfg, label: str, precision: str, backend: str):
        self.run, self.cfg, self.label, self.precision, self.backend = run, cfg, label, precision, backend

    @classmethod
    def torch(cls, model, label: str, precision: str) -> SetRunner:
        @torch.no_grad()
        def run(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(x), torch.from_numpy(mask)).numpy()

        return cls(run, model.cfg, label, precision, "pytorch")

    @classmethod
    def graph(cls, graph, cfg, label: str, precision: str, backend: str) -> SetRunner:
        return cls(lambda x, mask: graph({"sets": x, "mask": mask})["output"], cfg, label, precision, backend)


def measure_sets(runner: SetRunner, *, batch: int, set_size: int, repeats: int, threads: int, seed: int = 0,
                 progress=None) -> dict:
    """Latency of one batch of sets (median of `repeats` timed calls after two warm-ups) and sets/s."""
    _at_least_one(batch=batch, set_size=set_size, repeats=repeats)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, set_size, runner.cfg.d_in)).astype(np.float32)
    mask = np.ones((batch, set_size), dtype=bool)
    for _ in range(2):
        runner.run(x, mask)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner.run(x, mask)
        times.append((time.perf_counter() - t) * 1e3)
        if progress:
            progress()
    ms = statistics.median(times)
    return {"system": runner.label, "backend": runner.backend, "precision": runner.precision, "family": "adapool",
            "batch": batch, "set_size": set_size, "threads": threads, "repeats": repeats,
            "ms_per_batch": ms, "ms_range": [min(times), max(times)], "ms_per_set": ms / batch,
            "sets_per_s": batch * 1e3 / ms, "rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb()}


class SpeechRunner:
    """A keyword spotter behind one call, audio (b, samples) -> logits: PyTorch or a graph. `max_samples` is
    the engine's profile (None: any length)."""

    def __init__(self, run, cfg, label: str, precision: str, backend: str, max_samples: int | None = None):
        self.run, self.cfg, self.label, self.precision, self.backend = run, cfg, label, precision, backend
        self.max_samples = max_samples

    @classmethod
    def torch(cls, model, label: str, precision: str) -> SpeechRunner:
        @torch.no_grad()
        def run(audio: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(audio)).numpy()

        return cls(run, model.cfg, label, precision, "pytorch")

    @classmethod
    def graph(cls, graph, cfg, label: str, precision: str, backend: str, max_samples: int) -> SpeechRunner:
        return cls(lambda audio: graph({"audio": audio})["logits"], cfg, label, precision, backend, max_samples)


def measure_speech(runner: SpeechRunner, *, batch: int, clip_s: float, repeats: int, threads: int, seed: int = 0,
                   progress=None) -> dict:
    """Latency of one batch of `clip_s`-second clips (median of `repeats` timed calls after two warm-ups)
    and the real-time factor: compute time / audio time (below 1 keeps up with a live stream)."""
    _at_least_one(batch=batch, repeats=repeats)
    samples = int(round(clip_s * runner.cfg.sample_rate))
    if runner.max_samples is not None and samples > runner.max_samples:
        limit = runner.max_samples / runner.cfg.sample_rate
        raise QuambaEdgeError(f"{clip_s} s clips are longer than this engine's profile ({limit:g} s). Fix: rebuild "
                              f"with `quamba-edge build-engine ... --max-clip-s {clip_s}`, or bench shorter clips.")
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.normal(size=(batch, samples))).astype(np.float32)
    for _ in range(2):
        runner.run(audio)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner.run(audio)
        times.append((time.perf_counter() - t) * 1e3)
        if progress:
            progress()
    ms = statistics.median(times)
    return {"system": runner.label, "backend": runner.backend, "precision": runner.precision, "family": "wav2vec2",
            "batch": batch, "clip_s": clip_s, "threads": threads, "repeats": repeats, "ms_per_batch": ms,
            "ms_range": [min(times), max(times)], "ms_per_clip": ms / batch,
            "rtf": ms / 1e3 / (clip_s * batch), "rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb()}
