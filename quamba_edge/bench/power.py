"""Board power on a Jetson, for energy per token: the INA3221 power monitors in sysfs, or `tegrastats`.

INA3221 (JetPack 5/6 on Orin): find the chip through /sys/bus/i2c/devices/*/name, then read each
channel's `in{N}_label`, `in{N}_input` (mV) and `curr{N}_input` (mA) under its hwmon directory. The
"sum" channel and labels containing "NC" (not connected) are skipped; VDD_IN is the whole board.
`tegrastats` prints the same rails as `NAME current/average` pairs; the unit is mW on JetPack 5/6
(`VDD_IN 6030mW/6030mW`) and bare numbers on JetPack 4 (`POM_5V_IN 3254/3254`). Files are read under a
`root` (system_root()), so the tests can point it at a fake sysfs tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from quamba_edge.errors import QuambaEdgeError


def system_root() -> Path:
    """Where sysfs/procfs are read from: `/`, or $QUAMBA_EDGE_SYSROOT (a fake tree, for tests)."""
    return Path(os.environ.get("QUAMBA_EDGE_SYSROOT", "/"))


def read_sys(path: Path) -> str:
    """A sysfs/procfs/etc file's text; "" where it is missing or unreadable (off a Jetson, in a container)."""
    try:
        return path.read_text()
    except OSError:
        return ""


# Rails that measure the whole board, in order of preference (Orin; Nano/TX1/TX2; Xavier NX; AGX Xavier).
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VDD_IN_SYS", "VIN_SYS_5V0", "GPU_VDD_IN")
_RAIL = re.compile(r"\b((?:VDD|POM|VIN|GPU|CPU|SOC|CV|SYS)[A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?")


def parse_tegrastats(line: str) -> dict[str, float]:
    """Rail -> instantaneous power in mW from one tegrastats line (any JetPack's format)."""
    return {name: float(now) for name, now, _avg in _RAIL.findall(line)}


def total_power_mw(rails: dict[str, float]) -> float | None:
    """Whole-board power from a rail reading, or None when no board-level rail is present."""
    return next((rails[name] for name in TOTAL_RAILS if name in rails), None)


def find_ina3221(root: Path = Path("/")) -> list[Path]:
    """hwmon directories of every INA3221 on the I2C buses."""
    return [hwmon for chip in sorted((root / "sys/bus/i2c/devices").glob("*/name"))
            if read_sys(chip).strip() == "ina3221" for hwmon in sorted((chip.parent / "hwmon").glob("hwmon*"))]


def read_ina3221(root: Path = Path("/")) -> dict[str, float]:
    """Rail label -> power in mW (mV x mA / 1000) from every INA3221 channel."""
    rails: dict[str, float] = {}
    for hwmon in find_ina3221(root):
        for label_file in sorted(hwmon.glob("in*_label")):
            channel = label_file.name[2:-len("_label")]
            label = read_sys(label_file).strip()
            if not label or "NC" in label.split() or label.lower().startswith("sum"):
                continue
            with contextlib.suppress(ValueError):  # a channel that cannot be read ("") is skipped
                mv, ma = float(read_sys(hwmon / f"in{channel}_input")), float(read_sys(hwmon / f"curr{channel}_input"))
                rails[label] = mv * ma / 1000.0
    return rails


class TegrastatsStream:
    """`tegrastats --interval N` (shipped with L4T) in the background, keeping the board power of its latest
    line: the fallback where sysfs is not visible (a container without /sys mounted)."""

    def __init__(self, interval_ms: int = 50):
        self.latest_mw: float | None = None
        self._proc = subprocess.Popen(["tegrastats", "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        self._ready.wait(timeout=max(2.0, 4 * interval_ms / 1e3))

    def _pump(self) -> None:
        for line in self._proc.stdout:
            mw = total_power_mw(parse_tegrastats(line))
            if mw is not None:
                self.latest_mw = mw
                self._ready.set()
        self._ready.set()

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._thread.join(timeout=5)


class PowerSampler:
    """Samples board power (mW) in a background thread while a benchmark runs, from the INA3221 in sysfs when
    it is visible, else `tegrastats` when it is on PATH; energy by the trapezoid rule."""

    def __init__(self, read=None, interval_s: float = 0.05, root: Path | None = None):
        root = system_root() if root is None else root
        self.stream: TegrastatsStream | None = None
        self.source = "given"
        if read is None and total_power_mw(read_ina3221(root)) is not None:
            read, self.source = (lambda: total_power_mw(read_ina3221(root))), "ina3221"
        elif read is None and shutil.which("tegrastats"):
            self.stream = TegrastatsStream(max(int(interval_s * 1000), 10))
            read, self.source = (lambda: self.stream.latest_mw), "tegrastats"
        self.read = read or (lambda: None)
        if self.read() is None:
            if self.stream is not None:
                self.stream.close()
            raise QuambaEdgeError("no board power monitor found (no INA3221 with a VDD_IN-like rail under "
                                  f"{root / 'sys/bus/i2c/devices'}, and no tegrastats output with one). Fix: run "
                                  "on a Jetson with JetPack 5 or 6, inside the container started with --runtime "
                                  "nvidia, or drop --power.")
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            mw = self.read()
            if mw is not None:
                self.samples.append((time.perf_counter(), mw))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PowerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.stream is not None:
            self.stream.close()

    def energy_j(self) -> float:
        pts = self.samples
        return sum((t1 - t0) * (p0 + p1) / 2e3 for (t0, p0), (t1, p1) in zip(pts, pts[1:]))

    def average_w(self) -> float:
        if not self.samples:
            return 0.0
        span = self.samples[-1][0] - self.samples[0][0]
        return self.energy_j() / span if span > 0 else self.samples[-1][1] / 1e3
