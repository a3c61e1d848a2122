"""Debian packages as pinned data sources: `apt-get download` (no root needed) and a sha256 check, so a
fresh machine rebuilds exactly the corpus or test set the results were measured on."""

from __future__ import annotations

import subprocess
from pathlib import Path

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import sha256_file


def apt_download(name: str, version: str, sha256: str, workdir: Path, *, download_fix: str,
                 mismatch_fix: str) -> Path:
    """`{name}_{version}_all.deb` downloaded into workdir and checked against its pinned sha256; the
    package lists are refreshed once if the first try fails. The fixes go into the two errors."""
    deb = workdir / f"{name}_{version}_all.deb"
    for attempt in range(2):
        proc = subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=workdir, capture_output=True,
                              text=True)
        if proc.returncode == 0 and deb.exists():
            break
        if attempt == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    else:
        raise QuambaEdgeError(f"could not download {deb.name} with apt-get ({proc.stderr.strip()[-300:]}). "
                              f"{download_fix}")
    got = sha256_file(deb)
    if got != sha256:
        raise QuambaEdgeError(f"{deb.name} has sha256 {got}, but {sha256} is pinned; refusing to use it. "
                              f"{mismatch_fix}")
    return deb
