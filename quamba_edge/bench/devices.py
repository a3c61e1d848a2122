"""Jetson Orin device profiles (DESIGN.md, "Devices") and detection of the Jetson we run on.

Each profile keeps NVIDIA's *published* figures (CUDA and tensor cores, GPU clock, memory bus and
bandwidth, sparse INT8 TOPS) with the page they come from, and derives the peaks a roofline needs from
them: dense FP16 tensor-core throughput is tensor cores x 512 FLOP x GPU clock (Ampere: 256 dense FP16
FMA per clock per tensor core) and dense INT8 is twice that. NVIDIA's headline TOPS are sparse and, on
NX and AGX, include the DLAs, which TensorRT engines for Mamba do not use; the derived GPU-only figure is
the honest peak. These are peaks for an estimate, not expected throughput.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from quamba_edge.bench.power import read_sys, system_root
from quamba_edge.errors import QuambaEdgeError

_MODULES = "developer.nvidia.com/embedded/jetson-modules (Jetson module comparison, technical specifications)"
_NANO_SHEET = "NVIDIA Jetson Orin Nano Series module data sheet"
_NX_SHEET = "NVIDIA Jetson Orin NX Series module data sheet"
_AGX_SHEET = "NVIDIA Jetson AGX Orin Series module data sheet"
_SUPER_BLOG = ("NVIDIA technical blog, 'NVIDIA Jetson Orin Nano Developer Kit Gets a Super Boost' (Dec 2024) and "
               "the JetPack 6.1/6.2 release notes (MAXN_SUPER mode)")


# Of a Jetson's memory (shared by CPU and GPU), what an engine may take: the rest is the OS, CUDA, TensorRT's
# runtime and the application.
USABLE_FRACTION = 0.85


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    memory_gb: float
    bandwidth_gbs: float
    fp16_tflops: float  # dense, GPU tensor cores (derived, see the module docstring)
    int8_tops: float  # dense, GPU tensor cores (derived)
    compute_capability: str
    tensor_cores: int
    gpu_clock_mhz: int
    cuda_cores: int
    published_sparse_tops: float  # NVIDIA's headline AI figure (sparse INT8; NX/AGX: GPU + DLA)
    dla: int
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


def _orin(name: str, description: str, memory_gb: float, bandwidth: float, cuda_cores: int, tensor_cores: int,
          clock_mhz: int, published_tops: float, dla: int, sheet: str) -> DeviceProfile:
    fp16 = tensor_cores * 512 * clock_mhz * 1e6 / 1e12
    return DeviceProfile(name, description, memory_gb, bandwidth, round(fp16, 1), round(2 * fp16, 1), "8.7",
                         tensor_cores, clock_mhz, cuda_cores, published_tops, dla, f"{sheet}; {_MODULES}")


# name, description, memory GB, bandwidth GB/s, CUDA cores, tensor cores, GPU MHz, sparse INT8 TOPS, DLAs, source
PROFILES: dict[str, DeviceProfile] = {row[0]: _orin(*row) for row in (
    ("orin-nano-4gb", "Jetson Orin Nano 4GB (64-bit LPDDR5, 10 W)", 4, 34.0, 512, 16, 625, 20, 0, _NANO_SHEET),
    ("orin-nano-8gb", "Jetson Orin Nano 8GB (128-bit LPDDR5, 15 W)", 8, 68.0, 1024, 32, 625, 40, 0, _NANO_SHEET),
    ("orin-nano-super", "Jetson Orin Nano 8GB, Super (MAXN_SUPER, JetPack 6.1+)", 8, 102.0, 1024, 32, 1020, 67, 0,
     _SUPER_BLOG),
    ("orin-nx-8gb", "Jetson Orin NX 8GB (128-bit LPDDR5, 20 W)", 8, 102.4, 1024, 32, 765, 70, 1, _NX_SHEET),
    ("orin-nx-16gb", "Jetson Orin NX 16GB (128-bit LPDDR5, 25 W)", 16, 102.4, 1024, 32, 918, 100, 2, _NX_SHEET),
    ("agx-orin-32gb", "Jetson AGX Orin 32GB (256-bit LPDDR5, 40 W)", 32, 204.8, 1792, 56, 930, 200, 2, _AGX_SHEET),
    ("agx-orin-64gb", "Jetson AGX Orin 64GB (256-bit LPDDR5, 60 W)", 64, 204.8, 2048, 64, 1300, 275, 2, _AGX_SHEET),
)}

# Power modes that exist only once the Super firmware is in (JetPack 6.1+ on an Orin Nano).
_SUPER_MODES = ("MAXN_SUPER", "25W")
# device-tree name -> (the small module's marker in it, memory in GB below which it is the small one, small, large)
_VARIANTS = {"orin nano": ("4gb", 5.5, "orin-nano-4gb", "orin-nano-8gb"),
             "orin nx": ("8gb", 10, "orin-nx-8gb", "orin-nx-16gb"),
             "agx orin": ("32gb", 40, "agx-orin-32gb", "agx-orin-64gb")}


def jetson_model(path: Path | None = None) -> str | None:
    """The board name from the device tree; off a Jetson (or in a container without it), None."""
    return read_sys(path or system_root() / "proc/device-tree/model").strip("\x00 \n") or None


def memory_gb(root: Path) -> float | None:
    """Physical memory from /proc/meminfo, which tells the 4 GB Nano from the 8 GB, NX 8 from 16, AGX 32 from 64
    (the device-tree name of a developer kit does not say)."""
    match = re.search(r"MemTotal:\s*(\d+)\s*kB", read_sys(root / "proc/meminfo"))
    return int(match.group(1)) / 1024**2 if match else None


def detect_profile(model: str | None, mem_gb: float | None = None, power_mode: str | None = None
                   ) -> DeviceProfile | None:
    """The profile for a device-tree name; memory and power mode pick the variant when they are known (without
    memory, the larger module of a family: the developer kits carry it)."""
    name = (model or "").lower()
    for family, (marker, below_gb, small, large) in _VARIANTS.items():
        if family in name:
            if marker in name or (mem_gb is not None and mem_gb < below_gb):
                return PROFILES[small]
            return PROFILES["orin-nano-super" if large == "orin-nano-8gb" and power_mode in _SUPER_MODES else large]
    return None


def power_mode(root: Path) -> str | None:
    """The active nvpmodel mode's name (e.g. `15W`, `MAXN_SUPER`), from nvpmodel -q or its status file."""
    if root == Path("/") and shutil.which("nvpmodel"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5).stdout
            if match := re.search(r"NV Power Mode:\s*(\S+)", out):
                return match.group(1)
    try:
        status = (root / "var/lib/nvpmodel/status").read_text()
        mode_id = int(re.search(r"pmode:(\d+)", status).group(1))
        conf = (root / "etc/nvpmodel.conf").read_text()
    except (OSError, AttributeError, ValueError):
        return None
    names = {int(i): n for i, n in re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>", conf)}
    return names.get(mode_id, f"mode {mode_id}")


def this_jetson(root: Path | None = None) -> DeviceProfile | None:
    """The profile of the Jetson this runs on (under `root`, default $QUAMBA_EDGE_SYSROOT or /), else None."""
    root = system_root() if root is None else root
    model = jetson_model(root / "proc/device-tree/model")
    return detect_profile(model, memory_gb(root), power_mode(root)) if model else None


def resolve_profile(name: str) -> DeviceProfile:
    """A profile by name (the CLI has checked it is one), or `orin`: the Jetson this runs on."""
    profile = this_jetson() if name == "orin" else PROFILES[name]
    if profile is None:
        raise QuambaEdgeError(
            f"--device orin means the Jetson this runs on, but this machine is not one "
            f"(device-tree model: {jetson_model()!r}). Fix: name a profile ({', '.join(PROFILES)}) with "
            "--estimate for a roofline estimate, or run on the Jetson (Dockerfile.jetson)."
        )
    return profile
