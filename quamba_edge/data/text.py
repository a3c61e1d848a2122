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
    """The UTF-8 text of `path` (files concatenated in sorted order), a leading byte-order mark dropped.

    Raises QuambaEdgeError for a file that is not UTF-8, and when the data holds no text at all.
    """
    parts = []
    files = text_files(path)
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8-sig"))  # a BOM is a marker, not text
        except UnicodeDecodeError as exc:
            raise QuambaEdgeError(f"{f} is not UTF-8 text ({exc}). Fix: convert it with `iconv -t utf-8`.") from exc
    text = "".join(parts)
    if not text:
        what = f"{files[0]} is empty" if len(files) == 1 else f"the {len(files)} *.txt files under {path} are empty"
        raise QuambaEdgeError(f"{what} (no text, a byte-order mark at most). Fix: pass --data a file with text, "
                              "or `default` (the Austen corpus).")
    return text


@dataclass(frozen=True)
class Windows:
    tokens: Tensor  # (samples, seq_len) int64
    digest: str  # sha256 of the int32 token ids, in order
    available: int  # how many full windows the data holds


def take_windows(ids: Tensor, samples: int, seq_len: int, what: str = "data", option: str = "--samples") -> Windows:
    """The first `samples` non-overlapping windows of `seq_len` tokens: tokens (samples, seq_len) int64.

    `option` is the command's flag for the number of windows, named in the errors' fixes. Raises
    QuambaEdgeError when the arguments are out of range or the data is too short for them.
    """
    if seq_len < 2:
        raise QuambaEdgeError(f"--seq-len must be at least 2 (a window predicts its tokens 1..L-1 from the ones "
                              f"before them); got {seq_len}. Fix: pass --seq-len 2 or more.")
    if samples < 1:
        raise QuambaEdgeError(f"{option} must be at least 1; got {samples}. Fix: pass {option} 1 or more.")
    available = len(ids) // seq_len
    if available == 0:
        one_window = f"pass --seq-len {len(ids)}" + (f" {option} 1" if samples > 1 else "") + " for one window"
        fix = f"{one_window}, or more data" if len(ids) >= 2 else "pass more data"
        raise QuambaEdgeError(f"the {what} has {len(ids):,} tokens, fewer than one window of --seq-len {seq_len}. "
                              f"Fix: {fix}.")
    if samples > available:
        raise QuambaEdgeError(f"{option} {samples} x --seq-len {seq_len} needs {samples * seq_len:,} tokens, but the "
                              f"{what} has {len(ids):,} tokens = {available} samples of {seq_len}. Fix: pass {option} "
                              f"{available} (or fewer), a shorter --seq-len, or more data.")
    tokens = ids[: samples * seq_len].reshape(samples, seq_len).long()
    digest = hashlib.sha256(tokens.to(torch.int32).numpy().tobytes()).hexdigest()
    return Windows(tokens, digest, available)


def load_windows(path: str | Path, tokenizer: Tokenizer, samples: int, seq_len: int) -> Windows:
    return take_windows(tokenizer.encode(read_text(path)), samples, seq_len, what=f"data at {path}")
