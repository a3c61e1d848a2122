"""Mamba-2 language models (issue 19): checkpoints in the mamba-ssm and transformers layouts, text calibration
and the W8A8 recipes of quant/quamba2.py, bits per byte, generation, the prefill/decode graphs (export/mamba2.py)
and their engines (ONNX Runtime; TensorRT plans, checked here with TensorRT-RTX's parser and builder) with Mamba-1's
parity cases, the native CPU decoder (csrc/cpu/native/mamba2.cpp: chunked int8-GEMM prefill, one-call decode
step), and the roofline estimate. Not built yet: TensorRT plugins for the SSD layer; the CUDA SSD step
(csrc/cuda/ssd_step.cu) compiles for sm_87 and sm_90 but has not run on a GPU.

What a recipe name means here: `fp` the model as loaded; `naive` per-tensor abs-max W8A8, no rotation;
`quamba` Quamba's percentile clip of the SSM input x and Hadamard rotation before out_proj, with Quamba2's
per-head x and per-group B/C scales (--no-hadamard and --no-percentile-clip turn parts off, as for Mamba-1;
--int8-head makes lm_head int8 too).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from torch import nn

from quamba_edge.checkpoints.mamba2 import is_mamba2_config, load_mamba2
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.export.graph import WeightFile
from quamba_edge.export.mamba2 import export_mamba2
from quamba_edge.families import mamba
from quamba_edge.kernels.native import NativeMamba2Decoder
from quamba_edge.models.mamba2 import PUBLIC_SHAPES, Mamba2Config, Mamba2LM, public_shape
from quamba_edge.quant.quamba2 import QuantizedMamba2LM
from quamba_edge.quant.recipes import DEFAULT_PERCENTILE, Fp, Quamba2, Recipe, check_name

name = "mamba2"
graphs = ("prefill", "decode")
precisions = ("fp32",)  # an fp model builds in fp32 (fp16 graphs are not implemented); a quantized one in int8
backends = ("ort", "tensorrt", "native")
MAMBA2_HEADS = ("fp32", "fp16", "bf16", "int8")  # the native decoder's heads
no_tensorrt = ""  # TensorRT builds Mamba-2's portable graphs
generates = True
public_shapes = {size: public_shape(size) for size in PUBLIC_SHAPES}  # state-spaces/mamba2-*
scales_title = "activation scales (vectors: their smallest and largest channel scale)"
plugin_pass = None

tag, tokenizer, extra_files, calibrate = mamba.tag, mamba.tokenizer, mamba.extra_files, mamba.calibrate
reference, workload = mamba.reference, mamba.workload
parity, layer_parity, limits, profile, state_bytes = (mamba.parity, mamba.layer_parity, mamba.limits, mamba.profile,
                                                      mamba.state_bytes)
evaluate, eval_rows, eval_columns = mamba.evaluate, mamba.eval_rows, mamba.eval_columns
load_checkpoint, config = load_mamba2, Mamba2Config.from_dict


def detect(directory: Path) -> bool:
    """A config.json that says Mamba-2 (`ssm_cfg.layer: "Mamba2"` or `model_type: "mamba2"`)."""
    path = Path(directory) / "config.json"
    if not path.exists():
        return False
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # Mamba-1's loader names the broken file
    return isinstance(raw, dict) and is_mamba2_config(raw)


def structure(cfg: Mamba2Config, recipe: Recipe, manifest: dict) -> nn.Module:
    return QuantizedMamba2LM(cfg, recipe) if recipe.quantize else Mamba2LM(cfg)


def quant_config(recipe: str | Recipe, *, hadamard: bool = True, percentile_clip: bool = True,
                 percentile: float = DEFAULT_PERCENTILE, weight_granularity: str = "tensor", int8_head: bool = False,
                 **_ignored) -> Fp | Quamba2:
    """fp | naive | quamba (see the module docstring) with the CLI's switches; a Quamba2 config as is."""
    if not isinstance(recipe, str):
        if not isinstance(recipe, (Fp, Quamba2)):
            raise QuambaEdgeError(f"a {recipe.kind} recipe does not apply to Mamba-2; use --recipe naive or quamba.")
        return recipe
    check_name(recipe)
    if recipe == "fp":
        return Fp()
    if recipe == "naive":
        return Quamba2(percentile=None, hadamard=False, group_scales=False, weight_granularity=weight_granularity,
                       int8_head=int8_head)
    return Quamba2(percentile=percentile if percentile_clip else None, hadamard=hadamard,
                   weight_granularity=weight_granularity, int8_head=int8_head)


def export(model: nn.Module, graph: str, precision: str, activations: str, probes: bool = False,
           weights: WeightFile | None = None) -> onnx.ModelProto:
    if precision == "fp16":
        raise QuambaEdgeError("Mamba-2 graphs build in fp32 or int8; fp16 is not implemented. Fix: --precision fp32, "
                              "or calibrate for int8.")
    return export_mamba2(model, graph, probes=probes, activations=activations, weights=weights)


def native(model: nn.Module, head: str | None = None) -> tuple[dict, int, str]:
    """The native CPU backend's runners (csrc/cpu/native/mamba2.cpp: prefill and decode sharing one decoder and its
    states), the bytes one decode step reads (packed weights, and the fp32 embedding when the head reads it) and a
    label. `head`: fp32 | fp16 | bf16 | int8 (None: int8 if the artifact has one (--int8-head), else fp32)."""
    if not isinstance(model, QuantizedMamba2LM):
        raise QuambaEdgeError("--backend native runs int8 artifacts; this model is fp32. Fix: `quamba-edge "
                              "calibrate` first, then build from its --out directory.")
    mamba.check_native_head(model, head, MAMBA2_HEADS)
    if not model.cfg.tie_embeddings and model.head is None:
        raise QuambaEdgeError("the native Mamba-2 decoder takes models whose lm_head is the tied embedding (the "
                              "mamba2-* checkpoints); this one's is untied. Fix: --backend ort.")
    return mamba.native_runners(NativeMamba2Decoder(model, head=head), model)
