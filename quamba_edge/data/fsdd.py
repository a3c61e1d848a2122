"""The Free Spoken Digit Dataset (FSDD): real recordings of the digits zero to nine, by speaker.

Five of its six speakers (jackson, nicolas, yweweler, george, lucas; all male), 50 takes of each digit each,
8 kHz mono 16-bit, files `recordings/{digit}_{speaker}_{take}.wav`. Source: github.com/Jakobovski/
free-spoken-digit-dataset at commit `COMMIT` (CC BY-SA 4.0, Zohar Jackson and the FSDD contributors).
Every file is checked against the sha256 list shipped with the toolkit (`assets/fsdd.sha256`, itself pinned
by `SUMS_SHA256`), whether it comes from a local copy or from `download`.

Where the files are looked for, first hit wins: `$QUAMBA_EDGE_FSDD`; `<repo>/../shared/data/fsdd` (this
project's machines); `<cache>/fsdd` (what `python calib/build_digits.py` downloads on a user's machine).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from quamba_edge.data.speech import DIGITS, SAMPLE_RATE, read_wav
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write, sha256_file
from quamba_edge.paths import PACKAGE_DIR, cache_dir

SPEAKERS: tuple[str, ...] = ("george", "jackson", "lucas", "nicolas", "yweweler")
TAKES = 50
COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
BASE_URL = f"https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/{COMMIT}"
SUMS = PACKAGE_DIR / "assets" / "fsdd.sha256"
SUMS_SHA256 = "7ba4deefab61dff3c84d150938fd6fbfdde820d54cf5f15cc96bbc3018c4f679"
_FIX = "Fix: run `.venv/bin/python calib/build_digits.py` (it downloads FSDD at the pinned commit and checks it)."


def pinned_sums() -> dict[str, str]:
    """{relative path: sha256} of the 2500 recordings, from the list shipped with the toolkit."""
    raw = SUMS.read_bytes()
    if hashlib.sha256(raw).hexdigest() != SUMS_SHA256:
        raise QuambaEdgeError(f"{SUMS} does not match its pinned digest: the installed toolkit is damaged. "
                              "Fix: reinstall quamba-edge.")
    sums = {}
    for line in raw.decode().splitlines():
        digest, name = line.split()
        sums[name] = digest
    return sums


def candidates() -> list[Path]:
    env = os.environ.get("QUAMBA_EDGE_FSDD")
    if env:
        return [Path(env)]
    return [PACKAGE_DIR.parents[1] / "shared" / "data" / "fsdd", cache_dir() / "fsdd"]


def fsdd_root() -> Path:
    """The first candidate directory that holds `recordings/`; a QuambaEdgeError naming them all otherwise."""
    for root in candidates():
        if (root / "recordings").is_dir():
            return root
    raise QuambaEdgeError(f"FSDD is not at {' or '.join(map(str, candidates()))}. {_FIX}")


def verify(root: Path, names: Sequence[str] | None = None) -> None:
    """Check every pinned file under `root` (or just `names`) against its sha256; raises naming the first
    missing or changed file (a re-encoded or cut recording is a different test set)."""
    sums = pinned_sums()
    for name in names if names is not None else sorted(sums):
        path = root / name
        if not path.exists():
            raise QuambaEdgeError(f"{path} is missing. {_FIX}")
        if sha256_file(path) != sums[name]:
            raise QuambaEdgeError(f"{path} does not match its pinned sha256 (changed or cut short). {_FIX}")


def download(dest: Path, base_url: str = BASE_URL, jobs: int = 8, on_file: Callable[[str], None] | None = None,
             names: Sequence[str] | None = None) -> Path:
    """Fetch every pinned recording (or just `names`) from `base_url` (the public repository at `COMMIT`)
    into `dest`, each checked against its sha256 before it is written (atomically); files already present
    and correct are kept. Raises QuambaEdgeError naming the file on a network error or a digest mismatch."""
    sums = pinned_sums()
    unknown = sorted(set(names or ()) - set(sums))
    if unknown:
        raise QuambaEdgeError(f"{unknown[0]} is not an FSDD recording of the pinned set.")

    def fetch(name: str) -> None:
        path = dest / name
        if path.exists() and sha256_file(path) == sums[name]:
            return
        try:
            with urllib.request.urlopen(f"{base_url}/{name}", timeout=60) as response:
                data = response.read()
        except OSError as exc:
            raise QuambaEdgeError(f"could not download {base_url}/{name} ({exc}). Fix: check the network, or set "
                                  "QUAMBA_EDGE_FSDD to a local copy of the dataset.") from exc
        if hashlib.sha256(data).hexdigest() != sums[name]:
            raise QuambaEdgeError(f"{base_url}/{name} does not match its pinned sha256; refusing it. Fix: check "
                                  f"that the URL serves commit {COMMIT}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
        if on_file:
            on_file(name)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(fetch, sorted(names if names is not None else sums)))
    atomic_write(dest / "SHA256SUMS", lambda tmp: tmp.write_bytes(SUMS.read_bytes()))
    return dest


def load_speakers(root: Path | None = None, speakers: Sequence[str] = SPEAKERS, *, verify_files: bool = False,
                  sample_rate: int = SAMPLE_RATE) -> dict[str, dict[str, list[np.ndarray]]]:
    """{speaker: {digit word: [50 takes as float32 mono at `sample_rate`, in take order]}}. The recordings are
    already trimmed to the word, so they are used as they are. `verify_files` re-hashes them first."""
    root = root or fsdd_root()
    unknown = sorted(set(speakers) - set(SPEAKERS))
    if unknown:
        raise QuambaEdgeError(f"FSDD speakers here are {', '.join(SPEAKERS)}; not {', '.join(unknown)}.")
    names = [f"recordings/{d}_{s}_{t}.wav" for s in speakers for d in range(10) for t in range(TAKES)]
    if verify_files:
        verify(root, names)
    out: dict[str, dict[str, list[np.ndarray]]] = {s: {w: [] for w in DIGITS} for s in speakers}
    for name in names:
        digit, speaker, _ = Path(name).stem.split("_")
        out[speaker][DIGITS[int(digit)]].append(read_wav(root / name, sample_rate, reject_silent=True))
    return out
