"""The PyTorch reference as a Runner: a family's `reference(model)` callables (feeds -> outputs), on the CPU
or a GPU, eager or on the csrc/ kernel ops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quamba_edge.backends.base import Feeds, Runner


class TorchRunner(Runner):
    """One graph's PyTorch reference (or any Python callable feeds -> outputs, e.g. llama.cpp in benchmarks)."""

    def __init__(self, name: str, fn: Callable[[Feeds], dict[str, Any]], backend: str = "pytorch"):
        super().__init__(name)
        self.fn, self.backend = fn, backend

    def _infer(self, feeds: Feeds) -> dict[str, Any]:
        return self.fn(feeds)
