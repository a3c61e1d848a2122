"""Jetson detection for `doctor` on fake /proc, /etc and /sys trees that the tests write."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from quamba_edge.bench.devices import power_mode
from quamba_edge.bench.jetson import jetson_info, l4t_release
from quamba_edge.cli import app

from .test_power import write_ina3221

NV_TEGRA_R36 = ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
                "DATE: Fri Sep 13 04:36:44 UTC 2024\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n")
NV_TEGRA_R35 = ("# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref, EABI: aarch64, "
                "DATE: Tue Feb 20 04:46:31 UTC 2024\n")
NVPMODEL_CONF = """< PARAM TYPE=FILE NAME=CPU_ONLINE >
< POWER_MODEL ID=0 NAME=15W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=7W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=2 NAME=MAXN_SUPER >
< PM_CONFIG DEFAULT=0 >
"""


def fake_jetson(root: Path, model="NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
                release=NV_TEGRA_R36, mode=2, monitor=True, mem_kb: int | None = None) -> Path:
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_text(model + "\x00")
    if mem_kb is not None:
        (root / "proc/meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:        1024000 kB\n")
    (root / "etc").mkdir()
    if release:
        (root / "etc/nv_tegra_release").write_text(release)
    (root / "etc/nvpmodel.conf").write_text(NVPMODEL_CONF)
    (root / "var/lib/nvpmodel").mkdir(parents=True)
    (root / "var/lib/nvpmodel/status").write_text(f"pmode:{mode:04d} fmode:quiet\n")
    if monitor:
        write_ina3221(root, [("VDD_IN", 5000, 1000)])
    return root


def test_an_orin_nano_on_jetpack6(tmp_path):
    info = jetson_info(fake_jetson(tmp_path))
    assert info.is_jetson and info.profile == "orin-nano-super"  # MAXN_SUPER exists only with the Super firmware
    assert (info.l4t, info.jetpack) == ("R36.4.0", "6.1/6.2")
    assert info.power_mode == "MAXN_SUPER" and info.power_monitors == 1


def test_release_and_power_mode_parsing(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(NV_TEGRA_R35)
    assert l4t_release(tmp_path) == "R35.5.0"
    assert power_mode(tmp_path) is None  # no status file
    assert l4t_release(tmp_path / "nowhere") is None


@pytest.mark.parametrize("kwargs,expected", [
    ({}, ["Orin Nano", "orin-nano-super", "R36.4.0 / JetPack 6.1/6.2", "MAXN_SUPER", "1 INA3221"]),
    ({"release": NV_TEGRA_R35, "monitor": False, "mode": 1}, ["upgrade JetPack", "7W", "--runtime nvidia"]),
    ({"release": None}, ["no /etc/nv_tegra_release"]),
])
def test_doctor_reads_a_jetson_tree(tmp_path, kwargs, expected):
    root = fake_jetson(tmp_path / "jetson", **kwargs)
    res = CliRunner().invoke(app, ["doctor", "--root", str(root)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for text in expected:
        assert text in res.output, (text, res.output)


def test_doctor_off_a_jetson(tmp_path):
    res = CliRunner().invoke(app, ["doctor", "--root", str(tmp_path)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "not a Jetson" in res.output


@pytest.mark.parametrize("model,mem_kb,mode,expected", [
    ("NVIDIA Jetson Orin Nano Developer Kit", 7_620_000, 0, "orin-nano-8gb"),  # 15W
    ("NVIDIA Jetson Orin Nano Developer Kit", 7_620_000, 2, "orin-nano-super"),  # MAXN_SUPER
    ("NVIDIA Jetson Orin Nano Developer Kit", 3_720_000, 1, "orin-nano-4gb"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", 7_620_000, 0, "orin-nx-8gb"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", 15_650_000, 0, "orin-nx-16gb"),
    ("Jetson AGX Orin Developer Kit", 30_600_000, 0, "agx-orin-32gb"),
    ("Jetson AGX Orin Developer Kit", 62_800_000, 0, "agx-orin-64gb"),
    ("NVIDIA Jetson Xavier NX Developer Kit", 7_620_000, 0, None),
])
def test_the_profile_follows_model_memory_and_power_mode(tmp_path, model, mem_kb, mode, expected):
    info = jetson_info(fake_jetson(tmp_path, model=model, mode=mode, mem_kb=mem_kb))
    assert info.profile == expected


def test_bench_orin_reads_the_tree_it_is_pointed_at(tmp_path):
    """`--device orin` is the Jetson under QUAMBA_EDGE_SYSROOT; its estimate uses that board's profile."""
    import json

    root = fake_jetson(tmp_path / "jetson", model="NVIDIA Jetson Orin Nano Developer Kit", mode=1,
                       mem_kb=3_720_000)
    out = tmp_path / "est.json"
    res = CliRunner().invoke(app, ["bench", "default", "--device", "orin", "--estimate", "--json", str(out)],
                             env={"QUAMBA_EDGE_SYSROOT": str(root), "COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["profile"]["name"] == "orin-nano-4gb"
    res = CliRunner().invoke(app, ["bench", "default", "--device", "orin"],
                             env={"QUAMBA_EDGE_SYSROOT": str(tmp_path / "laptop"), "COLUMNS": "200"})
    assert res.exit_code == 2 and "not that Jetson" in res.output
