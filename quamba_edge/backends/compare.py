"""One comparator for every backend: a system's outputs against the PyTorch reference (DESIGN.md), for
build-engine's parity check and `bench --check`; a family says what to compare as `Case`s.

Tolerances are relative errors ‖got − ref‖₂ / ‖ref‖₂ per tensor: fp32 1e-5 (float reassociation only);
fp16 1e-3; int8 tensors exact except near rounding ties (one step in at most 2% of places), and int8
graphs judged layer by layer at 1e-2 on each layer's own input, because a tie resolved differently in
one layer changes every later one (the families' parity cases say how; end-to-end int8 figures are
recorded, not judged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from quamba_edge.backends.base import System
from quamba_edge.errors import QuambaEdgeError

TOLERANCE = {"fp32": 1e-5, "fp16": 1e-3, "int8": 5e-2}
# bench --check, int8 against int8 end to end: rounding ties resolved differently cascade through the layers
# (a few percent on the logits of a 24-layer model after 33 tokens), while a wrong scale, rotation or layout
# is off by order 1, so this catches a broken engine without failing a sound one.
INT8_END_TO_END = 0.1
LAYER_TOLERANCE = 1e-2
INT8_MAX_STEP = 1
# One float op ordered differently (ORT's RMSNorm against ours) flips a quantized input at a tie, and that one
# input moves a whole token's row of the next int8 matmul's outputs by a step: at the mamba-370m shape 0.51% of
# a layer's conv-state entries differed by one step on the graph's own input (random weights). A wrong scale,
# rotation or layout moves most entries by many steps.
INT8_MAX_MISMATCH = 0.02


class ParityError(QuambaEdgeError):
    pass


@dataclass
class Case:
    """feeds for `graph` (or `run(system)` for a case that calls several graphs); judge(outputs) -> rows made
    with `compare`."""

    name: str
    graph: str | None
    feeds: dict | None
    judge: Callable[[dict], list[dict]]
    run: Callable[[System], dict] | None = None


@dataclass
class ParityReport:
    precision: str
    tolerance: float
    cases: list[dict] = field(default_factory=list)

    @property
    def worst(self) -> dict:
        return max(self.cases, key=lambda c: c["excess"])

    @property
    def passed(self) -> bool:
        return all(c["excess"] <= 1.0 for c in self.cases)

    def to_dict(self) -> dict:
        return {"precision": self.precision, "tolerance": self.tolerance, "layer_tolerance": LAYER_TOLERANCE,
                "passed": self.passed,
                "int8_max_step": INT8_MAX_STEP, "int8_max_mismatch": INT8_MAX_MISMATCH, "cases": self.cases}

    def failure(self) -> str:
        """The message of a failed check: the worst tensor and by how much."""
        worst = self.worst
        detail = (f"rel. error {worst['rel_error']:.3g} (tolerance {worst['tolerance']:g})" if "rel_error" in worst
                  else f"int8 entries off by up to {worst['max_step']} steps in {worst['mismatch']:.1%} of places")
        return (f"the {self.precision} engine disagrees with the reference: worst tensor `{worst['tensor']}` in "
                f"{worst['case']}: {detail}.")


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.numpy() if x.dtype == torch.int8 else x.float().numpy()
    return np.asarray(x)


def compare(case: str, name: str, got, ref, tolerance: float | None) -> dict:
    """One tensor against its reference; tolerance None records the figures without judging them.
    An int8 reference is judged by steps (DESIGN.md's rounding-tie rule), anything else by rel. error."""
    got, ref = _numpy(got), _numpy(ref)
    row = {"case": case, "tensor": name}
    if ref.dtype == np.int8:
        step = np.abs(got.astype(np.int32) - ref.astype(np.int32))
        row.update(max_step=int(step.max()), mismatch=float((step != 0).mean()))
        excess = max(row["max_step"] / INT8_MAX_STEP, row["mismatch"] / INT8_MAX_MISMATCH)
    else:
        row.update(rel_error=rel_error(got, ref), tolerance=tolerance)
        excess = row["rel_error"] / tolerance if tolerance else 0.0
    row.update(excess=float(excess) if tolerance else 0.0, judged=tolerance is not None)
    return row


def check(system: System | dict, cases: Iterable[Case], precision: str,
          report: ParityReport | None = None) -> ParityReport:
    """Run every case on its graph's runner and judge the outputs; returns the report (passed or not)."""
    report = report or ParityReport(precision, TOLERANCE[precision])
    for case in cases:
        outputs = case.run(system) if case.run else system[case.graph](case.feeds)
        report.cases.extend(case.judge(outputs))
    return report


def check_against(first: System, other: System, outputs: Callable[[System], dict], reference: dict) -> ParityReport:
    """`bench --check`: `other`'s outputs (`outputs(system)` runs them) against `reference`, `first`'s on the same
    inputs. Judged when both compute in the same precision (fp32, fp16: their parity tolerance; int8:
    INT8_END_TO_END); systems of different precisions are recorded, not judged (fp32 and int8 differ by design)."""
    same = first.precision == other.precision
    tolerance = (INT8_END_TO_END if other.precision == "int8" else TOLERANCE[other.precision]) if same else None
    name = f"{other.label} vs {first.label}"
    case = Case(name, None, None, lambda out: [compare(name, k, out[k], ref, tolerance)
                                               for k, ref in reference.items()], run=outputs)
    return check(other, [case], other.precision, ParityReport(other.precision, tolerance or 0.0))
