"""The ONNX graphs, run in ONNX Runtime, against the PyTorch reference (DESIGN.md tolerances)."""

import copy

import numpy as np
import onnx
import pytest
import torch

from quamba_edge.backends import ort as ort_backend
from quamba_edge.backends.compare import check, rel_error
from quamba_edge.export.mamba import export_mamba
from quamba_edge.families import mamba as mamba_family
from quamba_edge.quant.hadamard import rotate
from quamba_edge.quant.quamba import calibrate
from quamba_edge.quant.recipes import make_recipe

from .conftest import TINY, make_model


def _runners(model, dtype=torch.float32, activations="int8", probes=False):
    int8 = hasattr(model, "recipe")
    return {g: ort_backend.OrtRunner(export_mamba(model, g, dtype, probes=probes, activations=activations)
                                     .SerializeToString(), int8=int8, activations=activations)
            for g in ("prefill", "decode")}


def check_mamba(model, prefill, decode, precision, **options):
    """End-to-end parity of the two graphs: Mamba's parity cases through the one comparator."""
    return check({"prefill": prefill, "decode": decode}, mamba_family.parity(model, precision, **options), precision)


def check_layers(model, prefill, decode, report):
    """Layer-by-layer parity on the probe graphs, added to `report`."""
    return check({"prefill": prefill, "decode": decode}, mamba_family.layer_parity(model), report.precision, report)


@pytest.fixture(scope="module")
def quantized():
    model = make_model()
    batches = [torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(3))]
    return calibrate(model, batches, make_recipe("quamba"))[0]


@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_graphs_match_the_reference_at_two_prompt_lengths(batch):
    model = make_model(seed=5)
    run = _runners(model)
    report = check_mamba(model, run["prefill"], run["decode"], "fp32", batch=batch, lengths=(3, 70))
    assert report.passed, report.worst
    assert max(c["rel_error"] for c in report.cases) < 1e-5


def test_fp16_graphs_match_fp16_weights_within_1e_3():
    model = make_model(seed=6)
    run = _runners(model, torch.float16)
    report = check_mamba(model, run["prefill"], run["decode"], "fp16")
    assert report.passed, report.worst
    original = make_model(seed=6)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values())), \
        "the parity check must not round the caller's model"


@pytest.mark.parametrize("activations", ["int8", "uint8"])
def test_int8_graphs_match_layer_by_layer(quantized, activations):
    run = _runners(quantized, activations=activations)
    report = check_mamba(quantized, run["prefill"], run["decode"], "int8")
    probe = _runners(quantized, activations=activations, probes=True)
    check_layers(quantized, probe["prefill"], probe["decode"], report)
    assert report.passed, report.worst
    layer_cases = [c for c in report.cases if c["case"].startswith("layer")]
    assert layer_cases and all(c.get("max_step", 0) <= 1 for c in layer_cases)


def test_a_wrong_scale_fails_the_parity_check(quantized):
    broken = copy.deepcopy(quantized)
    broken.layers[0].mixer.x_proj.weight_scale.mul_(1.25)
    probe = _runners(broken, probes=True)
    run = _runners(broken)
    report = check_mamba(quantized, run["prefill"], run["decode"], "int8")
    check_layers(quantized, probe["prefill"], probe["decode"], report)
    assert not report.passed
    assert report.worst["excess"] > 3


def test_int8_matmuls_run_as_integer_kernels_in_onnx_runtime(quantized):
    for activations in ("int8", "uint8"):
        graph = export_mamba(quantized, "decode", activations=activations).SerializeToString()
        counts = ort_backend.optimized_op_counts(graph, int8=True, activations=activations)
        kernels = ort_backend.integer_kernels(counts)
        assert kernels.get("QLinearMatMul") == 3 * TINY.n_layer  # in_proj, x_proj, dt_proj
        assert kernels.get("MatMulIntegerToFloat") == TINY.n_layer  # out_proj into the fp32 residual


def test_graph_structure_is_portable(quantized):
    prefill = export_mamba(quantized, "prefill")
    decode = export_mamba(quantized, "decode")
    for graph in (prefill, decode):
        onnx.checker.check_model(graph, full_check=True)
        assert {node.domain for node in graph.graph.node} == {""}, "standard ONNX ops only"
        for node in graph.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                zero_point = onnx.numpy_helper.to_array(
                    next(i for i in graph.graph.initializer if i.name == node.input[2]))
                assert zero_point.dtype == np.int8 and zero_point.item() == 0, "symmetric int8 only"
    ops = [n.op_type for n in prefill.graph.node]
    assert ops.count("Scan") == TINY.n_layer
    assert "Scan" not in [n.op_type for n in decode.graph.node]
    inputs = {i.name: i.type.tensor_type.shape.dim for i in prefill.graph.input}
    assert [d.dim_param for d in inputs["input_ids"]] == ["batch", "seq"], "batch and prompt length are dynamic"


def test_onnx_hadamard_equals_the_reference_rotation():
    """The exported rotation (a chain of small matmuls) against `rotate`, at sizes with 1, 2 and 3 factors."""
    from quamba_edge.export.mamba import MambaGraph

    for n in (96, 768, 5120):
        model = make_model()
        graph = MambaGraph(model, "prefill", torch.float32)
        g = graph.g
        g.input("y", onnx.TensorProto.FLOAT, ["b", "l", n])
        out = graph.hadamard("y", n)
        g.output(out, "out", onnx.TensorProto.FLOAT, ["b", "l", n])
        proto = g.model("hadamard", {})
        session = ort_backend.make_session(proto.SerializeToString())
        y = torch.randn(2, 3, n, generator=torch.Generator().manual_seed(n))
        got = ort_backend.run(session, {"y": y.numpy()})["out"]
        assert rel_error(got, rotate(y, n).numpy()) < 1e-6


def test_int8_head_graph_matches_and_runs_the_head_in_int8():
    model = make_model(seed=2)
    batches = [torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(4))]
    qmodel = calibrate(model, batches, make_recipe("quamba", int8_head=True))[0]
    assert qmodel.recipe.label == "quamba-int8-head"
    run = _runners(qmodel, activations="uint8")
    report = check_mamba(qmodel, run["prefill"], run["decode"], "int8")
    probe = _runners(qmodel, activations="uint8", probes=True)
    check_layers(qmodel, probe["prefill"], probe["decode"], report)
    assert report.passed, report.worst
    assert any(c["case"].startswith("norm + head") and c["judged"] for c in report.cases)
    graph = export_mamba(qmodel, "decode", activations="uint8").SerializeToString()
    kernels = ort_backend.integer_kernels(ort_backend.optimized_op_counts(graph, int8=True, activations="uint8"))
    assert kernels.get("MatMulIntegerToFloat") == TINY.n_layer + 1  # out_proj per layer + the head
