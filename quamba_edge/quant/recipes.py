"""Recipes are data: a small frozen config says what to quantize and how; `calibrate` applies it.

- `fp`: no quantization (the reference).
- `naive`: W8A8 at every Quamba quantization point, min-max (abs-max) scales, no rotation.
- `quamba`: the paper: the SSM input u is clipped at the α-percentile, the scan output is Hadamard-
  rotated before out_proj. The two ablations switch one of those off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Recipe:
    name: str
    quantize: bool = True
    percentile: float | None = 0.99999  # None: abs-max for u as well
    hadamard: bool = True
    weight_granularity: str = "tensor"  # or "channel" (per output channel)
    # Not in the paper (its lm_head stays fp16): the tied lm_head as int8 too, per-channel weights and a
    # static input scale. On a CPU the fp32 head is most of the bytes a decode step reads at small sizes.
    int8_head: bool = False
    # Speech only: the wav2vec 2.0 conv feature encoder in int8 too. Off by default: its activations are
    # sparse in time (a channel fires on a few frames, at 13-36x its typical size after the first layer's
    # per-channel norm), and one per-tensor int8 scale per layer then cost a keyword spotter 15-23 points on
    # quiet input for each of conv layers 1-3 alone, with abs-max, percentile or MSE scales alike. With the
    # conv stack float, int8 is within 0.6 points of fp32 (benchmarks/results/kws.json).
    int8_conv_features: bool = False

    @property
    def label(self) -> str:
        """A unique display name: `quamba`, `quamba-no-hadamard`, `naive-channel`, ..."""
        base = RECIPES.get(self.name)
        parts = [self.name]
        if base is not None and self.name != "fp":
            if base.hadamard and not self.hadamard:
                parts.append("no-hadamard")
            if base.percentile is not None and self.percentile is None:
                parts.append("no-percentile")
            if base.percentile is not None and self.percentile not in (None, base.percentile):
                parts.append(f"p{self.percentile}")
        if self.quantize and self.weight_granularity != "tensor":
            parts.append(self.weight_granularity)
        if self.quantize and self.int8_head:
            parts.append("int8-head")
        if self.quantize and self.int8_conv_features:
            parts.append("int8-conv")
        return "-".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        return cls(**values)


RECIPES: dict[str, Recipe] = {
    "fp": Recipe("fp", quantize=False, percentile=None, hadamard=False),
    "naive": Recipe("naive", percentile=None, hadamard=False),
    "quamba": Recipe("quamba"),
}


def make_recipe(
    name: str,
    *,
    hadamard: bool = True,
    percentile_clip: bool = True,
    percentile: float = 0.99999,
    weight_granularity: str = "tensor",
    int8_head: bool = False,
    int8_conv_features: bool = False,
) -> Recipe:
    """The named recipe with the CLI's switches applied (they only ever turn parts of quamba off)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    if weight_granularity not in ("tensor", "channel"):
        raise ValueError(f"weight granularity must be 'tensor' or 'channel', not {weight_granularity!r}")
    recipe = RECIPES[name]
    if name == "quamba":
        recipe = replace(recipe, hadamard=hadamard, percentile=percentile if percentile_clip else None)
    return replace(recipe, weight_granularity=weight_granularity, int8_head=int8_head and recipe.quantize,
                   int8_conv_features=int8_conv_features and recipe.quantize)
