"""Recipes are data (torchao's `quantize_(model, config)` shape): a small frozen config per handler, with only
the switches that mean something to it; `quant.quantize.quantize(model, config, batches)` applies it.

- `Fp`: no quantization (the reference).
- `Quamba` (Mamba): W8A8 at every Quamba quantization point of DESIGN.md. The paper's recipe clips the SSM
  input u at the α-percentile and Hadamard-rotates the scan output before out_proj; with both off it is the
  naive W8A8 baseline (abs-max scales everywhere, no rotation), labelled `naive`.
- `Quamba2` (Mamba-2): W8A8 of the Mamba-2 block (quant/quamba2.py): Quamba's two ideas (percentile clip of
  the SSM input x, Hadamard rotation before out_proj) and Quamba2's group scales (a scale per head for x, per
  group for B and C, per segment of in_proj's output); with all three off it is the naive baseline.
- `StaticW8A8` (set models, keyword spotters): static per-tensor W8A8 of every Linear and Conv1d layer,
  abs-max scales (Quamba's clip and rotation belong to Mamba's SSM; labelled `naive` as before).

Every config has `quantize` (does it change the model?), `label` (a unique display name) and a dict form
(`kind` + fields) for the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from quamba_edge.errors import QuambaEdgeError

DEFAULT_PERCENTILE = 0.99999
GRANULARITIES = ("tensor", "channel")


@dataclass(frozen=True)
class Fp:
    kind: ClassVar[str] = "fp"
    quantize: ClassVar[bool] = False
    label: ClassVar[str] = "fp"


class _W8A8:
    """The weight granularity both W8A8 configs carry: checked when built, a label suffix unless `tensor`."""

    def __post_init__(self) -> None:
        if self.weight_granularity not in GRANULARITIES:
            raise QuambaEdgeError(f"weight granularity must be 'tensor' or 'channel', not {self.weight_granularity!r}")

    def _suffixes(self) -> list[str]:
        return [self.weight_granularity] if self.weight_granularity != "tensor" else []


@dataclass(frozen=True)
class Quamba(_W8A8):
    """percentile: quantile of |u| for the SSM input scale (None: abs-max); hadamard: rotate the scan output;
    weight_granularity: tensor | channel; int8_head: the tied lm_head int8 too (not in the paper, whose head
    stays fp16: per-channel weights and a static input scale; on a CPU the fp32 head is most of the bytes a
    decode step reads at small sizes)."""

    kind: ClassVar[str] = "quamba"
    quantize: ClassVar[bool] = True
    percentile: float | None = DEFAULT_PERCENTILE
    hadamard: bool = True
    weight_granularity: str = "tensor"
    int8_head: bool = False

    @property
    def label(self) -> str:
        """`quamba`, `quamba-no-hadamard`, `naive-channel`, `quamba-int8-head`, ..."""
        if self.percentile is None and not self.hadamard:
            parts = ["naive"]
        else:
            parts = ["quamba"] + (["no-hadamard"] if not self.hadamard else [])
            if self.percentile is None:
                parts.append("no-percentile")
            elif self.percentile != DEFAULT_PERCENTILE:
                parts.append(f"p{self.percentile}")
        return "-".join(parts + self._suffixes() + (["int8-head"] if self.int8_head else []))


@dataclass(frozen=True)
class Quamba2(_W8A8):
    """percentile: quantile of |x| (the SSM input, per head with group scales) for its scale (None: abs-max);
    hadamard: rotate the normalised scan output before out_proj; group_scales: one scale per head for x, per
    group for B and C, and per segment (z, x, B, C, dt) of in_proj's output, where the naive recipe has one
    scale per tensor (Quamba2, Chiang et al., ICML 2025); weight_granularity: tensor | channel; int8_head: the
    lm_head int8 too, per-channel weights and a static input scale (as Quamba's --int8-head)."""

    kind: ClassVar[str] = "quamba2"
    quantize: ClassVar[bool] = True
    percentile: float | None = DEFAULT_PERCENTILE
    hadamard: bool = True
    group_scales: bool = True
    weight_granularity: str = "tensor"
    int8_head: bool = False

    @property
    def label(self) -> str:
        """`quamba2`, `quamba2-no-hadamard`, `quamba2-no-group-scales`, `naive`, ..."""
        if self.percentile is None and not self.hadamard and not self.group_scales:
            parts = ["naive"]
        else:
            parts = ["quamba2"] + (["no-percentile"] if self.percentile is None else [])
            if self.percentile is not None and self.percentile != DEFAULT_PERCENTILE:
                parts.append(f"p{self.percentile}")
            parts += (["no-hadamard"] if not self.hadamard else []) + (
                ["no-group-scales"] if not self.group_scales else [])
        return "-".join(parts + self._suffixes() + (["int8-head"] if self.int8_head else []))


@dataclass(frozen=True)
class StaticW8A8(_W8A8):
    """weight_granularity: tensor | channel; int8_conv_features: a wav2vec 2.0 conv feature encoder int8 too.

    Why that is off by default: its activations are sparse in time (a channel fires on a few frames, at
    13-36x its typical size after the first layer's per-channel norm), and one per-tensor int8 scale per layer
    then cost a keyword spotter 15-23 points on quiet input for each of conv layers 1-3 alone, with abs-max,
    percentile or MSE scales alike. With the conv stack float, int8 is within 0.6 points of fp32
    (benchmarks/results/kws_synthetic.json)."""

    kind: ClassVar[str] = "static_w8a8"
    quantize: ClassVar[bool] = True
    weight_granularity: str = "tensor"
    int8_conv_features: bool = False

    @property
    def skip(self) -> tuple[str, ...]:
        """Module names whose layers stay float."""
        return () if self.int8_conv_features else ("feature_encoder",)

    @property
    def label(self) -> str:
        return "-".join(["naive", *self._suffixes()] + (["int8-conv"] if self.int8_conv_features else []))


Recipe = Fp | Quamba | Quamba2 | StaticW8A8
KINDS: dict[str, type] = {c.kind: c for c in (Fp, Quamba, Quamba2, StaticW8A8)}
NAMES = ("fp", "naive", "quamba")  # what `--recipe` takes; each family says what a name means for it


def to_dict(recipe: Recipe) -> dict:
    """The manifest form: {"kind": ..., field: value, ...}."""
    return {"kind": recipe.kind, **asdict(recipe)}


def from_dict(values: dict) -> Recipe:
    """A manifest's recipe back as its config; an unknown kind or field is an error naming it."""
    cls = KINDS.get(values.get("kind"))
    if cls is None:
        raise QuambaEdgeError(f"unknown recipe kind {values.get('kind')!r}; known: {', '.join(KINDS)}. Fix: re-run "
                              "`quamba-edge calibrate` with this version.")
    known = {f.name for f in fields(cls)}
    extra = sorted(set(values) - known - {"kind"})
    if extra:
        raise QuambaEdgeError(f"recipe {cls.kind!r} has no fields {extra}. Fix: re-run `quamba-edge calibrate`.")
    return cls(**{k: v for k, v in values.items() if k in known})


def check_name(name: str) -> None:
    if name not in NAMES:
        raise QuambaEdgeError(f"unknown recipe {name!r}; choose one of {', '.join(NAMES)}")


def make_recipe(name: str, *, hadamard: bool = True, percentile_clip: bool = True,
                percentile: float = DEFAULT_PERCENTILE, weight_granularity: str = "tensor",
                int8_head: bool = False, **_ignored) -> Fp | Quamba:
    """What a recipe name and the CLI's switches mean for Mamba (the switches only ever turn parts of quamba
    off); switches of other families are ignored."""
    check_name(name)
    if name == "fp":
        return Fp()
    quamba = name == "quamba"  # naive: abs-max scales, no rotation
    return Quamba(percentile=percentile if quamba and percentile_clip else None, hadamard=quamba and hadamard,
                  weight_granularity=weight_granularity, int8_head=int8_head)


def make_static(name: str, *, weight_granularity: str = "tensor", int8_conv_features: bool = False,
                **_ignored) -> Fp | StaticW8A8:
    """What a recipe name means for the one-graph families: fp stays fp; naive and quamba are static W8A8."""
    check_name(name)
    return Fp() if name == "fp" else StaticW8A8(weight_granularity=weight_granularity,
                                                int8_conv_features=int8_conv_features)
