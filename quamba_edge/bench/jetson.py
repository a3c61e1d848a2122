"""What Jetson this is and what it runs: model, L4T/JetPack release, power mode, power monitors.

Read from the files JetPack maintains (under a `root`, so the tests can fake the tree):
/proc/device-tree/model, /etc/nv_tegra_release (`# R36 (release), REVISION: 4.0, ...`), and the power
mode, which `nvpmodel -q` prints and /var/lib/nvpmodel/status records (`pmode:0001`) with its name in
/etc/nvpmodel.conf (`< POWER_MODEL ID=1 NAME=25W >`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from quamba_edge.bench.devices import detect_profile, jetson_model, memory_gb, power_mode
from quamba_edge.bench.power import find_ina3221, read_sys

# L4T release -> JetPack (NVIDIA's release notes); the image and the TensorRT in it follow JetPack.
JETPACK = {"R36.4": "6.1/6.2", "R36.3": "6.0", "R36.2": "6.0 DP", "R35.6": "5.1.4", "R35.5": "5.1.3",
           "R35.4": "5.1.2", "R35.3": "5.1.1", "R32.7": "4.6.x"}


def l4t_release(root: Path) -> str | None:
    """`R36.4.0` from /etc/nv_tegra_release, None off a Jetson."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", read_sys(root / "etc/nv_tegra_release"))
    return f"R{match.group(1)}.{match.group(2)}" if match else None


@dataclass
class JetsonInfo:
    model: str | None
    profile: str | None
    l4t: str | None
    jetpack: str | None
    power_mode: str | None
    power_monitors: int

    @property
    def is_jetson(self) -> bool:
        return self.model is not None and ("jetson" in self.model.lower() or self.profile is not None)


def jetson_info(root: Path) -> JetsonInfo:
    model = jetson_model(root / "proc/device-tree/model")
    mode = power_mode(root)
    profile = detect_profile(model, memory_gb(root), mode)
    release = l4t_release(root)
    jetpack = JETPACK.get(".".join(release.split(".")[:2])) if release else None  # R36.4.0 -> R36.4
    return JetsonInfo(model, profile.name if profile else None, release, jetpack, mode, len(find_ina3221(root)))


def jetson_rows(info: JetsonInfo) -> list[tuple[str, str]]:
    """(component, status) rows for `doctor`, each missing piece with its fix."""
    if not info.is_jetson:
        return [("jetson", "not a Jetson (no /proc/device-tree/model naming one); `bench --device orin-nano-8gb "
                           "--estimate` gives roofline estimates here")]
    l4t = (f"{info.l4t} / JetPack {info.jetpack or 'unknown'}" if info.l4t else "[yellow]unknown[/] (no "
           "/etc/nv_tegra_release: inside a container, mount it or use the quamba-edge Jetson image)")
    if info.l4t and not info.l4t.startswith("R36"):
        l4t += " [yellow](the image targets JetPack 6 / L4T R36: upgrade JetPack)[/]"
    return [
        ("jetson", f"{info.model}" + (f" (profile {info.profile})" if info.profile else
                                      " [yellow](no quamba-edge profile: pass --device with a profile)[/]")),
        ("L4T / JetPack", l4t),
        ("power mode", info.power_mode or "[yellow]unknown[/] (nvpmodel not found; `sudo nvpmodel -q` on the host)"),
        ("power monitor", f"{info.power_monitors} INA3221" if info.power_monitors else
         "[yellow]none visible[/] (bench --power needs /sys: run the container with --runtime nvidia)"),
    ]
