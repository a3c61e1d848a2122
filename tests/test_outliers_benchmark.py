"""The outlier probe (benchmarks/outliers.py): its two statistics on inputs with a known answer, and its hooks
on both bundled families (the real figures come from running the script)."""

import importlib.util
import math
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("outliers", Path(__file__).parents[1] / "benchmarks" / "outliers.py")
outliers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(outliers)


def test_channel_spread_and_sqnr_see_an_outlier_channel():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4096, 64, generator=gen) * 2 - 1  # uniform in [-1, 1]: every channel's abs-max near 1
    assert 0.95 < outliers.channel_spread(x) < 1.05
    # uniform over the full int8 range: signal power 1/3, rounding noise step^2 / 12 with step 1/127: 4 * 127^2
    clean = outliers.per_tensor_sqnr_db(x)
    assert abs(clean - 10 * math.log10(4 * 127**2)) < 0.5
    x[:, 5] *= 20  # one outlier channel: the scale grows 20x and every other channel loses ~26 dB of resolution
    assert 19 < outliers.channel_spread(x) < 21
    assert outliers.per_tensor_sqnr_db(x) < clean - 10


def test_measure_hooks_both_families_points():
    from quamba_edge.families.registry import load
    from quamba_edge.quant.quamba2 import normalized_gate

    batch = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(1))
    for spec in ("default", "default-mamba2"):
        model = load(spec).model.float().eval()
        rows = outliers.measure(model, batch)
        assert len(rows) == 3 * len(model.backbone.layers)
        assert {r["point"] for r in rows} == {"ssm_in", "gated_scan", "out_proj_in"}
        d_inner = model.backbone.layers[0].mixer.out_proj.in_features
        assert all(r["channels"] == d_inner for r in rows)  # x alone: Mamba-2's B and C channels are not in ssm_in
        assert all(r["channel_spread"] >= 1 and 0 < r["per_tensor_sqnr_db"] < 60 for r in rows)

    # Mamba-2, an independent capture of layer 0: x from the conv output, and the quantizer's own normalized_gate
    model = load("default-mamba2").model.float().eval()
    mixer, got = model.backbone.layers[0].mixer, {}
    handles = [mixer.conv1d.register_forward_hook(lambda m, i, o: got.update(xbc=o)),  # update returns None,
               mixer.norm.register_forward_hook(lambda m, i, o: got.update(yz=i))]  # so the output stays
    with torch.no_grad():
        model(batch)
    for h in handles:
        h.remove()
    x = torch.nn.functional.silu(got["xbc"])[:, :mixer.cfg.d_inner].transpose(1, 2).reshape(-1, mixer.cfg.d_inner)
    gated = normalized_gate(*got["yz"], mixer.cfg).reshape(-1, mixer.cfg.d_inner)
    layer0 = {r["point"]: r for r in rows if r["layer"] == 0}
    assert abs(layer0["ssm_in"]["channel_spread"] - outliers.channel_spread(x)) < 1e-6
    assert abs(layer0["out_proj_in"]["per_tensor_sqnr_db"] - outliers.per_tensor_sqnr_db(gated)) < 1e-4
    assert layer0["gated_scan"]["per_tensor_sqnr_db"] != layer0["out_proj_in"]["per_tensor_sqnr_db"]
