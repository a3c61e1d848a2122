"""calib/train_default.py: a bundled model's training can stop and continue (--state, --stop-after) and end with
the same weights as one uninterrupted run; a state written by a run with other options is refused by name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location("train_default",
                                              Path(__file__).parents[1] / "calib" / "train_default.py")
train_default = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_default)

SMALL = ["--arch", "mamba2", "--d-model", "32", "--n-layer", "1", "--d-state", "16", "--headdim", "16",
         "--steps", "6", "--batch", "2", "--seq-len", "32", "--eval-every", "2", "--threads", "1"]


def run(tmp_path: Path, name: str, extra: list[str], data) -> torch.nn.Module:
    args = train_default.parser().parse_args([*SMALL, "--out", str(tmp_path / name), *extra])
    return train_default.train_model(args, *data)


@pytest.fixture()
def data():
    gen = torch.Generator().manual_seed(7)
    return (torch.randint(0, 256, (4000,), generator=gen), "train-sha",
            torch.randint(0, 256, (1200,), generator=gen), "heldout-sha")


def test_a_run_stopped_and_continued_ends_where_an_uninterrupted_one_does(tmp_path, data):
    whole = run(tmp_path, "whole", [], data)
    state = tmp_path / "state.pt"
    first = run(tmp_path, "parts", ["--state", str(state), "--stop-after", "4"], data)
    assert torch.load(state, weights_only=True)["step"] == 4
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), whole.state_dict().values()))
    second = run(tmp_path, "parts", ["--state", str(state)], data)
    for (name, a), b in zip(whole.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    history = __import__("json").loads((tmp_path / "parts" / "training.json").read_text())["history"]
    assert [h["step"] for h in history] == [2, 4, 6]


def test_a_state_from_other_options_is_refused_by_name(tmp_path, data):
    state = tmp_path / "state.pt"
    run(tmp_path, "a", ["--state", str(state), "--stop-after", "2"], data)
    with pytest.raises(SystemExit, match=r"other options \(lr: \[0.002\]\).*Fix: pass that run's options"):
        run(tmp_path, "a", ["--state", str(state), "--lr", "0.001"], data)
