import pytest
import torch
import torch.nn.functional as F

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.models.mamba import MambaConfig
from quamba_edge.quant.hadamard import rotate
from quamba_edge.quant.int8 import dequantize
from quamba_edge.quant.quamba import calibrate, observe_activations
from quamba_edge.quant.recipes import make_recipe

from .conftest import make_model, rel_close


def _batches(seed=0, n=3, b=2, l=64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (b, l), generator=g) for _ in range(n)]


def _layer0_activations(model, batch):
    """Recompute layer 0's quantization points by hand, without hooks."""
    mixer = model.backbone.layers[0].mixer
    cfg = model.cfg
    h = model.backbone.layers[0].norm(model.backbone.embedding(batch))
    xz = mixer.in_proj(h)
    x, z = xz.chunk(2, -1)
    x_pad = F.pad(x.transpose(1, 2), (cfg.d_conv - 1, 0))
    u = F.silu(mixer.conv1d(x_pad)).transpose(1, 2)
    return {"norm": h, "xz": xz, "u": u}


def test_scales_are_what_the_observers_promise(tiny_model):
    batches = _batches()
    naive = observe_activations(tiny_model, batches, make_recipe("naive"))
    quamba = observe_activations(tiny_model, batches, make_recipe("quamba", percentile=0.999))
    with torch.no_grad():
        acts = [_layer0_activations(tiny_model, b) for b in batches]
    amax = {k: max(float(a[k].abs().max()) for a in acts) for k in ("norm", "xz", "u")}
    for key in ("norm", "xz", "u"):
        assert naive.scales[0][key] == pytest.approx(amax[key] / 127, rel=1e-6)
    # Percentile: per sample quantile, EMA over samples in order.
    m = None
    for a in acts:
        for sample in a["u"]:
            cur = float(torch.quantile(sample.abs().flatten(), 0.999))
            m = cur if m is None else m + 0.01 * (cur - m)
    assert quamba.scales[0]["u"] == pytest.approx(m / 127, rel=1e-5)
    assert quamba.scales[0]["u"] < naive.scales[0]["u"]


def test_y_scale_is_measured_after_the_rotation(tiny_model):
    captured = []
    handle = tiny_model.backbone.layers[1].mixer.out_proj.register_forward_hook(
        lambda _m, inp, _o: captured.append(inp[0]))
    batches = _batches(1)
    result = observe_activations(tiny_model, batches, make_recipe("quamba"))
    handle.remove()
    expected = max(float(rotate(y).abs().max()) for y in captured[: len(batches)])
    assert result.scales[1]["y"] == pytest.approx(expected / 127, rel=1e-6)


@pytest.mark.parametrize("recipe", ["naive", "quamba"])
def test_quantized_model_decodes_like_it_prefills(tiny_model, recipe):
    qmodel, _ = calibrate(tiny_model, _batches(), make_recipe(recipe))
    ids = _batches(5, n=1, b=2, l=30)[0]
    full, conv_full, _ = qmodel.step(ids)
    logits, conv, ssm = qmodel.step(ids[:, :12])
    pieces = [logits]
    for t in range(12, 30):
        logits, conv, ssm = qmodel.step(ids[:, t : t + 1], conv, ssm)
        pieces.append(logits)
    rel_close(torch.cat(pieces, 1), full)
    assert conv.dtype == torch.int8 and torch.equal(conv, conv_full)


def test_folded_out_proj_weight_is_the_rotated_weight(tiny_model):
    qmodel, _ = calibrate(tiny_model, _batches(), make_recipe("quamba"))
    q = qmodel.layers[0].mixer.out_proj
    w_fp = tiny_model.backbone.layers[0].mixer.out_proj.weight
    y = torch.randn(5, tiny_model.cfg.d_inner)
    # (y·Mᵀ)(W·Mᵀ)ᵀ ≈ y·Wᵀ, up to int8 weight rounding (half a step per weight).
    approx = rotate(y) @ dequantize(q.weight, q.weight_scale).T
    exact = y @ w_fp.T
    assert ((approx - exact).norm() / exact.norm()) < 0.02


def test_quamba_is_closer_to_fp_than_naive_on_an_outlier_model():
    """A model with a few huge SSM-input channels: the setting Quamba was designed for."""
    model = make_model(seed=3)
    with torch.no_grad():
        model.backbone.layers[0].mixer.conv1d.bias[:2] += 40.0
        model.backbone.layers[1].mixer.conv1d.bias[:2] += 40.0
    batches, ids = _batches(), _batches(9, n=1, b=4, l=64)[0]
    with torch.no_grad():
        ref = model(ids)
        errs = {}
        for name in ("naive", "quamba"):
            qmodel, _ = calibrate(model, batches, make_recipe(name))
            errs[name] = float((qmodel(ids) - ref).norm() / ref.norm())
    assert errs["quamba"] < errs["naive"], errs


def test_nan_during_calibration_names_layer_and_tensor(tiny_model):
    with torch.no_grad():
        tiny_model.backbone.layers[1].mixer.x_proj.weight[0, 0] = float("nan")
    with pytest.raises(QuambaEdgeError, match=r"NaN in layer 1, tensor 'dbc'"):
        calibrate(tiny_model, _batches(), make_recipe("quamba"))


def test_inf_during_calibration(tiny_model):
    with torch.no_grad():
        tiny_model.backbone.embedding.weight[:] = float("inf")
    with pytest.raises(QuambaEdgeError, match=r"(NaN|Inf) in layer 0, tensor 'norm'"):
        calibrate(tiny_model, _batches(), make_recipe("naive"))


def test_unsupported_hadamard_width_fails_before_the_pass():
    model = make_model(MambaConfig(d_model=50, n_layer=1, d_state=4))  # d_inner 100
    with pytest.raises(QuambaEdgeError, match="no supported Hadamard size for d_inner=100"):
        calibrate(model, _batches(), make_recipe("quamba"))
    qmodel, _ = calibrate(model, _batches(), make_recipe("quamba", hadamard=False))
    assert qmodel.layers[0].mixer.rotate.rotate_output is False


def test_fp_recipe_returns_the_model(tiny_model):
    model, calib = calibrate(tiny_model, _batches(), make_recipe("fp"))
    assert model is tiny_model and calib is None


def test_int8_head_is_the_dequantized_product_of_its_int8_parts(tiny_model):
    from quamba_edge.quant.int8 import quantize

    qmodel, calib = calibrate(tiny_model, _batches(), make_recipe("quamba", int8_head=True))
    head = qmodel.head
    assert calib.head_scale > 0 and float(head.in_scale) == pytest.approx(calib.head_scale)
    assert head.weight.dtype == torch.int8 and head.weight_scale.shape == (256, 1)
    ids = _batches(7, n=1, b=2, l=9)[0]
    with torch.no_grad():
        logits = qmodel(ids)
        h = qmodel.embedding(ids).float()
        conv, ssm = qmodel.empty_state(2)
        for i, layer in enumerate(qmodel.layers):
            h, _, _ = layer(h, conv[i], ssm[i])
        x_q = quantize(qmodel.norm_f(h), head.in_scale)
        reference = dequantize(x_q, head.in_scale) @ dequantize(head.weight, head.weight_scale).T
    rel_close(logits, reference)
    fp_logits = tiny_model(ids)
    assert (logits - fp_logits).norm() / fp_logits.norm() < 0.1  # still the same model


def test_bf16_calibration_keeps_fp32_weights_and_scales_near_fp32(tmp_path, tiny_checkpoint, text_file):
    """calibrate --dtype bf16: the forward passes run on a bf16 copy, but the int8 weights come from the fp32
    checkpoint (equal to an fp32 calibration's) and every scale is an fp32 number within bf16's rounding of the
    fp32 calibration's; the manifest records the device, dtype and the calibration rate."""
    from quamba_edge import pipeline
    from quamba_edge.families.registry import load

    runs = {}
    for dtype in ("fp32", "bf16"):
        out, manifest = pipeline.calibrate(str(tiny_checkpoint), "quamba", str(text_file), 4, 64,
                                           tmp_path / dtype, batch_size=2, dtype=dtype)
        runs[dtype] = (load(out).model, manifest)
    (fp32, m32), (bf16, m16) = runs["fp32"], runs["bf16"]
    assert m16["calibration"]["dtype"] == "bf16" and m16["calibration"]["device"] == "cpu"
    assert m16["calibration"]["tokens_per_s"] > 0
    for name, t in fp32.state_dict().items():
        other = bf16.state_dict()[name]
        assert other.dtype == t.dtype, name  # nothing of the artifact is bf16
        if t.dtype == torch.int8 and "layers.0.mixer.in_proj.weight" in name:
            assert torch.equal(t, other)  # weights quantized from the checkpoint, not from the bf16 copy
    for s32, s16 in zip(m32["scales"], m16["scales"], strict=True):
        for point, value in s32.items():
            assert s16[point] == pytest.approx(value, rel=0.05), point  # bf16 keeps 8 bits of mantissa
    assert any(s16[p] != s32[p] for s32, s16 in zip(m32["scales"], m16["scales"]) for p in s32)  # really bf16


def test_calibrate_refuses_a_device_it_cannot_use(tmp_path, tiny_checkpoint, text_file):
    from quamba_edge import pipeline

    if not torch.cuda.is_available():
        with pytest.raises(QuambaEdgeError, match="sees no CUDA GPU.*Fix: --device cpu"):
            pipeline.calibrate(str(tiny_checkpoint), "quamba", str(text_file), 2, 32, tmp_path / "c", device="cuda")
    with pytest.raises(QuambaEdgeError, match="unknown --dtype 'fp8'"):
        pipeline.calibrate(str(tiny_checkpoint), "quamba", str(text_file), 2, 32, tmp_path / "d", dtype="fp8")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_calibration_matches_the_cpu_one(tmp_path, tiny_checkpoint, text_file):
    from quamba_edge import pipeline

    _, cpu = pipeline.calibrate(str(tiny_checkpoint), "quamba", str(text_file), 4, 64, tmp_path / "cpu")
    _, gpu = pipeline.calibrate(str(tiny_checkpoint), "quamba", str(text_file), 4, 64, tmp_path / "gpu",
                                device="cuda", dtype="fp16")
    assert gpu["calibration"]["device"] == "cuda"
    for a, b in zip(cpu["scales"], gpu["scales"], strict=True):
        for point, value in a.items():
            assert b[point] == pytest.approx(value, rel=0.02), point
