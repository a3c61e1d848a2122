"""benchmarks/jetson.sh and the steps behind it (benchmarks/jetson_run.py), run here with ONNX Runtime on the
CPU: every command the Jetson runs (calibrate, build-engine fp and int8, bench, estimate) is the real one,
only the backend and the device differ. What only a Jetson can check (TensorRT, power) is not claimed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.slow
def test_the_on_device_steps_write_one_result_file(tmp_path, monkeypatch):
    import jetson_run

    from quamba_edge.checkpoints.mamba import save_checkpoint

    from .conftest import make_model

    save_checkpoint(make_model(), tmp_path / "ckpt")
    text = tmp_path / "calib.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                    "must be in want of a wife. " * 40)
    monkeypatch.setenv("QUAMBA_EDGE_SYSROOT", str(tmp_path / "not-a-jetson"))
    out = tmp_path / "result.json"
    result = jetson_run.main(["--model", str(tmp_path / "ckpt"), "--backend", "ort", "--device", "cpu", "--target",
                              "cpu", "--calib-data", str(text), "--calib-samples", "4", "--seq-len", "32",
                              "--prompt-len", "16", "--gen-len", "4", "--repeats", "1", "--work",
                              str(tmp_path / "work"), "--out", str(out)])
    assert result["ok"], [s for s in result["steps"] if s["returncode"]]
    stored = json.loads(out.read_text())
    assert stored["kind"].startswith("dry run") and stored["profile"] is None
    assert [s["step"] for s in stored["steps"]] == ["calibrate", "build-engine fp32", "build-engine int8", "bench",
                                                    "estimate"]
    assert set(stored["engines"]) == {"fp32", "int8"}
    assert [r["precision"] for r in stored["bench"]["results"]] == ["fp32", "int8"]
    assert stored["int8_decode_speedup_vs_fp"] > 0
    assert {r["source"] for r in stored["estimate"]["estimates"]} == {str(tmp_path / "ckpt"), "mamba-2.8b"}
    assert stored["llama_cpp"]["skipped"]


def test_a_failed_step_is_recorded_not_lost(tmp_path, monkeypatch):
    import jetson_run

    monkeypatch.setenv("QUAMBA_EDGE_SYSROOT", str(tmp_path))
    out = tmp_path / "result.json"
    result = jetson_run.main(["--model", str(tmp_path / "missing"), "--backend", "ort", "--device", "cpu",
                              "--target", "cpu", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert not result["ok"]
    calibrate = json.loads(out.read_text())["steps"][0]
    assert calibrate["step"] == "calibrate" and calibrate["returncode"] != 0
    assert "missing" in calibrate["output_tail"]


def test_jetson_sh_refuses_a_machine_that_is_not_a_jetson(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/jetson.sh")], capture_output=True, text=True,
                          env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                               "QUAMBA_EDGE_SYSROOT": str(tmp_path)}, timeout=120)
    assert proc.returncode != 0
    assert "not a Jetson" in proc.stderr and "--backend ort --device cpu" in proc.stderr
