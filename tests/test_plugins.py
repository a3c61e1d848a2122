"""export/plugins.py: the portable int8 graph with its conv and scan regions replaced by TensorRT plugin
nodes has the same inputs, outputs and numbers.

No TensorRT runtime exists here, so the rewritten graph runs in ONNX's reference evaluator with the
two plugin ops implemented by the CPU twins of the kernels the plugins run (csrc/cpu, same math as
csrc/cuda), and is compared with the unrewritten graph in the same evaluator.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import quamba_edge.kernels as kernels
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.export.mamba import export_mamba
from quamba_edge.export.plugins import PLUGIN_DOMAIN, plugin_counts, rewrite
from quamba_edge.models.mamba import MambaConfig
from quamba_edge.quant.quamba import calibrate
from quamba_edge.quant.recipes import make_recipe

from .conftest import make_model


def _t(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, order="C", copy=True))


class QuambaConv1dSiLU(OpRun):
    op_domain = PLUGIN_DOMAIN

    def _run(self, x, conv_state, d_inner=None, width=None, weight=None, bias=None, weight_scale=None, scales=None,
             plugin_namespace=None, plugin_version=None):
        assert plugin_namespace == "quamba_edge" and plugin_version == "1"
        u, state = kernels.ops.conv1d_silu(_t(x), _t(conv_state), _t(weight).reshape(d_inner, width), _t(bias),
                                           torch.tensor(weight_scale, dtype=torch.float32),
                                           torch.tensor(scales, dtype=torch.float32))
        return u.numpy(), state.numpy()


class QuambaSelectiveScan(OpRun):
    op_domain = PLUGIN_DOMAIN

    def _run(self, u, delta, B, C, z, ssm_state, d_inner=None, d_state=None, scales=None, A_log=None, D=None,
             delta_bias=None, plugin_namespace=None, plugin_version=None):
        y, state = kernels.ops.selective_scan(_t(u), _t(delta), _t(B), _t(C), _t(z),
                                              _t(A_log).reshape(d_inner, d_state), _t(D), _t(delta_bias),
                                              torch.tensor(scales, dtype=torch.float32), _t(ssm_state))
        return y.numpy(), state.numpy()


@pytest.fixture(scope="module")
def qmodel():
    kernels.load(require=True)
    cfg = MambaConfig(d_model=48, n_layer=2, vocab_size=256, d_state=8)  # d_inner 96 = 12 * 8: H_12 rotation
    gen = torch.Generator().manual_seed(0)
    model, _ = calibrate(make_model(cfg), [torch.randint(0, 256, (2, 32), generator=gen) for _ in range(2)],
                         make_recipe("quamba"))
    return model


def evaluator(proto: onnx.ModelProto, **kwargs) -> ReferenceEvaluator:
    """onnx.reference implements QuantizeLinear/DequantizeLinear from opset 19 on; for int8 with a zero
    point (all this graph uses) opsets 17 and 19 define the same function, so evaluate it as 19."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for opset in copy.opset_import:
        if opset.domain == "":
            opset.version = 19
    return ReferenceEvaluator(copy, **kwargs)


def rel_err(a, b) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("kind", ["prefill", "decode"])
def test_rewrite_keeps_inputs_outputs_and_numbers(qmodel, kind):
    portable = export_mamba(qmodel, kind, activations="int8")
    fused = rewrite(portable, qmodel)
    onnx.checker.check_model(fused)
    assert plugin_counts(fused) == {"QuambaConv1dSiLU": 2, "QuambaSelectiveScan": 2}
    ops = collections.Counter(n.op_type for n in fused.graph.node)
    assert ops["Scan"] == 0 and ops["Softplus"] == 0 and ops["Exp"] == 0 and ops["Sigmoid"] == 0
    assert [i.name for i in fused.graph.input] == [i.name for i in portable.graph.input]
    assert [o.name for o in fused.graph.output] == [o.name for o in portable.graph.output]
    assert len(fused.graph.node) < len(portable.graph.node)

    cfg = qmodel.cfg
    gen = np.random.default_rng(1)
    with torch.no_grad():
        if kind == "prefill":
            feeds = {"input_ids": gen.integers(0, 256, (2, 12), dtype=np.int64)}
            logits, conv, ssm = qmodel.step(torch.from_numpy(feeds["input_ids"]))
        else:
            _, conv0, ssm0 = qmodel.step(torch.from_numpy(gen.integers(0, 256, (2, 9), dtype=np.int64)))
            feeds = {"input_ids": gen.integers(0, 256, (2, 1), dtype=np.int64), "conv_state_in": conv0.numpy(),
                     "ssm_state_in": ssm0.numpy()}
            logits, conv, ssm = qmodel.step(torch.from_numpy(feeds["input_ids"]), conv0, ssm0)
    names = [o.name for o in portable.graph.output]
    got = dict(zip(names, evaluator(fused, new_ops=[QuambaConv1dSiLU, QuambaSelectiveScan]).run(None, feeds)))
    # Against the PyTorch reference (the ground truth of every backend): equal up to rounding ties.
    assert got["logits"].shape == (2, cfg.vocab_size)
    assert rel_err(got["logits"], logits[:, -1].numpy()) < 1e-3
    assert rel_err(got["ssm_state"], ssm.numpy()) < 1e-3
    assert np.abs(got["conv_state"].astype(int) - conv.numpy().astype(int)).max() <= 1
    if kind == "decode":  # the evaluator runs the portable decode graph too (its prefill Scan it cannot)
        expected = dict(zip(names, evaluator(portable).run(None, feeds)))
        assert rel_err(got["logits"], expected["logits"]) < 1e-3
        assert rel_err(got["ssm_state"], expected["ssm_state"]) < 1e-3


def test_rewrite_refuses_graphs_without_regions(qmodel):
    with pytest.raises(QuambaEdgeError, match="no plugin regions"):
        rewrite(export_mamba(qmodel, "prefill", activations="uint8"), qmodel)


def test_plugin_library_lookup_names_the_fix(tmp_path, monkeypatch):
    from quamba_edge.backends.tensorrt import plugin_library

    monkeypatch.setenv("QUAMBA_EDGE_TRT_PLUGINS", str(tmp_path / "missing.so"))
    assert plugin_library() is None
    with pytest.raises(QuambaEdgeError, match="cmake -S csrc -B build/trt"):
        plugin_library(required=True)
    lib = tmp_path / "libquamba_edge_trt.so"
    lib.write_bytes(b"\x7fELF")
    monkeypatch.setenv("QUAMBA_EDGE_TRT_PLUGINS", str(lib))
    assert plugin_library(required=True) == lib.resolve()


def test_plugins_on_needs_tensorrt_int8(tmp_path):
    from quamba_edge.engine import build_engine

    with pytest.raises(QuambaEdgeError, match="--plugins on needs --backend tensorrt"):
        build_engine("default", tmp_path / "e", backend="ort", plugins="on")
    with pytest.raises(QuambaEdgeError, match="--plugins must be one of"):
        build_engine("default", tmp_path / "e", plugins="maybe")
