"""Text for calibration and evaluation: UTF-8 files, tokenized, cut into fixed-length windows.

Windows are taken in file order with no shuffling (DESIGN.md), so a calibration run is reproducible
and its data digest (sha256 of the exact token windows used) identifies it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from quamba_edge.data import austen
from quamba_edge.data.tokenizers import Tokenizer
from quamba_edge.errors import QuambaEdgeError


def text_files(path: str | Path) -> list[Path]:
    """A file, or every *.txt under a directory (sorted); `default` / `default-heldout` name the corpus."""
    if str(path) == "default":
        return austen.train_text_files()
    if str(path) == "default-heldout":
        return [austen.heldout_text_file()]
    p = Path(path).expanduser()
    if not p.exists():
        raise QuambaEdgeError(f"no such data path: {p}. Fix: pass a UTF-8 text file or a directory of *.txt.")
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise QuambaEdgeError(f"{p} contains no *.txt files. Fix: point --data at UTF-8 text files.")
        return files
    return [p]


def read_text(path: str | Path) -> str:
    parts = []
    for f in text_files(path):
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise QuambaEdgeError(f"{f} is not UTF-8 text ({exc}). Fix: convert it with `iconv -t utf-8`.") from exc
    return "".join(parts)


@dataclass(frozen=True)
class Windows:
    tokens: Tensor  # (samples, seq_len) int64
    digest: str  # sha256 of the int32 token ids, in order
    available: int  # how many full windows the data holds


def take_windows(ids: Tensor, samples: int, seq_len: int, what: str = "data") -> Windows:
    """The first `samples` non-overlapping windows of `seq_len` tokens."""
    if samples < 1 or seq_len < 2:
        raise QuambaEdgeError(f"need --samples >= 1 and --seq-len >= 2 (got {samples}, {seq_len}).")
    available = len(ids) // seq_len
    if samples > available:
        raise QuambaEdgeError(
            f"--samples {samples} x --seq-len {seq_len} needs {samples * seq_len:,} tokens, but the {what} "
            f"has {len(ids):,} tokens = {available} samples of {seq_len}. Fix: pass --samples {available} "
            "(or fewer), a shorter --seq-len, or more data."
        )
    tokens = ids[: samples * seq_len].reshape(samples, seq_len).long()
    digest = hashlib.sha256(tokens.to(torch.int32).numpy().tobytes()).hexdigest()
    return Windows(tokens, digest, available)


def load_windows(path: str | Path, tokenizer: Tokenizer, samples: int, seq_len: int) -> Windows:
    return take_windows(tokenizer.encode(read_text(path)), samples, seq_len, what=f"data at {path}")
