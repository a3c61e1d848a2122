"""benchmarks/adapool_snr.py: the data follow the paper's definition, and a tiny run writes its JSON and plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import adapool_snr  # noqa: E402


def test_knn_targets_exclude_the_query_and_use_euclidean_distance():
    x = np.zeros((1, 5, 2), np.float32)
    x[0, :, 0] = [0.0, 3.0, -1.0, 2.0, 10.0]  # distances to vector 0: 3, 1, 2, 10
    assert np.allclose(adapool_snr.knn_targets(x, 1), [[-1.0, 0.0]])
    assert np.allclose(adapool_snr.knn_targets(x, 2), [[0.5, 0.0]])
    assert np.allclose(adapool_snr.knn_targets(x, 4), [[3.5, 0.0]])  # every other vector, never vector 0


def test_generated_sets_match_the_papers_reference_errors():
    """The two constant predictors score what the paper's plotting script hard-codes (to ~2 digits)."""
    x = adapool_snr.generate_sets(4000, np.random.default_rng(42))
    assert x.shape == (4000, 128, 16) and x.dtype == np.float32
    y1, y32 = adapool_snr.knn_targets(x, 1), adapool_snr.knn_targets(x, 32)
    mse = lambda a, b: float(((a - b) ** 2).mean())  # noqa: E731
    assert abs(mse(x.mean(1), y1) - 0.093) < 0.006 and abs(mse(x[:, 0], y1) - 0.058) < 0.005
    assert abs(mse(x.mean(1), y32) - 0.0195) < 0.002 and abs(mse(x[:, 0], y32) - 0.059) < 0.005


def test_a_tiny_run_writes_rows_and_a_plot(tmp_path):
    out, plot = tmp_path / "snr.json", tmp_path / "snr.png"
    assert adapool_snr.main(["--train", "64", "--test", "32", "--epochs", "1", "--ks", "1,128",
                             "--methods", "adapool,avg", "--threads", "1", "--out", str(out), "--plot", str(plot),
                             "--save-dir", str(tmp_path / "models")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["method"], r["k"], r["precision"]) for r in rows} == {
        (m, k, p) for m in ("adapool", "avg") for k in (1, 128) for p in ("fp32", "int8")}
    assert all({"snr", "test_mse"} <= r.keys() and r["test_mse"] >= 0 for r in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "models" / "adapool-k1" / "config.json").exists()
    assert (tmp_path / "models" / "knn128-test.npz").exists()
