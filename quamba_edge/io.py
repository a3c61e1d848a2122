"""Atomic file writes and checksums: a crash or a full disk never leaves a half-written artifact."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from quamba_edge.errors import QuambaEdgeError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` on a temporary file in the same directory, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written file gets the permissions open() would give
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n"))


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (POSIX: the directory entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file in a directory, then the directory, before it is renamed into place."""
    for f in Path(path).iterdir():
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(path)


def swap_dir_into_place(tmp: Path, out_dir: Path) -> None:
    """Move a finished artifact over an older one; if the last rename fails, the older one is put back."""
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    had_old = out_dir.exists()
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except BaseException:
        if had_old:
            old.rename(out_dir)
        raise
    fsync_dir(out_dir.parent)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out_dir: Path, *, ours: Callable[[Path], bool], what: str):
    """Build a directory under a temporary name; on success fsync it and swap it into place, on any
    error remove it. An existing `out_dir` is replaced only by a complete new one, and only if it is
    empty or `ours` recognises it (`what` names the kind for the error): nobody's notes get deleted."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not ours(out_dir):
        raise QuambaEdgeError(
            f"{out_dir} exists and is not {what}; refusing to overwrite it. "
            "Fix: choose an empty or new --out directory."
        )
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_tree(tmp)
        swap_dir_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
