"""TensorRT for the one-graph families (keyword spotters, set models): their TensorRT profiles, their int8 graphs
in the form TensorRT reads (symmetric Q/DQ, zero point 0, float biases) through TensorRT's own parser and builder
(tensorrt, or tensorrt-rtx without a GPU), and build-engine --backend tensorrt through its one build path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from quamba_edge import engine as engine_mod
from quamba_edge.artifact import save_artifact
from quamba_edge.backends import ort as ort_backend
from quamba_edge.backends import tensorrt as trt_backend
from quamba_edge.engine import build_engine, load_engine
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.families import adapool, wav2vec2
from quamba_edge.families.registry import load
from quamba_edge.models.adapool import SetModel, SetModelConfig, init_set_model
from quamba_edge.models.kws import KeywordSpotter, KwsConfig
from quamba_edge.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder
from quamba_edge.quant.quantize import quantize
from quamba_edge.quant.recipes import StaticW8A8

# receptive field 425 samples (the tiny encoder's conv stack), window 0.5 s
KWS_ENCODER = {**Wav2Vec2Config.tiny().to_dict(), "conv_dim": (16,) * 4, "hidden_size": 16, "num_layers": 1,
               "num_heads": 2, "ffn_dim": 32, "pos_conv_kernel": 8, "pos_conv_groups": 4}
SET_CFG = SetModelConfig(d_in=6, d_model=16, n_heads=2, n_layers=1, d_ff=32, d_out=3, pool="adapool",
                         query_flag=True)
# small profiles (the CPU builder's time grows with the shapes it tunes for) that still take the parity cases
# (batch up to 3, sets up to 17 elements, one window of audio)
SMALL_LIMITS = {"max_batch": 3, "max_clip_s": 1.0, "max_set_size": 32, "opt_set_size": 16}
RTX_TIMING_CACHE = "ignore:.*Timing cache operations are no-ops:DeprecationWarning"  # tensorrt-rtx has none


def tiny_kws_artifact(out: Path, weight_granularity: str = "tensor") -> Path:
    """An int8 keyword spotter artifact (static W8A8, the conv feature encoder int8 too), calibrated on noise."""
    torch.manual_seed(0)
    model = KeywordSpotter(Wav2Vec2Encoder(Wav2Vec2Config.from_dict(KWS_ENCODER)),
                           KwsConfig(labels=("yes", "no", "stop"), n_heads=2, window_s=0.5)).eval()
    recipe = StaticW8A8(weight_granularity=weight_granularity, int8_conv_features=True)
    audio = 0.1 * torch.randn(4, 8000, generator=torch.Generator().manual_seed(1))
    qmodel, scales = quantize(model, recipe, [(audio,)], data="audio")
    return save_artifact(qmodel, out, family=wav2vec2.name, recipe=recipe, source={"model": "tiny kws"},
                         scales=scales)


def tiny_set_artifact(out: Path, weight_granularity: str = "channel") -> Path:
    """An int8 AdaPool set model artifact (static W8A8), calibrated on random sets, some padded."""
    model = init_set_model(SetModel(SET_CFG), seed=0)
    with torch.no_grad():  # a trained model's weights are larger than the init's
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(5.0)
    recipe = StaticW8A8(weight_granularity=weight_granularity)
    x = torch.randn(8, 12, SET_CFG.d_in, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(8, 12, dtype=torch.bool)
    mask[::2, 9:] = False
    qmodel, scales = quantize(model.eval(), recipe, [(x, mask)], data="sets")
    return save_artifact(qmodel, out, family=adapool.name, recipe=recipe, source={"model": "tiny set model"},
                         scales=scales)


ARTIFACTS = {"kws": tiny_kws_artifact, "sets": tiny_set_artifact}


@pytest.fixture(scope="module", params=sorted(ARTIFACTS))
def artifact(request, tmp_path_factory) -> Path:
    return ARTIFACTS[request.param](tmp_path_factory.mktemp(request.param) / "int8")


# ------------------------------------------------------------------------------------------------- profiles


def test_the_profiles_cover_batch_and_length():
    cfg = KwsConfig(labels=("a", "b"), window_s=0.5, encoder=Wav2Vec2Config.from_dict(KWS_ENCODER).to_dict())
    assert wav2vec2.backends == adapool.backends == ("ort", "tensorrt")
    limits = wav2vec2.limits(cfg, max_batch=4, max_clip_s=2.0)
    assert wav2vec2.profile("model", cfg, limits) == {"audio": ((1, 425), (1, 8000), (4, 32000))}
    # shorter than the window: the profile still takes the window (spot pads every clip to it)
    limits = wav2vec2.limits(cfg, max_batch=1, max_clip_s=0.25)
    assert wav2vec2.profile("model", cfg, limits) == {"audio": ((1, 425), (1, 8000), (1, 8000))}
    with pytest.raises(QuambaEdgeError, match="receptive field .*--max-clip-s 0.5"):
        wav2vec2.profile("model", cfg, wav2vec2.limits(cfg, max_clip_s=0.02))

    limits = adapool.limits(SET_CFG, max_batch=8, max_set_size=64)
    assert limits == {"max_batch": 8, "max_set_size": 64, "opt_set_size": 64}  # opt capped at the max
    assert adapool.profile("model", SET_CFG, limits) == {"sets": ((1, 1, 6), (1, 64, 6), (8, 64, 6)),
                                                         "mask": ((1, 1), (1, 64), (8, 64))}
    with pytest.raises(QuambaEdgeError, match="at least 1"):
        adapool.limits(SET_CFG, max_set_size=0)


# ------------------------------------------------------------------------------- the graph TensorRT reads


def check_tensorrt_coding(proto: onnx.ModelProto, per_channel_activations: bool = False) -> None:
    """Explicit quantization as TensorRT takes it: int8 activations and weights with zero point 0, per-tensor
    activation scales (unless `per_channel_activations`: Mamba-2's head and group scales), no quantized (int32)
    bias anywhere, every Conv / MatMul / Add bias float."""
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["precision"] == "int8" and meta["activations"] == "int8"
    assert not any(t.data_type == TensorProto.INT32 for t in proto.graph.initializer)
    q_nodes = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    dq_nodes = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert q_nodes and dq_nodes
    for node in q_nodes + dq_nodes:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    for node in q_nodes:
        assert per_channel_activations or inits[node.input[1]].size == 1, f"{node.name}: activations are per-tensor"
    dtypes = {t.name: t.data_type for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Conv" and len(node.input) == 3:
            assert dtypes[node.input[2]] == TensorProto.FLOAT, f"{node.name}: a quantized bias"


@pytest.mark.tensorrt
def test_tensorrt_parses_and_builds_the_int8_graph(artifact, trt, tmp_path):
    """The family's int8 graph in TensorRT's coding, parsed from its file (no parser errors) and built with the
    family's own profile into a plan (tensorrt-rtx: on the CPU, without a GPU)."""
    loaded = load(artifact)
    family, model, cfg = loaded.family, loaded.model, loaded.cfg
    assert loaded.recipe.quantize
    proto = family.export(model, "model", "int8", ort_backend.activation_encoding("tensorrt", "cuda"))
    check_tensorrt_coding(proto)
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))

    start = time.perf_counter()
    builder, network, parser, _logger = trt_backend.parse_onnx(trt, path)
    parse_s = time.perf_counter() - start
    assert parser.num_errors == 0
    shapes = family.profile("model", cfg, family.limits(cfg, **SMALL_LIMITS))
    assert sorted(network.get_input(i).name for i in range(network.num_inputs)) == sorted(shapes)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    assert plan is not None and plan.nbytes > 0, f"{trt.__name__} could not build the {family.name} graph"
    print(f"{family.name}: {trt.__name__} {trt.__version__}, {network.num_layers} layers, parse {parse_s:.2f} s, "
          f"build {build_s:.1f} s, plan {plan.nbytes / 2**20:.2f} MiB")


# ------------------------------------------------------------------------------ build-engine --backend tensorrt


class _OrtStandIn(ort_backend.OrtRunner):
    """The plan's graph on ONNX Runtime (int8 coding) in place of a TensorRT runner, which needs a GPU: the parity
    check then judges the graph the plan was built from. Like TensorRT, it refuses feeds outside the plan's
    optimization profile (its sidecar's shapes)."""

    backend = "tensorrt"

    def __init__(self, plan_path: Path, name: str = "graph"):
        super().__init__(Path(plan_path).with_suffix(".onnx"), name=name, threads=1, int8=True, target="cpu",
                         activations="int8")
        self.shapes = json.loads(Path(plan_path).with_suffix(".engine.json").read_text())["shapes"]

    def _infer(self, feeds) -> dict:
        for name, array in feeds.items():
            lo, _opt, hi = self.shapes[name]
            assert all(a <= d <= b for a, d, b in zip(lo, array.shape, hi)), f"{name} {array.shape} not in {lo}..{hi}"
        return super()._infer(feeds)


@pytest.mark.tensorrt
@pytest.mark.filterwarnings(RTX_TIMING_CACHE)
def test_build_engine_with_tensorrt_goes_through_the_one_build_path(artifact, trt, tmp_path, monkeypatch):
    """build-engine --backend tensorrt with the real build_plan (TensorRT, or tensorrt-rtx as a stand-in), the
    family's profile and the parity check (ONNX Runtime runs the plan's graph: no GPU here); the plan's sidecar
    then refuses another TensorRT version or GPU, as Mamba's plans do."""
    for module in (engine_mod, trt_backend):
        monkeypatch.setattr(module, "import_tensorrt", lambda allow_rtx=False: trt)
    monkeypatch.setattr(trt_backend, "gpu_compute_capability", lambda: "8.7")
    monkeypatch.setattr(engine_mod, "TensorRTRunner", _OrtStandIn)
    out = tmp_path / "trt"
    build = build_engine(artifact, out, backend="tensorrt", target="cuda", **SMALL_LIMITS)
    loaded = load(artifact)
    shapes = loaded.family.profile("model", loaded.cfg, loaded.family.limits(loaded.cfg, **SMALL_LIMITS))
    assert build["backend"] == "tensorrt" and build["precision"] == "int8" and build["parity"]["passed"]
    assert build["int8_activations"] == "int8" and build["versions"]["tensorrt"] == trt.__version__
    assert build["tensorrt"]["model"]["shapes"] == {k: [list(s) for s in v] for k, v in shapes.items()}
    assert {"model.onnx", "model.plan", "model.engine.json", "timing.cache"} <= set(build["files"])
    check_tensorrt_coding(onnx.load(str(out / "model.onnx")))

    engine = load_engine(out)
    with pytest.raises(QuambaEdgeError, match="TensorRT engine; it runs on --device cuda"):
        engine.system("cpu", threads=1)
    monkeypatch.setattr(engine_mod, "TensorRTRunner", trt_backend.TensorRTRunner)

    class Other:
        __version__ = "0.0.0-other"

    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda allow_rtx=False: Other)
    with pytest.raises(QuambaEdgeError, match=f"built with TensorRT {trt.__version__}; this machine has 0.0.0-other"):
        engine.system("cuda", threads=1)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda allow_rtx=False: trt)
    monkeypatch.setattr(trt_backend, "gpu_compute_capability", lambda: "9.0")
    with pytest.raises(QuambaEdgeError, match="compute capability 8.7; this GPU is 9.0.*rebuild"):
        engine.system("cuda", threads=1)
