"""Build (or check) the real speech the digit spotter trains and is tested on, and print what is there.

    .venv/bin/python calib/build_digits.py            # FSDD checked (downloaded if absent), Asterisk x5 built

* FSDD: the five speakers' 2500 recordings, found locally (quamba_edge/data/fsdd.py lists where) or
  downloaded from the dataset's public repository at the pinned commit into <cache>/fsdd; every file is
  checked against the sha256 list shipped with the toolkit.
* Asterisk prompts in en, es, fr, it, ru: pinned Debian packages (apt-get download, sha256-checked)
  extracted into <cache>/speech/asterisk/<lang>/ with a manifest of every file's sha256.
The cache root is $QUAMBA_EDGE_CACHE (the Makefile points it at ./.cache).
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from quamba_edge.data import asterisk, fsdd
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.paths import cache_dir

console = Console()


def ensure_fsdd() -> str:
    try:
        root = fsdd.fsdd_root()
    except QuambaEdgeError:
        root = cache_dir() / "fsdd"
        total = len(fsdd.pinned_sums())
        columns = (TextColumn("FSDD"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("download", total=total)
            fsdd.download(root, on_file=lambda name: progress.advance(task))
    fsdd.verify(root)
    return str(root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="rebuild the Asterisk sets even when they match")
    args = ap.parse_args(argv)
    table = Table(title="real speech for the digit spotter")
    for col in ("set", "files", "where", "seconds"):
        table.add_column(col)
    try:
        start = time.perf_counter()
        root = ensure_fsdd()
        table.add_row("FSDD (5 speakers, checked)", str(len(fsdd.pinned_sums())), root,
                      f"{time.perf_counter() - start:.1f}")
        for lang in asterisk.PACKAGES:
            start = time.perf_counter()
            manifest = asterisk.build(lang, force=args.force)
            table.add_row(f"Asterisk {lang} ({manifest['config']['voice']})", str(len(manifest["files"])),
                          str(asterisk.root(lang)), f"{time.perf_counter() - start:.1f}")
    except QuambaEdgeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
