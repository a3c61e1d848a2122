"""The user's commands, end to end on a small checkpoint and text file written by the tests."""

import json

import pytest
from typer.testing import CliRunner

from quamba_edge.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_calibrate_eval_generate(tmp_path, tiny_checkpoint, text_file):
    out = tmp_path / "q"
    res = _run("calibrate", "--model", tiny_checkpoint, "--data", text_file, "--samples", 8, "--seq-len", 128,
               "--out", out)
    assert res.exit_code == 0, res.output
    assert "activation scales" in res.output and (out / "manifest.json").exists()

    res = _run("eval", out, "--data", text_file, "--seq-len", 128, "--max-samples", 4, "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout[res.stdout.index("{"):])
    assert result["recipe"] == "quamba" and result["samples"] == 4 and 0 < result["bits_per_byte"] < 9

    res = _run("generate", out, "--prompt", "Emma", "--max-new-tokens", 5)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Emma")


def test_calibrate_json_and_ablation_labels(tmp_path, tiny_checkpoint, text_file):
    res = _run("calibrate", "--model", tiny_checkpoint, "--data", text_file, "--samples", 2, "--seq-len", 64,
               "--no-hadamard", "--weight-granularity", "channel", "--out", tmp_path / "a", "--json")
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.stdout[res.stdout.index("{"):])
    assert manifest["recipe_label"] == "quamba-no-hadamard-channel"
    assert manifest["calibration"]["samples"] == 2 and len(manifest["calibration"]["digest"]) == 64


def test_too_many_samples_says_how_many_there_are(tmp_path, tiny_checkpoint, text_file):
    res = _run("calibrate", "--model", tiny_checkpoint, "--data", text_file, "--samples", 100000,
               "--out", tmp_path / "x")
    assert res.exit_code == 2
    assert "samples of 512" in res.output and "Fix: pass --samples" in res.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,message", [
    (["calibrate", "--model", "/no/such/dir"], "no such checkpoint directory"),
    (["calibrate", "--recipe", "smooth"], "unknown recipe"),
    (["eval", "/no/such/artifact"], "no such checkpoint directory"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, message):
    res = _run(*args, *(["--out", tmp_path / "o"] if args[0] == "calibrate" else []))
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output


def test_missing_data_path(tmp_path, tiny_checkpoint):
    res = _run("calibrate", "--model", tiny_checkpoint, "--data", tmp_path / "none.txt", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "no such data path" in res.output


def test_help_reads_well():
    for cmd in ("calibrate", "eval", "generate", "doctor"):
        res = _run(cmd, "--help")
        assert res.exit_code == 0 and "Usage" in res.output
    assert "Quamba" in _run("--help").output


def test_doctor_says_which_kernels_run():
    res = _run("doctor")
    assert res.exit_code == 0, res.output
    assert "kernels" in res.output and "cpu: cpu-twin" in res.output  # the twin builds on this machine
    assert "[gpu]" in res.output or "tensorrt" in res.output
