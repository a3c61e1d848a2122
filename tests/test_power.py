"""Jetson power readers on real-format samples written by the tests (no Jetson here)."""

from __future__ import annotations

import os
import time

import pytest

from quamba_edge.bench.power import PowerSampler, parse_tegrastats, read_ina3221, total_power_mw
from quamba_edge.errors import QuambaEdgeError

JETPACK6_ORIN_NANO = ("11-26-2026 10:01:02 RAM 2950/7620MB (lfb 4x4MB) SWAP 0/3810MB (cached 0MB) CPU [12%@1510,"
                      "3%@1510,0%@1510,1%@1510,off,off] EMC_FREQ 6%@2133 GR3D_FREQ 41%@[624] NVENC off NVDEC off "
                      "NVJPG off NVJPG1 off VIC off OFA off APE 200 cpu@51.5C soc2@49.8C soc0@50.1C gpu@51.2C "
                      "tj@51.5C soc1@49.9C VDD_IN 6030mW/6030mW VDD_CPU_GPU_CV 1913mW/1913mW VDD_SOC 1557mW/1557mW")
JETPACK5_AGX_ORIN = ("RAM 6271/30536MB (lfb 5934x4MB) CPU [2%@729,1%@729] GR3D_FREQ 0% CPU@47.5C GPU@44.1C "
                     "VDD_GPU_SOC 2400mW/2400mW VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 3433mW/3433mW VDDQ_VDD2_1V8AO "
                     "502mW/502mW")
JETPACK4_NANO = ("RAM 1511/3964MB (lfb 344x4MB) SWAP 0/1982MB (cached 0MB) CPU [9%@1479,5%@1479,3%@1479,2%@1479] "
                 "EMC_FREQ 0% GR3D_FREQ 0% PLL@29C CPU@31.5C PMIC@100C GPU@30.5C AO@37.5C thermal@31C "
                 "POM_5V_IN 2413/2413 POM_5V_GPU 0/0 POM_5V_CPU 481/481")


@pytest.mark.parametrize("line,total,rails", [
    (JETPACK6_ORIN_NANO, 6030.0, {"VDD_IN": 6030.0, "VDD_CPU_GPU_CV": 1913.0, "VDD_SOC": 1557.0}),
    (JETPACK5_AGX_ORIN, 3433.0, {"VDD_GPU_SOC": 2400.0, "VDD_CPU_CV": 400.0, "VIN_SYS_5V0": 3433.0}),
    (JETPACK4_NANO, 2413.0, {"POM_5V_IN": 2413.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 481.0}),
])
def test_tegrastats_lines_of_several_jetpacks(line, total, rails):
    parsed = parse_tegrastats(line)
    assert {k: parsed[k] for k in rails} == rails
    assert total_power_mw(parsed) == total
    assert "CPU" not in parsed and "RAM" not in parsed  # percentages and memory are not rails


def write_ina3221(root, channels, bus="1-0040"):
    dev = root / "sys/bus/i2c/devices" / bus
    hwmon = dev / "hwmon" / "hwmon3"
    hwmon.mkdir(parents=True)
    (dev / "name").write_text("ina3221\n")
    for n, (label, mv, ma) in enumerate(channels, start=1):
        (hwmon / f"in{n}_label").write_text(label + "\n")
        (hwmon / f"in{n}_input").write_text(f"{mv}\n")
        (hwmon / f"curr{n}_input").write_text(f"{ma}\n")


def test_ina3221_sysfs_tree(tmp_path):
    write_ina3221(tmp_path, [("VDD_IN", 5072, 1188), ("VDD_CPU_GPU_CV", 5064, 392), ("VDD_SOC", 5064, 304),
                             ("NC", 0, 0), ("sum of shunt voltages", 15200, 0)])
    other = tmp_path / "sys/bus/i2c/devices/0-0050"  # another chip on the bus is ignored
    other.mkdir(parents=True)
    (other / "name").write_text("eeprom\n")
    rails = read_ina3221(tmp_path)
    assert set(rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert rails["VDD_IN"] == pytest.approx(5072 * 1188 / 1000)
    assert total_power_mw(rails) == pytest.approx(6025.5, abs=0.1)


def test_power_sampler_integrates_energy(tmp_path):
    watts = iter([5000.0] * 1000)
    with PowerSampler(read=lambda: next(watts), interval_s=0.01) as sampler:
        time.sleep(0.2)
    assert len(sampler.samples) > 5
    assert sampler.average_w() == pytest.approx(5.0)
    span = sampler.samples[-1][0] - sampler.samples[0][0]
    assert sampler.energy_j() == pytest.approx(5.0 * span)


def test_no_power_monitor_is_a_clear_error(tmp_path):
    with pytest.raises(QuambaEdgeError, match="no board power monitor"):
        PowerSampler(root=tmp_path)


def test_bench_power_reports_watts_and_joules_per_token(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from quamba_edge.cli import app

    write_ina3221(tmp_path, [("VDD_IN", 5000, 1000), ("VDD_SOC", 5000, 200)])  # a steady 5 W board
    monkeypatch.setenv("QUAMBA_EDGE_SYSROOT", str(tmp_path))
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "default", "--prompt-len", "8", "--gen-len", "4", "--repeats", "1",
                                   "--power", "--json", str(out)])
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())["results"][0]
    assert row["avg_power_w"] == pytest.approx(5.0)
    assert row["j_per_token"] == pytest.approx(5.0 * row["tpot_ms"] / 1e3)
    monkeypatch.setenv("QUAMBA_EDGE_SYSROOT", str(tmp_path / "nothing"))
    res = CliRunner().invoke(app, ["bench", "default", "--prompt-len", "8", "--gen-len", "4", "--power"])
    assert res.exit_code != 0 and "no board power monitor" in res.output


TEGRASTATS_JP6 = ("11-26-2026 04:12:07 RAM 2210/7620MB (lfb 2x4MB) SWAP 0/3810MB CPU [3%@729,1%@729] "
                  "GR3D_FREQ 0% cpu@46.5C soc2@45.9C VDD_IN 6030mW/6030mW VDD_CPU_GPU_CV 560mW/560mW "
                  "VDD_SOC 1436mW/1436mW")


def test_tegrastats_is_the_fallback_when_sysfs_is_hidden(tmp_path, monkeypatch):
    """No INA3221 under the root, but a `tegrastats` on PATH (here a script printing JetPack 6 lines, as the
    real tool does): the sampler reads the board rail from its output."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "tegrastats"
    tool.write_text(f'#!/bin/sh\nwhile true; do echo "{TEGRASTATS_JP6}"; sleep 0.02; done\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with PowerSampler(root=tmp_path / "no-sysfs", interval_s=0.01) as sampler:
        time.sleep(0.2)
    assert sampler.source == "tegrastats"
    assert sampler.average_w() == pytest.approx(6.03)
    assert sampler.stream._proc.poll() is not None  # the tool is stopped with the sampler


def test_set_bench_power_reports_joules_per_set(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from quamba_edge.checkpoints.adapool import save_set_checkpoint
    from quamba_edge.cli import app
    from quamba_edge.models.adapool import SetModel, SetModelConfig, init_set_model

    cfg = SetModelConfig(d_in=6, d_model=16, n_heads=2, n_layers=1, d_ff=32, d_out=3, pool="adapool")
    ckpt = save_set_checkpoint(init_set_model(SetModel(cfg), seed=0), tmp_path / "ckpt")
    write_ina3221(tmp_path, [("VDD_IN", 4000, 1000)])  # a steady 4 W board
    monkeypatch.setenv("QUAMBA_EDGE_SYSROOT", str(tmp_path))
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", str(ckpt), "--set-size", "16", "--batch", "4", "--repeats", "2",
                                   "--power", "--json", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())["results"][0]
    assert row["avg_power_w"] == pytest.approx(4.0)
    assert row["j_per_set"] == pytest.approx(4.0 * row["ms_per_set"] / 1e3)
    assert "J/set" in res.output
