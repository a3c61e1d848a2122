"""Jetson Orin device profiles (DESIGN.md, "Devices") and detection of the Jetson we run on.

Bandwidth and memory are NVIDIA's published module figures. NVIDIA publishes *sparse* INT8 TOPS;
the dense figures here are half of the GPU's sparse figure, and dense FP16 tensor-core throughput
is half of dense INT8 (Ampere tensor cores: 256 dense FP16 FMA / clock / tensor core), i.e.
tensor cores × 512 FLOP × GPU clock. These are peaks for a roofline, not expected throughput.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from quamba_edge.errors import QuambaEdgeError

DATASHEETS = ("NVIDIA Jetson Orin Nano / NX / AGX Orin module data sheets and the Jetson module comparison "
              "(developer.nvidia.com/embedded/jetson-modules); Orin Nano Super: NVIDIA developer blog, Dec 2024")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    memory_gb: float
    bandwidth_gbs: float
    fp16_tflops: float  # dense, GPU tensor cores
    int8_tops: float  # dense, GPU tensor cores
    compute_capability: str
    tensor_cores: int
    gpu_clock_mhz: int
    source: str = DATASHEETS

    def to_dict(self) -> dict:
        return asdict(self)


def _orin(name, description, memory_gb, bandwidth, tensor_cores, clock_mhz) -> DeviceProfile:
    fp16 = tensor_cores * 512 * clock_mhz * 1e6 / 1e12
    return DeviceProfile(name, description, memory_gb, bandwidth, round(fp16, 1), round(2 * fp16, 1), "8.7",
                         tensor_cores, clock_mhz)


PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    _orin("orin-nano-4gb", "Jetson Orin Nano 4GB (64-bit LPDDR5)", 4, 34.0, 16, 625),
    _orin("orin-nano-8gb", "Jetson Orin Nano 8GB (128-bit LPDDR5, 15 W)", 8, 68.0, 32, 625),
    _orin("orin-nano-super", "Jetson Orin Nano Super 8GB (MAXN_SUPER)", 8, 102.0, 32, 1020),
    _orin("orin-nx-16gb", "Jetson Orin NX 16GB", 16, 102.4, 32, 918),
    _orin("agx-orin-64gb", "Jetson AGX Orin 64GB", 64, 204.8, 64, 1300),
)}

# /proc/device-tree/model strings -> profile (the Nano Super is the same module in a faster power mode)
_MODEL_STRINGS = {"Orin Nano 4GB": "orin-nano-4gb", "Orin Nano 8GB": "orin-nano-8gb", "Orin Nano": "orin-nano-8gb",
                  "Orin NX 16GB": "orin-nx-16gb", "AGX Orin": "agx-orin-64gb"}


def jetson_model(path: Path = Path("/proc/device-tree/model")) -> str | None:
    try:
        return path.read_text().strip("\x00 \n") or None
    except OSError:
        return None


def detect_profile(model: str | None) -> DeviceProfile | None:
    if not model:
        return None
    for needle, name in _MODEL_STRINGS.items():
        if needle.lower() in model.lower():
            return PROFILES[name]
    return None


def resolve_profile(name: str) -> DeviceProfile:
    """A profile by name, or `orin`: the Jetson this runs on."""
    if name == "orin":
        model = jetson_model()
        profile = detect_profile(model)
        if profile is None:
            raise QuambaEdgeError(
                f"--device orin means the Jetson this runs on, but this machine is not one "
                f"(/proc/device-tree/model: {model!r}). Fix: name a profile ({', '.join(PROFILES)}) with "
                "--estimate for a roofline estimate, or run on the Jetson (Dockerfile.jetson)."
            )
        return profile
    if name not in PROFILES:
        raise QuambaEdgeError(f"unknown device {name!r}; known: cpu, cuda, orin, {', '.join(PROFILES)}.")
    return PROFILES[name]
