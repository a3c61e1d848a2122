"""The default corpus: Jane Austen's six novels, from Debian's `r-cran-janeaustenr` package.

The package stores the novels as an R lazy-load database (an index `.rdx` and a blob `.rdb`). We fetch
the .deb with `apt-get download` (no root install), check its sha256, and decode the database with
the `rdata` package, so a fresh machine rebuilds byte-identical text files without any model hub.
"""

from __future__ import annotations

import gzip
import subprocess
import tempfile
import warnings
import zlib
from pathlib import Path

from quamba_edge.data.debs import apt_download
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write, sha256_file
from quamba_edge.paths import cache_dir

DEB_NAME = "r-cran-janeaustenr"
DEB_VERSION = "1.0.0-1"
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
RDATA_DIR = "usr/lib/R/site-library/janeaustenr/data"

# Training/calibration novels, in file order; the held-out novel is never seen by training or calibration.
TRAIN_NOVELS = ("emma", "mansfieldpark", "northangerabbey", "prideprejudice", "sensesensibility")
HELDOUT_NOVEL = "persuasion"
NOVELS = TRAIN_NOVELS + (HELDOUT_NOVEL,)
TEXT_SHA256 = {
    "emma": "7c67b5985c6d0de1efaeb5d342d52cb82c38083c40e2295129e30e87ee690ebe",
    "mansfieldpark": "98bc90519cdf4ef663ad7de2734bb529435ef24f7abbde6bb1a50898871dafe9",
    "northangerabbey": "51f91bbe0517db8e65cff009b097ce0a1836124c4e0532ac19e6c0cad982abed",
    "prideprejudice": "dfc684d4f857fa938268f9ab9c5567b64bd0691251eca959644adeabe6287a4d",
    "sensesensibility": "105e1651fe93bed7130078578efd31e0c557d68667ba672ddc876f735b30fe09",
    "persuasion": "8061549557aebd2fd6e353d18d9197cb707029112bd52d4d8b174583a925848a",
}


def _decode_rdata(payload: bytes):
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that a bare serialization stream is "assumed RDS"
        return rdata.conversion.convert(rdata.parser.parse_data(payload))


def extract_novels(deb: Path, out_dir: Path) -> dict[str, Path]:
    """Decode every novel from the package into `out_dir/<name>.txt` (lines joined by newlines)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        data = Path(tmp) / RDATA_DIR
        index = _decode_rdata(gzip.decompress((data / "Rdata.rdx").read_bytes()))
        blob = (data / "Rdata.rdb").read_bytes()
        paths = {}
        for name in NOVELS:
            offset, length = (int(v) for v in index["variables"][name])
            # Each chunk: a 4-byte big-endian uncompressed length, then zlib data.
            lines = _decode_rdata(zlib.decompress(blob[offset + 4 : offset + length]))
            text = "\n".join(str(line) for line in lines) + "\n"
            paths[name] = out_dir / f"{name}.txt"
            atomic_write(paths[name], lambda tmp: tmp.write_text(text, encoding="utf-8"))  # noqa: B023 (called now)
    return paths


def ensure_corpus(verbose: bool = False) -> Path:
    """Build the corpus once; later calls only check that every novel is present."""
    out = cache_dir() / "austen"
    if all((out / f"{name}.txt").exists() for name in NOVELS):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        deb = apt_download(DEB_NAME, DEB_VERSION, DEB_SHA256, Path(tmp),
                           download_fix="Fix: run `apt-get update` as root, or pass your own text with --data PATH.",
                           mismatch_fix="Fix: check your apt sources, or pass your own text with --data PATH.")
        if verbose:
            print(f"fetched {deb.name} (sha256 ok)")
        paths = extract_novels(deb, out)
    for name, path in paths.items():
        if (got := sha256_file(path)) != TEXT_SHA256[name]:
            path.unlink()
            raise QuambaEdgeError(f"decoded {name}.txt has sha256 {got}, expected {TEXT_SHA256[name]}: the rdata "
                                  "decoder changed its output (tested with rdata 1.1.0). Fix: `pip install "
                                  "rdata==1.1.0`, or pass --data PATH.")
    return out


def train_text_files() -> list[Path]:
    root = ensure_corpus()
    return [root / f"{name}.txt" for name in TRAIN_NOVELS]


def heldout_text_file() -> Path:
    return ensure_corpus() / f"{HELDOUT_NOVEL}.txt"
