"""The one interface every backend implements (after Polygraphy's runners): a Runner runs one graph.

`infer(feeds)` (or calling the runner) takes name -> array (numpy, or for the PyTorch reference also torch
tensors it produced itself, such as recurrent states), returns name -> array and records its wall time in
`inference_time` (seconds). Runners are context managers (`with runner:`), for backends that hold resources.
A System is the runners of one model, keyed by graph name (`prefill` and `decode` for Mamba, `model` for the
one-graph families).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Feeds = Mapping[str, Any]


class Runner:
    """One graph on one backend. Subclasses implement `_infer`."""

    backend = "none"
    inference_time: float | None = None

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _infer(self, feeds: Feeds) -> dict[str, Any]:
        raise NotImplementedError

    def infer(self, feeds: Feeds) -> dict[str, Any]:
        start = time.perf_counter()
        out = self._infer(feeds)
        self.inference_time = time.perf_counter() - start
        return out

    __call__ = infer


@dataclass
class System:
    """The runners of one model and how to name it in a report."""

    runners: dict[str, Runner]
    label: str  # e.g. "ort-int8 (quamba)"
    backend: str  # pytorch | kernels-cpu | ort | tensorrt
    precision: str  # fp32 | fp16 | int8
    cfg: Any  # the family's model config
    family: Any  # the Family (families/base.py)
    limits: dict = field(default_factory=dict)  # the engine's profile (max prompt, batch, samples), if any
    weight_bytes: int = 0  # bytes of weights one full forward reads (for achieved GB/s); 0: unknown

    def __getitem__(self, graph: str) -> Runner:
        return self.runners[graph]
