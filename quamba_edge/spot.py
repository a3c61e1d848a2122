"""Keyword spotting on WAV files with any form of the model (checkpoint, int8 artifact, engine).

Each file is checked on its own (rate, channels, corruption, silence, length against the engine's
profile) and a bad one becomes an error row: one broken file never stops the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quamba_edge.backends.base import System
from quamba_edge.bench.systems import open_system
from quamba_edge.data.speech import read_wav
from quamba_edge.errors import QuambaEdgeError


@dataclass
class SpotResult:
    file: str
    keyword: str | None = None
    confidence: float | None = None
    seconds: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def open_spotter(spec: str, threads: int = 1) -> System:
    """A keyword spotter (checkpoint, artifact or engine) as a System whose one graph maps audio to logits."""
    system = open_system(spec, device="cpu", threads=threads)
    if not hasattr(system.cfg, "labels"):
        raise QuambaEdgeError(f"{spec} is not a keyword spotter. Fix: pass a KWS checkpoint, its int8 artifact "
                              "(quamba-edge calibrate) or its engine (quamba-edge build-engine).")
    return system


def spot_files(system: System, files: list[Path], mix_to_mono: bool = False) -> list[SpotResult]:
    cfg = system.cfg
    rate = cfg.sample_rate
    window = int(round(cfg.window_s * rate))
    max_samples = system.limits.get("max_samples")
    results = []
    for f in files:
        try:
            audio = read_wav(f, rate, mix_to_mono=mix_to_mono, reject_silent=True)
            if max_samples is not None and len(audio) > max_samples:
                raise QuambaEdgeError(f"{len(audio) / rate:.2f} s is longer than the engine's profile "
                                      f"({max_samples / rate:g} s). Fix: trim the clip, or rebuild with "
                                      f"--max-clip-s {len(audio) / rate:.1f}.")
            clip = np.pad(audio, (0, max(window - len(audio), 0)))[None, :].astype(np.float32)
            logits = system["model"]({"audio": clip})["logits"][0].astype(np.float64)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            k = int(probs.argmax())
            results.append(SpotResult(str(f), cfg.labels[k], float(probs[k]), len(audio) / rate))
        except QuambaEdgeError as exc:
            results.append(SpotResult(str(f), error=str(exc)))
    return results
