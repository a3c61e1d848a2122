"""build-engine end to end: graphs, parity, build.json, verification on load, bad input."""

import json

import pytest
import torch

from quamba_edge import engine as engine_mod
from quamba_edge.artifact import save_artifact
from quamba_edge.engine import build_engine, load_engine
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.quant.quamba import calibrate
from quamba_edge.quant.recipes import make_recipe


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory):
    from .conftest import make_model

    model = make_model()
    batches = [torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(3))]
    qmodel, calib = calibrate(model, batches, make_recipe("quamba"))
    path = tmp_path_factory.mktemp("art") / "quamba"
    return save_artifact(qmodel, path, family="mamba", recipe=qmodel.recipe, source={"model": "tiny"}, calibration={},
                         scales=calib.scales)


@pytest.fixture(scope="module")
def int8_engine(int8_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("eng") / "int8"
    build_engine(int8_artifact, out)
    return out


def test_int8_build_records_parity_versions_and_kernels(int8_engine, int8_artifact):
    build = json.loads((int8_engine / "build.json").read_text())
    assert build["precision"] == "int8" and build["backend"] == "ort" and build["target"] == "cpu"
    assert build["parity"]["passed"]
    assert any(c["case"].startswith("layer") for c in build["parity"]["cases"])
    assert set(build["files"]) == {"prefill.onnx", "decode.onnx"}
    assert build["versions"]["onnxruntime"] and build["versions"]["torch"]
    assert build["ort_kernels"]["decode"]["integer_kernels"]["QLinearMatMul"] == 6
    assert build["source_manifest_sha256"]
    loaded = load_engine(int8_engine)
    assert loaded.cfg.n_layer == 2


def test_fp_builds_from_a_checkpoint(tiny_checkpoint, tmp_path):
    for precision in ("fp32", "fp16"):
        build = build_engine(tiny_checkpoint, tmp_path / precision, precision=precision)
        assert build["precision"] == precision and build["parity"]["passed"]
    with pytest.raises(QuambaEdgeError, match="needs a quantized artifact"):
        build_engine(tiny_checkpoint, tmp_path / "x", precision="int8")


def test_a_failed_parity_check_writes_nothing(int8_artifact, tmp_path, monkeypatch):
    from quamba_edge.families import mamba

    monkeypatch.setattr(mamba, "LAYER_TOLERANCE", 1e-15)
    out = tmp_path / "never"
    with pytest.raises(engine_mod.ParityError, match="worst tensor .* not written"):
        build_engine(int8_artifact, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("switches", [{"weight_granularity": "channel"}, {"int8_head": True}])
def test_per_channel_weights_build_and_pass_parity(tmp_path, switches):
    """Per-output-channel weight scales (the channel ablation, the int8 head): the per-axis DequantizeLinear
    takes a zero point per channel, which ONNX Runtime requires (a scalar one failed at the first run)."""
    from .conftest import make_model

    model = make_model()
    batches = [torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(5))]
    qmodel, calib = calibrate(model, batches, make_recipe("quamba", **switches))
    art = save_artifact(qmodel, tmp_path / "art", family="mamba", recipe=qmodel.recipe, source={"model": "tiny"},
                        calibration={}, scales=calib.scales)
    build = build_engine(art, tmp_path / "eng")
    assert build["parity"]["passed"] and build["recipe"] == qmodel.recipe.label


def test_estimate_of_an_int8_engine_reads_its_real_bytes(int8_engine, tmp_path):
    """bench --estimate on an int8 engine: the int8 row's weight traffic is the engine's decode graph and
    weights on disk (not the shape's count); the fp16 row, which was not built, is counted from the shape."""
    from typer.testing import CliRunner

    from quamba_edge.bench.roofline import estimate
    from quamba_edge.cli import app

    out = tmp_path / "est.json"
    result = CliRunner().invoke(app, ["bench", str(int8_engine), "--device", "orin-nano-8gb", "--estimate",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    fp16, int8 = json.loads(out.read_text())["estimates"]
    engine = load_engine(int8_engine)
    on_disk = (int8_engine / "decode.onnx").stat().st_size + sum(
        p.stat().st_size for p in int8_engine.glob("*.data"))
    assert int8["deployed"] and int8["weight_source"] == "engine files" and int8["weight_bytes"] == on_disk
    assert fp16["weight_source"] == "shape" and not fp16["deployed"]
    from quamba_edge.bench.devices import resolve_profile

    shape_only = estimate(engine.cfg, "int8", resolve_profile("orin-nano-8gb"))
    assert on_disk != shape_only.weight_bytes  # the tiny engine keeps its fp32 embedding: the files differ


def test_tampered_or_foreign_engines_are_refused(int8_engine, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(int8_engine, copy)
    (copy / "decode.onnx").write_bytes((copy / "decode.onnx").read_bytes()[:-10])
    with pytest.raises(QuambaEdgeError, match="changed after the build"):
        load_engine(copy)
    shutil.rmtree(copy)
    shutil.copytree(int8_engine, copy)
    build = json.loads((copy / "build.json").read_text())
    build["toolkit_version"] = "0.0.1"
    (copy / "build.json").write_text(json.dumps(build))
    with pytest.raises(QuambaEdgeError, match="built by quamba-edge 0.0.1"):
        load_engine(copy)
    with pytest.raises(QuambaEdgeError, match="not an engine directory"):
        load_engine(tmp_path)


def test_bad_build_requests(int8_artifact, tmp_path):
    with pytest.raises(QuambaEdgeError, match="unknown backend"):
        build_engine(int8_artifact, tmp_path / "e", backend="tflite")
    with pytest.raises(QuambaEdgeError, match="unknown target 'orin-nano-8gb' for --backend ort"):
        build_engine(int8_artifact, tmp_path / "e", target="orin-nano-8gb")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(QuambaEdgeError, match="not an engine directory; refusing"):
        build_engine(int8_artifact, keep)
    assert (keep / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("family", ["mamba", "wav2vec2"])
def test_tensorrt_backend_without_tensorrt_says_what_to_install(family, int8_artifact, tmp_path):
    """Every family builds for TensorRT (a keyword spotter too, no longer refused): without it, the fix is named."""
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; this test covers machines without it")
    except ImportError:
        pass
    if family == "wav2vec2":
        from .test_trt_onegraph import tiny_kws_artifact

        int8_artifact = tiny_kws_artifact(tmp_path / "kws")
    with pytest.raises(QuambaEdgeError, match="TensorRT is not installed.*pip install tensorrt.*--backend ort"):
        build_engine(int8_artifact, tmp_path / "trt", backend="tensorrt", target="orin-nano-8gb")
    assert not (tmp_path / "trt").exists()


@pytest.mark.tensorrt
def test_tensorrt_parses_and_builds_our_graphs(int8_artifact, tiny_checkpoint):
    """Our portable graphs through TensorRT's own ONNX parser and builder (TensorRT, or tensorrt-rtx in CI,
    whose builder runs without a GPU): Q/DQ placement, the Scan over a dynamic prompt length, profiles."""
    from quamba_edge.backends.tensorrt import import_tensorrt, parse_onnx
    from quamba_edge.export.mamba import export_mamba
    from quamba_edge.families import mamba
    from quamba_edge.families.registry import load as load_any

    try:
        trt = import_tensorrt(allow_rtx=True)
    except QuambaEdgeError as exc:
        pytest.skip(f"neither tensorrt nor tensorrt-rtx is installed: {exc}")
    for spec in (int8_artifact, tiny_checkpoint):
        model = load_any(spec).model
        for graph in ("prefill", "decode"):
            builder, network, _parser, _logger = parse_onnx(trt, export_mamba(model, graph).SerializeToString())
            assert network.num_outputs == 3
            config = builder.create_builder_config()
            profile = builder.create_optimization_profile()
            limits = mamba.limits(model.cfg, max_batch=2, max_prompt=128, opt_prompt=32)
            for name, (lo, opt, hi) in mamba.profile(graph, model.cfg, limits).items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
            plan = builder.build_serialized_network(network, config)
            assert plan is not None and plan.nbytes > 0, f"TensorRT could not build the {graph} graph"


def test_a_tensorrt_plan_refuses_another_gpu_or_version(tmp_path):
    from quamba_edge.backends.tensorrt import check_plan_compatible

    meta = {"tensorrt_version": "10.3.0", "compute_capability": "8.7"}
    check_plan_compatible(meta, "10.3.0", "8.7", tmp_path / "decode.plan")
    with pytest.raises(QuambaEdgeError, match="built with TensorRT 10.3.0; this machine has 10.7.0"):
        check_plan_compatible(meta, "10.7.0", "8.7", tmp_path / "decode.plan")
    with pytest.raises(QuambaEdgeError, match="compute capability 8.7; this GPU is 9.0.*rebuild"):
        check_plan_compatible(meta, "10.3.0", "9.0", tmp_path / "decode.plan")


def test_an_edited_build_json_or_a_failed_parity_is_refused(int8_engine, tmp_path):
    """build.json carries its own sha256: a hand-edited precision is caught, and so is an engine whose recorded
    parity check failed; both errors name the build-engine command that rebuilds it."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(int8_engine, copy)
    build = json.loads((copy / "build.json").read_text())
    (copy / "build.json").write_text(json.dumps({**build, "precision": "fp32"}))
    with pytest.raises(QuambaEdgeError, match="changed after the build.*quamba-edge build-engine"):
        load_engine(copy)
    failed = {**build, "parity": {**build["parity"], "passed": False}}
    failed["build_sha256"] = engine_mod._digest(failed)
    (copy / "build.json").write_text(json.dumps(failed))
    with pytest.raises(QuambaEdgeError, match="did not pass its parity check"):
        load_engine(copy)


@pytest.mark.parametrize("spec", ["int8_artifact", "tiny_checkpoint"])
def test_external_data_engines_share_one_weight_file(spec, request, tmp_path):
    """The layout large models need (protobuf stops at 2 GiB): both graphs reference one weights.data, each
    tensor stored once, and the engine passes the same parity check and runs in bench's loop."""
    from quamba_edge.bench.report import measure_system

    source = request.getfixturevalue(spec)
    build = build_engine(source, tmp_path / "eng", external_data=True)
    assert build["external_data"] == "weights.data" and build["parity"]["passed"]
    assert set(build["files"]) == {"prefill.onnx", "decode.onnx", "weights.data"}
    graphs = {g: (tmp_path / "eng" / f"{g}.onnx").stat().st_size for g in ("prefill", "decode")}
    data = (tmp_path / "eng" / "weights.data").stat().st_size
    inline = build_engine(source, tmp_path / "inline", external_data=False)
    inline_decode = (tmp_path / "inline" / "decode.onnx").stat().st_size
    import onnx

    for g in graphs:  # the graphs hold structure and small constants; every tensor of 1 KiB or more is in the file
        proto = onnx.load(str(tmp_path / "eng" / f"{g}.onnx"), load_external_data=False)
        assert all(len(t.raw_data) < 1024 for t in proto.graph.initializer)
        assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert data < 1.2 * inline_decode  # shared: one copy of the weights, not one per graph
    assert inline["parity"]["cases"] and not inline.get("external_data")
    row, work, system = measure_system(str(tmp_path / "eng"), "cpu", 1, 1, batch=1, prompt_len=8, gen_len=3)
    assert row["decode_tok_s"] > 0 and row["decode_weights_gb_s"] > 0
    assert system["prefill"].shared is system["decode"].shared is not None  # one mapping for both sessions
    low, _, _ = measure_system(str(tmp_path / "eng"), "cpu", 1, 1, batch=1, prompt_len=8, gen_len=3,
                               prepack=False, against=(system, work, work.outputs(system)))
    assert low["check"]["passed"] and low["check"]["worst_rel_error"] < 1e-5  # same numbers without prepacking


def test_an_engine_too_big_for_the_board_is_refused_with_the_numbers(int8_artifact, tmp_path):
    """The fit check runs before any work: weights + states + the TensorRT workspace against the budget."""
    with pytest.raises(QuambaEdgeError, match=r"needs 1\.\d+ GB on tiny-board \(weights 0\.0\d+, states .* "
                                              r"workspace 1\.07\) but the board has 0\.50 GB usable"):
        build_engine(int8_artifact, tmp_path / "e", memory_budget=("tiny-board", 0.5e9))
    assert not (tmp_path / "e").exists()
    build_engine(int8_artifact, tmp_path / "e", memory_budget=("big-board", 8e9))  # fits: builds as usual


def test_mamba_2_8b_fits_an_orin_nano_8gb_in_int8_and_fp16_only_barely():
    """The numbers behind the board check at the paper's size (no model is built: shapes only): int8 needs
    under 70% of the 6.8 GB usable (embedding fp32 and a 1 GiB workspace included), fp16 over 95% of it."""
    from quamba_edge.backends.tensorrt import WORKSPACE_BYTES
    from quamba_edge.bench.devices import PROFILES, USABLE_FRACTION
    from quamba_edge.bench.roofline import parameter_counts
    from quamba_edge.families import mamba
    from quamba_edge.models.mamba import public_shape

    cfg = public_shape("mamba-2.8b")
    big, other = parameter_counts(cfg)
    usable = PROFILES["orin-nano-8gb"].memory_gb * 1e9 * USABLE_FRACTION
    limits = mamba.limits(cfg, max_batch=1)
    share = {}
    for precision, weight_bytes in (("int8", big + 4 * other), ("fp16", 2 * (big + other))):
        share[precision] = (weight_bytes + mamba.state_bytes(cfg, limits, precision) + WORKSPACE_BYTES) / usable
    assert share["int8"] < 0.7 and 0.95 < share["fp16"] <= 1.0, share  # measured: 0.63 and 0.98
