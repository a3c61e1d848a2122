"""Tokenizers: bytes for the bundled model; a checkpoint's own tokenizer.json for hub models."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from quamba_edge.errors import QuambaEdgeError


class Tokenizer(Protocol):
    def encode(self, text: str) -> Tensor: ...
    def decode(self, ids: list[int]) -> str: ...
    def byte_lengths(self) -> Tensor: ...  # UTF-8 bytes each token id stands for (bits/byte needs it)


class ByteTokenizer:
    """Token id = UTF-8 byte value: vocabulary 256, no files, every text encodable."""

    vocab_size = 256

    def encode(self, text: str) -> Tensor:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")

    def byte_lengths(self) -> Tensor:
        return torch.ones(256)


class HFTokenizer:
    """A `tokenizer.json` read with the `tokenizers` library (installed with transformers)."""

    def __init__(self, path: Path, vocab_size: int):
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as exc:
            raise QuambaEdgeError("this checkpoint needs the `tokenizers` package: pip install tokenizers") from exc
        self._tok = _Tok.from_file(str(path))
        self.vocab_size = vocab_size
        self._lengths: Tensor | None = None

    def encode(self, text: str) -> Tensor:
        return torch.tensor(self._tok.encode(text).ids, dtype=torch.long)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def byte_lengths(self) -> Tensor:
        if self._lengths is None:
            self._lengths = torch.tensor(
                [len(self._tok.decode([i]).encode("utf-8")) for i in range(self.vocab_size)], dtype=torch.float32
            )
        return self._lengths


def tokenizer_for(model_dir: Path, vocab_size: int) -> Tokenizer:
    if (Path(model_dir) / "tokenizer.json").exists():
        return HFTokenizer(Path(model_dir) / "tokenizer.json", vocab_size)
    if vocab_size == 256:
        return ByteTokenizer()
    raise QuambaEdgeError(
        f"{model_dir} has no tokenizer.json and its vocabulary ({vocab_size}) is not byte-level. "
        "Fix: copy the model's tokenizer.json into that directory."
    )
