"""The quality benchmark's own code runs (on a tiny model; the real figures come from `make quality`)."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("quality", Path(__file__).parents[1] / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_quality_rows_and_json(tmp_path, tiny_checkpoint, text_file):
    out = tmp_path / "q.json"
    rows = quality.main([
        "--all-recipes", "--base", str(tiny_checkpoint), "--calib-data", str(text_file), "--samples", "4",
        "--seq-len", "64", "--data", str(text_file), "--max-samples", "3", "--workdir", str(tmp_path / "w"),
        "--out", str(out),
    ])
    labels = [r["recipe"] for r in rows]
    assert labels == ["fp", "naive", "quamba", "quamba-no-hadamard", "quamba-no-percentile", "quamba-int8-head"]
    saved = json.loads(out.read_text())
    assert [r["recipe"] for r in saved["rows"]] == labels
    assert all({"recipe", "bits_per_byte", "token_accuracy", "data"} <= r.keys() for r in saved["rows"])
    assert saved["rows"][0]["bpb_rel_to_fp"] == 0.0
    assert "| quamba |" in quality.markdown_table(rows)
