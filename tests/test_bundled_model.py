"""The bundled default model: shape, size, provenance, and that it is a trained model that quantizes."""

import hashlib
import json

import torch

from quamba_edge.checkpoints.mamba import load_mamba
from quamba_edge.data import austen
from quamba_edge.data.text import read_text, take_windows
from quamba_edge.data.tokenizers import ByteTokenizer
from quamba_edge.evaluate import evaluate_lm
from quamba_edge.paths import DEFAULT_MODEL_DIR
from quamba_edge.quant.hadamard import factor
from quamba_edge.quant.quamba import calibrate
from quamba_edge.quant.recipes import make_recipe


def test_shape_size_and_provenance():
    model = load_mamba("default")
    assert model.cfg.vocab_size == 256
    assert factor(model.cfg.d_inner)[0] == 12, "the default run must exercise a non-power-of-two Hadamard"
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size <= 25 * 2**20
    info = json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())
    assert {"seed", "steps", "command", "history"} <= info.keys()
    train = b"".join(p.read_bytes() for p in austen.train_text_files())
    assert info["train_text_sha256"] == hashlib.sha256(train).hexdigest()


def test_trained_and_quantizes_sensibly():
    torch.set_num_threads(2)
    model = load_mamba("default")
    tok = ByteTokenizer()
    heldout = take_windows(tok.encode(read_text("default-heldout")), 4, 256).tokens
    calib = take_windows(tok.encode(read_text("default")), 8, 256).tokens
    fp = evaluate_lm(model, heldout, tok.byte_lengths())
    assert fp["bits_per_byte"] < 3.0, "an untrained byte model scores 8 bits/byte"
    qmodel, _ = calibrate(model, [calib], make_recipe("quamba"))
    q = evaluate_lm(qmodel, heldout, tok.byte_lengths())
    assert q["bits_per_byte"] < fp["bits_per_byte"] * 1.05, (q, fp)


def test_the_bundled_mamba2_is_trained_and_its_w8a8_holds():
    from quamba_edge.checkpoints.mamba2 import load_mamba2
    from quamba_edge.paths import BUNDLED_MODELS
    from quamba_edge.quant.quamba2 import calibrate as calibrate_quamba2
    from quamba_edge.quant.recipes import Quamba2

    torch.set_num_threads(2)
    model = load_mamba2("default-mamba2")
    assert model.cfg.vocab_size == 256 and model.cfg.ngroups > 1, "the bundled run must exercise per-group scales"
    assert factor(model.cfg.d_inner)[0] == 12
    directory = BUNDLED_MODELS["default-mamba2"]
    assert (directory / "model.safetensors").stat().st_size <= 25 * 2**20
    info = json.loads((directory / "training.json").read_text())
    train = b"".join(p.read_bytes() for p in austen.train_text_files())
    assert info["train_text_sha256"] == hashlib.sha256(train).hexdigest() and "--arch mamba2" in info["command"]
    tok = ByteTokenizer()
    heldout = take_windows(tok.encode(read_text("default-heldout")), 4, 256).tokens
    calib = take_windows(tok.encode(read_text("default")), 8, 256).tokens
    fp = evaluate_lm(model, heldout, tok.byte_lengths())
    assert fp["bits_per_byte"] < 3.0, "an untrained byte model scores 8 bits/byte"
    qmodel, _ = calibrate_quamba2(model, [calib], Quamba2())
    q = evaluate_lm(qmodel, heldout, tok.byte_lengths())
    assert q["bits_per_byte"] < fp["bits_per_byte"] * 1.05, (q, fp)
