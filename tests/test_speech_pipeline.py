"""The keyword spotter through the user's commands: W8A8 layers against their dequantize-compute
references, the ONNX graphs in ONNX Runtime against PyTorch, calibrate / build-engine / bench / eval /
spot on a small model and audio the tests write, and the bad inputs each command must refuse clearly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from quamba_edge.backends import ort as ort_backend
from quamba_edge.backends.compare import check
from quamba_edge.checkpoints.wav2vec2 import load_kws, save_kws
from quamba_edge.cli import app
from quamba_edge.data.speech import VOCAB, write_wav
from quamba_edge.export.wav2vec2 import export_keyword_spotter
from quamba_edge.families import wav2vec2 as kws_family
from quamba_edge.families.registry import load
from quamba_edge.io import sha256_file
from quamba_edge.models.kws import KeywordSpotter, KwsConfig
from quamba_edge.models.pooling import POOLS
from quamba_edge.models.wav2vec2 import PositionalConv, Wav2Vec2Config, Wav2Vec2Encoder
from quamba_edge.quant.int8 import dequantize, quantize, quantize_weight, scale_from_amax
from quamba_edge.quant.recipes import StaticW8A8
from quamba_edge.quant.static import QuantizedConv1d, QuantizedPositionalConv, quantize_static
from quamba_edge.train.kws import accuracy_with_ci

runner = CliRunner()
LABELS = ("zero", "one", "two", "hello")
SMALL = {**Wav2Vec2Config.tiny().to_dict(), "conv_dim": (32, 32, 32, 32), "hidden_size": 32, "num_layers": 2,
         "num_heads": 2, "ffn_dim": 64, "pos_conv_kernel": 8, "pos_conv_groups": 4}



def quantize_speech_model(model, windows, conv_features: bool = False):
    """Static W8A8 of a keyword spotter (the conv feature encoder float unless `conv_features`)."""
    return quantize_static(model, [(w,) for w in windows], StaticW8A8(int8_conv_features=conv_features), data="audio")


def check_speech(model, run, precision: str, samples: int):
    """The keyword spotter's parity cases (int8: layer by layer on the probe graph) through the comparator."""
    cases = (kws_family.layer_parity(model, samples=samples) if precision == "int8"
             else kws_family.parity(model, precision, samples=samples))
    return check({"model": run}, cases, precision)

def small_kws(pool: str = "adapool", seed: int = 0) -> KeywordSpotter:
    torch.manual_seed(seed)
    encoder = Wav2Vec2Encoder(Wav2Vec2Config.from_dict(SMALL))
    return KeywordSpotter(encoder, KwsConfig(labels=LABELS, pool=pool, n_heads=2)).eval()


def speechlike(batch: int, samples: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    return 0.1 * torch.randn(batch, samples, generator=gen) * (0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t))


def ort_run(proto, activations: str = "int8"):

    return ort_backend.OrtRunner(proto.SerializeToString(), threads=1, int8=True, target="cpu",
                                    activations=activations)


# --------------------------------------------------------------------------------------- W8A8 layers


@pytest.mark.parametrize("c_in,c_out,k,stride,pad,groups,gran", [
    (1, 8, 10, 5, 0, 1, "tensor"), (8, 8, 3, 2, 0, 1, "channel"), (8, 8, 4, 1, 2, 4, "tensor"), (6, 6, 5, 1, 2, 3,
                                                                                                  "channel")])
def test_int8_conv_is_the_dequantized_conv(c_in, c_out, k, stride, pad, groups, gran):
    """int32 accumulation is exact, so the int8 conv equals the float conv of the dequantized input and
    weight up to float summation order."""
    torch.manual_seed(1)
    w, b, x = torch.randn(c_out, c_in // groups, k), torch.randn(c_out), torch.randn(2, c_in, 57)
    conv = QuantizedConv1d(c_in, c_out, k, stride=stride, padding=pad, groups=groups, bias=True, granularity=gran)
    w_q, w_s = quantize_weight(w, gran)
    conv.weight.copy_(w_q)
    conv.weight_scale.copy_(w_s.reshape(conv.weight_scale.shape))
    conv.in_scale.copy_(scale_from_amax(x.abs().max() * 0.8))  # some inputs clip
    conv.bias.copy_(b)
    ref = F.conv1d(dequantize(quantize(x, conv.in_scale), conv.in_scale), w_q.float() * w_s.reshape(-1, 1, 1)
                   if w_s.numel() > 1 else w_q.float() * w_s, b, stride=stride, padding=pad, groups=groups)
    got = conv(x)
    assert got.shape == ref.shape
    assert (got - ref).norm() / ref.norm() < 1e-6


def test_int8_positional_conv_keeps_the_even_kernel_trim():
    torch.manual_seed(2)
    pos = PositionalConv(16, 8, 4)
    torch.nn.init.normal_(pos.weight_v)
    torch.nn.init.constant_(pos.weight_g, 1.0)
    x = torch.randn(2, 30, 16)
    q = QuantizedPositionalConv(pos, "tensor")
    w_q, w_s = quantize_weight(pos.weight.detach())
    q.conv.weight.copy_(w_q)
    q.conv.weight_scale.copy_(w_s)
    q.conv.in_scale.copy_(scale_from_amax(x.abs().max()))
    q.conv.bias.copy_(pos.bias.detach())
    ref = pos(x)
    got = q(x)
    assert got.shape == ref.shape == x.shape
    assert (got - ref).norm() / ref.norm() < 0.05  # int8 noise only; a lost trim or a shift is O(1)


def test_calibration_covers_every_linear_and_conv_and_refuses_nan():
    model = small_kws()
    qmodel, amax = quantize_speech_model(model, [speechlike(2, 8000, 3)], conv_features=True)
    n_conv = len(SMALL["conv_dim"]) + 1  # the feature convs and the positional conv
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert len(amax) == n_conv + n_linear and all(a > 0 for a in amax.values())
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, PositionalConv)) for m in qmodel.modules())
    # by default the conv feature encoder stays float, and only it
    qmodel, amax = quantize_speech_model(model, [speechlike(2, 8000, 3)])
    assert len(amax) == 1 + n_linear and not any("feature_encoder" in name for name in amax)
    floats = [name for name, m in qmodel.named_modules()
              if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, PositionalConv))]
    assert floats == [f"encoder.feature_encoder.conv_layers.{i}.conv" for i in range(len(SMALL["conv_dim"]))]
    bad = speechlike(1, 8000, 4)
    bad[0, 100] = float("nan")
    with pytest.raises(Exception, match="NaN"):
        quantize_speech_model(model, [bad])


# ----------------------------------------------------------------------------------- ONNX graphs in ORT


@pytest.mark.parametrize("pool", POOLS)
def test_fp32_graph_matches_pytorch(pool):
    model = small_kws(pool)

    run = ort_backend.OrtRunner(export_keyword_spotter(model).SerializeToString(), threads=1)
    report = check_speech(model, run, "fp32", samples=12000)
    assert report.passed, report.cases


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("activations", ["int8", "uint8"])
@pytest.mark.parametrize("conv_features", [False, True])
def test_int8_graph_matches_the_int8_model_layer_by_layer(pool, activations, conv_features):
    model = small_kws(pool)
    qmodel, _ = quantize_speech_model(model, [speechlike(2, 12000, 5)], conv_features=conv_features)
    report = check_speech(qmodel, ort_run(export_keyword_spotter(qmodel, activations, probes=True), activations),
                          "int8", samples=12000)
    assert report.passed, [c for c in report.cases if c["excess"] > 1]
    assert report.cases[0]["top1_agreement"] == 1.0


def test_a_wrong_scale_in_the_graph_fails_the_parity_check():
    model = small_kws("avg")
    qmodel, _ = quantize_speech_model(model, [speechlike(2, 12000, 5)], conv_features=True)
    broken = export_keyword_spotter(qmodel, "uint8", probes=True)
    # the second conv's input scale, as the exporter wrote it, doubled
    qnodes = [n for n in broken.graph.node if n.op_type == "QuantizeLinear"]
    scale_name = qnodes[1].input[1]
    from onnx import numpy_helper

    init = next(i for i in broken.graph.initializer if i.name == scale_name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, scale_name))
    report = check_speech(qmodel, ort_run(broken, "uint8"), "int8", samples=12000)
    assert not report.passed


# ------------------------------------------------------------------------------ checkpoints and the CLI


@pytest.fixture(scope="module")
def kws_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("kws")
    save_kws(small_kws("adapool"), root / "ckpt")
    return root


def test_kws_checkpoint_round_trip(kws_dir):
    model = load_kws(kws_dir / "ckpt")
    ref = small_kws("adapool")
    x = speechlike(2, 12000, 6)
    assert torch.equal(model(x), ref(x))
    assert model.cfg.labels == LABELS


def test_an_encoder_without_a_head_is_refused_with_the_fix(tmp_path):
    from quamba_edge.checkpoints.wav2vec2 import save_wav2vec2

    enc = Wav2Vec2Encoder(Wav2Vec2Config.from_dict(SMALL))
    save_wav2vec2(enc, enc.cfg, tmp_path / "enc")
    res = runner.invoke(app, ["build-engine", str(tmp_path / "enc"), "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "keyword-spotting head" in res.output


def _wavs(directory: Path, n: int, seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        audio = speechlike(1, int(seconds * rate), seed + i)[0].numpy()
        write_wav(directory / f"{i}.wav", audio, rate)
        out.append(directory / f"{i}.wav")
    return out



def test_calibrate_keeps_the_conv_features_float_unless_asked_and_old_artifacts_name_the_rebuild(kws_dir, tmp_path):

    calib = tmp_path / "calib"
    _wavs(calib, 2, seconds=3.0)
    feature_convs = [f"encoder.feature_encoder.conv_layers.{i}.conv" for i in range(len(SMALL["conv_dim"]))]
    for flag, quantized in (([], False), (["--int8-conv-features"], True)):
        art = tmp_path / f"art-{quantized}"
        res = runner.invoke(app, ["calibrate", "--model", str(kws_dir / "ckpt"), "--data", str(calib),
                                  "--samples", "4", "--out", str(art), *flag])
        assert res.exit_code == 0, res.output
        manifest = json.loads((art / "manifest.json").read_text())
        assert manifest["recipe"]["int8_conv_features"] is quantized
        model = load(art).model
        assert all(isinstance(model.get_submodule(n), QuantizedConv1d) is quantized for n in feature_convs)
        assert isinstance(model.encoder.pos_conv, QuantizedPositionalConv)
    # an artifact of the previous format (v1: an untyped recipe) is refused with the command that rebuilds it,
    # and that command works
    manifest["format_version"] = 1
    (art / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["eval", str(art)], env={"COLUMNS": "400"})
    assert res.exit_code == 2 and "format v1" in res.output
    command = " ".join(res.output.split()).split("`")[1].split()
    assert command[:2] == ["quamba-edge", "calibrate"] and "--int8-conv-features" in command
    res = runner.invoke(app, command[1:])
    assert res.exit_code == 0, res.output
    model = load(art).model
    assert all(isinstance(model.get_submodule(n), QuantizedConv1d) for n in feature_convs)

def test_a_projection_free_encoder_goes_through_checkpoint_calibrate_and_both_graphs(tmp_path):
    """fairseq builds no feature projection when the last conv dim equals the hidden size (SMALL: 32 == 32):
    such an encoder must survive the KWS checkpoint, calibration and the artifact, and its fp32 and int8
    graphs must pass parity."""
    from quamba_edge.quant.static import is_quantized

    torch.manual_seed(8)
    encoder = Wav2Vec2Encoder(Wav2Vec2Config.from_dict({**SMALL, "feature_proj": False}))
    save_kws(KeywordSpotter(encoder, KwsConfig(labels=LABELS, pool="adapool", n_heads=2)), tmp_path / "ckpt")
    model = load_kws(tmp_path / "ckpt")
    assert isinstance(model.encoder.feature_proj, torch.nn.Identity)
    fp_run = ort_backend.OrtRunner(export_keyword_spotter(model).SerializeToString(), threads=1)
    report = check_speech(model, fp_run, "fp32", samples=12000)
    assert report.passed, report.cases

    _wavs(tmp_path / "calib", 2, seconds=3.0)
    res = runner.invoke(app, ["calibrate", "--model", str(tmp_path / "ckpt"), "--data", str(tmp_path / "calib"),
                              "--samples", "4", "--out", str(tmp_path / "art"), "--int8-conv-features"])
    assert res.exit_code == 0, res.output
    qmodel = load(tmp_path / "art").model
    assert is_quantized(qmodel) and isinstance(qmodel.encoder.feature_proj, torch.nn.Identity)
    for activations in ("int8", "uint8"):
        graph = export_keyword_spotter(qmodel, activations, probes=True)
        report = check_speech(qmodel, ort_run(graph, activations), "int8", samples=12000)
        assert report.passed, [c for c in report.cases if c["excess"] > 1]
        assert report.cases[0]["top1_agreement"] == 1.0


@pytest.mark.slow
def test_calibrate_build_bench_spot(kws_dir, tmp_path):
    calib = tmp_path / "calib"
    _wavs(calib, 6, seconds=3.0)  # two 1.5 s windows each
    art, fp_eng, q_eng = tmp_path / "art", tmp_path / "eng-fp", tmp_path / "eng-int8"
    res = runner.invoke(app, ["calibrate", "--model", str(kws_dir / "ckpt"), "--data", str(calib), "--samples", "8",
                              "--out", str(art)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["family"] == "wav2vec2" and manifest["calibration"]["samples"] == 8
    for src, out in ((kws_dir / "ckpt", fp_eng), (art, q_eng)):
        res = runner.invoke(app, ["build-engine", str(src), "--out", str(out), "--max-clip-s", "1.5"])
        assert res.exit_code == 0, res.output
    build = json.loads((q_eng / "build.json").read_text())
    assert build["precision"] == "int8" and build["parity"]["passed"]
    assert "ConvInteger" in build["ort_kernels"]["model"]["integer_kernels"]
    out = tmp_path / "bench.json"
    res = runner.invoke(app, ["bench", str(fp_eng), str(q_eng), str(art), "--clip-s", "1.0", "--repeats", "2",
                              "--json", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["results"]
    assert [r["precision"] for r in rows] == ["fp32", "int8", "int8"]
    assert all(r["rtf"] == pytest.approx(r["ms_per_clip"] / 1000.0) for r in rows)
    res = runner.invoke(app, ["bench", str(q_eng), "--clip-s", "3"])
    assert res.exit_code == 2 and "--max-clip-s 3" in res.output

    # spot: good files at 16 and 8 kHz; bad ones each get their own error and the rest still run
    files = _wavs(tmp_path / "in", 1) + [tmp_path / "in8k.wav"]
    write_wav(files[1], speechlike(1, 8000, 9)[0].numpy(), 8000)
    long = _wavs(tmp_path / "long", 1, seconds=2.0)[0]
    silent = tmp_path / "silent.wav"
    write_wav(silent, np.zeros(16000, np.float32), 16000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    res = runner.invoke(app, ["spot", str(q_eng), *map(str, files), str(long), str(silent), str(corrupt),
                              str(tmp_path / "missing.wav"), "--json"])
    assert res.exit_code == 1
    rows = json.loads(res.output)
    assert [("keyword" in r) for r in rows] == [True, True, False, False, False, False]
    assert all(r["keyword"] in LABELS for r in rows[:2])
    assert "profile" in rows[2]["error"] and "--max-clip-s" in rows[2]["error"]
    assert "silent" in rows[3]["error"].lower()
    assert rows[5]["error"]


def _fake_real_cache(root: Path) -> None:
    """A stand-in for the built real set: one clip per word (tones with a syllable envelope), 8 kHz like the
    recordings, with the manifest layout calib/build_speech.py writes."""
    clips = []
    for i, word in enumerate(VOCAB):
        rel = f"{word}.wav"
        t = np.arange(5600) / 8000
        audio = (0.3 * np.sin(2 * np.pi * (300 + 40 * i) * t) * np.sin(np.pi * t / 0.7)).astype(np.float32)
        write_wav(root / "speech" / "real" / rel, audio, 8000)
        clips.append({"word": word, "path": rel, "sha256": sha256_file(root / "speech" / "real" / rel)})
    (root / "speech" / "real" / "manifest.json").write_text(json.dumps({"kind": "real", "clips": clips}))


def test_eval_scores_every_snr_with_a_confidence_interval(kws_dir, tmp_path):
    _fake_real_cache(tmp_path / "cache")
    res = runner.invoke(app, ["eval", str(kws_dir / "ckpt"), "--data", "default", "--max-samples", "20", "--json"],
                        env={"QUAMBA_EDGE_CACHE": str(tmp_path / "cache")})
    assert res.exit_code == 0, res.output
    result = json.loads(res.output[res.output.index("{"):])
    assert [c["snr_db"] for c in result["conditions"]] == ["clean", 20.0, 10.0, 5.0, 0.0]
    for c in result["conditions"]:
        assert c["trials"] == 20 and c["ci95"][0] <= c["accuracy"] <= c["ci95"][1]


def test_wilson_interval():
    acc, lo, hi = accuracy_with_ci(np.array([True] * 45 + [False] * 5))
    assert acc == 0.9 and lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
    acc, lo, hi = accuracy_with_ci(np.zeros(10, bool))
    assert acc == 0.0 and lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-3)
