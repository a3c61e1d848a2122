"""Set models (AdaPool family) through the user's commands: checkpoint -> calibrate -> artifact.

The CLI picks the family from the checkpoint; the tests write their own checkpoints and set files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from quamba_edge.checkpoints.adapool import save_set_checkpoint
from quamba_edge.cli import app
from quamba_edge.data.sets import load_sets, save_sets
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.families.registry import load
from quamba_edge.models.adapool import SetModel, SetModelConfig, init_set_model
from quamba_edge.quant.static import QuantizedLinear

runner = CliRunner()
CFG = SetModelConfig(d_in=6, d_model=32, n_heads=4, n_layers=2, d_ff=48, d_out=3, pool="adapool")


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def set_checkpoint(tmp_path):
    model = init_set_model(SetModel(CFG), seed=0)
    with torch.no_grad():  # a trained model's weights are larger than the N(0, 0.02) init
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(5.0)
    return save_set_checkpoint(model, tmp_path / "ckpt"), model


@pytest.fixture
def set_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 12, 6)).astype(np.float32)
    mask = np.ones((96, 12), dtype=bool)
    mask[::3, 9:] = False
    path = tmp_path / "sets.npz"
    save_sets(path, x, mask, rng.normal(size=(96, 3)).astype(np.float32))
    return path


def test_calibrate_a_set_model_from_the_cli(tmp_path, set_checkpoint, set_file):
    ckpt, fp_model = set_checkpoint
    res = _run("calibrate", "--model", ckpt, "--data", set_file, "--samples", 64, "--out", tmp_path / "art")
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["family"] == "adapool" and manifest["recipe_label"] == "naive"
    assert manifest["calibration"]["samples"] == 64 and len(manifest["scales"]) == 18  # 2 x 6 + embed, head, pool 4
    loaded = load(tmp_path / "art")
    assert sum(isinstance(m, QuantizedLinear) for m in loaded.model.modules()) == 18
    sets = load_sets(set_file, 6)
    with torch.no_grad():
        ref, out = fp_model(sets.x, sets.mask), loaded.model(sets.x, sets.mask)
    assert ((out - ref).norm() / ref.norm()).item() < 0.05
    assert load(ckpt).model.cfg == CFG  # the checkpoint itself loads as the fp model


def test_set_calibration_bad_input(tmp_path, set_checkpoint):
    ckpt, _ = set_checkpoint
    res = _run("calibrate", "--model", ckpt, "--out", tmp_path / "a")
    assert res.exit_code != 0 and "--data SETS.npz" in res.output
    bad = tmp_path / "nan.npz"
    x = np.zeros((4, 5, 6), np.float32)
    x[1, 2, 3] = np.nan
    save_sets(bad, x)
    res = _run("calibrate", "--model", ckpt, "--data", bad, "--out", tmp_path / "b")
    assert res.exit_code != 0 and "NaN" in res.output
    save_sets(bad, np.zeros((4, 5, 7), np.float32))
    res = _run("calibrate", "--model", ckpt, "--data", bad, "--out", tmp_path / "c")
    assert res.exit_code != 0 and "(batch, n, 6)" in res.output
    with pytest.raises(QuambaEdgeError, match="no array named x"):
        np.savez(tmp_path / "other.npz", sets=np.zeros(3))
        load_sets(tmp_path / "other.npz", 6)
    (ckpt / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(QuambaEdgeError, match="safetensors"):
        load(ckpt)


def test_build_engine_and_bench_for_set_models(tmp_path, set_checkpoint, set_file):
    """calibrate -> build-engine (ONNX with Q/DQ, parity against PyTorch) -> bench at batch 1 and 32."""
    ckpt, _ = set_checkpoint
    res = _run("calibrate", "--model", ckpt, "--data", set_file, "--samples", 64, "--out", tmp_path / "art")
    assert res.exit_code == 0, res.output
    for src, out in ((tmp_path / "art", tmp_path / "e8"), (ckpt, tmp_path / "e32")):
        res = _run("build-engine", src, "--out", out, "--json")
        assert res.exit_code == 0, res.output
        build = json.loads(res.output)
        assert build["family"] == "adapool" and build["parity"]["passed"]
        assert build["parity"]["cases"][0]["rel_error"] < build["parity"]["tolerance"]
    assert json.loads((tmp_path / "e8" / "build.json").read_text())["precision"] == "int8"
    for batch in (1, 32):
        out = tmp_path / f"bench{batch}.json"
        res = _run("bench", tmp_path / "e8", tmp_path / "e32", tmp_path / "art", "--batch", batch, "--set-size", 16,
                   "--repeats", 2, "--json", out)
        assert res.exit_code == 0, res.output
        rows = json.loads(out.read_text())["results"]
        assert [r["precision"] for r in rows] == ["int8", "fp32", "int8"]
        assert all(r["batch"] == batch and r["ms_per_batch"] > 0 for r in rows)
    res = _run("build-engine", tmp_path / "art", "--backend", "tensorrt", "--target", "cuda", "--out", tmp_path / "t")
    assert res.exit_code != 0 and ("TensorRT" in res.output)


def test_eval_scores_set_models(tmp_path, set_checkpoint, set_file):
    ckpt, model = set_checkpoint
    res = _run("eval", ckpt, "--data", set_file, "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout[res.stdout.index("{"):])  # after the progress bar
    sets = load_sets(set_file, 6)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(model(sets.x, sets.mask), sets.y).item()
    assert result["samples"] == 96 and abs(result["mse"] - expected) < 1e-6
    res = _run("eval", ckpt)
    assert res.exit_code != 0 and "SETS.npz" in res.output
