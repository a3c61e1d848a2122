"""Tokenizers: bytes for the bundled model; a checkpoint's own tokenizer.json for hub models."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.paths import looks_like_hub_id


class Tokenizer(Protocol):
    def encode(self, text: str) -> Tensor: ...
    def decode(self, ids: list[int]) -> str: ...
    def byte_lengths(self) -> Tensor: ...  # UTF-8 bytes each token id stands for (bits/byte needs it)


class ByteTokenizer:
    """Token id = UTF-8 byte value: vocabulary 256, no files, every text encodable."""

    vocab_size = 256

    def encode(self, text: str) -> Tensor:
        """(len(text.encode('utf-8')),) int64; empty text gives an empty tensor."""
        return torch.from_numpy(np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64))

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")

    def byte_lengths(self) -> Tensor:
        return torch.ones(256)


# Where a long text may be cut for byte-level BPE: before " x" (x a letter, digit or _) that follows a non-space.
_CUT = re.compile(r"(?<=\S)(?= \w)")


class HFTokenizer:
    """A `tokenizer.json` read with the `tokenizers` library (installed with transformers)."""

    def __init__(self, path: Path, vocab_size: int):
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as exc:
            raise QuambaEdgeError("this checkpoint needs the `tokenizers` package: pip install tokenizers") from exc
        try:
            self._tok = _Tok.from_file(str(path))
            self._spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except Exception as exc:  # the library's own parse errors are bare Exceptions
            raise QuambaEdgeError(f"{path} is not a readable tokenizer.json ({str(exc)[:200]}). "
                                  "Fix: copy the model's tokenizer.json again.") from exc
        self.vocab_size = vocab_size
        self._lengths: Tensor | None = None
        pre = self._spec.get("pre_tokenizer") or {}
        post = self._spec.get("post_processor") or {}
        # chunked encoding is exact for GPT-2's regex under ByteLevel and no special tokens added per call
        self._byte_level = (pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                            and post.get("type") in (None, "ByteLevel"))

    def encode(self, text: str, chunk_chars: int = 1 << 18) -> Tensor:
        """(n,) int64 token ids. A long text under a byte-level BPE (GPT-2's pre-tokenizer regex, as the GPT-NeoX
        tokenizer of the public Mamba models) is encoded in pieces of about `chunk_chars` characters, each cut
        before a space that follows a non-space and precedes a letter, digit or underscore: that regex ends a
        pre-token there and starts " word" as the next, and BPE merges never cross pre-tokens, so the ids equal one
        encode of the whole text, without the library's per-token offsets and strings for all of it at once (about
        380 bytes a token: 380 MB for the default corpus)."""
        if len(text) <= 2 * chunk_chars or not self._byte_level:
            return torch.tensor(self._tok.encode(text).ids, dtype=torch.long)
        pieces, start = [], 0
        while start < len(text):
            cut = _CUT.search(text, start + chunk_chars) if start + chunk_chars < len(text) else None
            end = cut.start() if cut else len(text)
            pieces.append(np.asarray(self._tok.encode(text[start:end]).ids, dtype=np.int64))
            start = end
        return torch.from_numpy(np.concatenate(pieces))

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def byte_lengths(self) -> Tensor:
        """(vocab_size,) float32: the UTF-8 bytes of text each token id stands for, from its raw bytes.

        Decoding a token alone is wrong for a token that holds part of a multi-byte character: it
        decodes to U+FFFD, 3 bytes. So the count comes from the token's raw form, by the decoder the
        tokenizer declares: byte-level BPE (GPT-2, GPT-NeoX: one alphabet character per byte),
        sentencepiece byte fallback (`<0xNN>` is one byte; `▁` is a space), WordPiece (`##`
        continuation prefix), BPE end-of-word suffixes. Special added tokens stand for no text (0);
        ids past the tokenizer's vocabulary (the model's padded rows) are 0 as well. A sentencepiece
        normaliser that prepends `▁` gives the text's first token one extra byte; bits/byte never
        counts that token (it is never predicted).
        """
        if self._lengths is None:
            lengths = torch.zeros(self.vocab_size, dtype=torch.float32)
            special = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
            raw_len = _raw_length_rule(self._spec.get("decoder"))
            for token, i in self._tok.get_vocab(with_added_tokens=True).items():
                if i < self.vocab_size and i not in special:
                    lengths[i] = raw_len(token)
            self._lengths = lengths
        return self._lengths


def _decoder_steps(spec: dict | None) -> list[dict]:
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [step for inner in spec.get("decoders", []) for step in _decoder_steps(inner)]
    return [spec]


def _raw_length_rule(decoder: dict | None) -> Callable[[str], int]:
    """token string (as in the vocabulary) -> UTF-8 bytes of text it stands for, by the decoder's kind."""
    steps = _decoder_steps(decoder)
    kinds = {s.get("type") for s in steps}
    if "ByteLevel" in kinds:
        from tokenizers.pre_tokenizers import ByteLevel

        alphabet = set(ByteLevel.alphabet())  # the 256 characters GPT-2's byte-level BPE maps the bytes to
        return lambda token: sum(1 if ch in alphabet else len(ch.encode("utf-8")) for ch in token)
    replaces: list[tuple[str, str]] = []
    for s in steps:
        if s.get("type") == "Replace" and isinstance(s.get("pattern"), dict) and "String" in s["pattern"]:
            replaces.append((s["pattern"]["String"], s.get("content", "")))
        elif s.get("type") == "Metaspace":
            replaces.append((s.get("replacement", "▁"), " "))
    wordpiece_prefix = next((s.get("prefix", "##") for s in steps if s.get("type") == "WordPiece"), None)
    bpe_suffix = next((s.get("suffix", "</w>") for s in steps if s.get("type") == "BPEDecoder"), None)
    byte_fallback = "ByteFallback" in kinds

    def raw_len(token: str) -> int:
        if byte_fallback and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            return 1
        if wordpiece_prefix and token.startswith(wordpiece_prefix):
            token = token[len(wordpiece_prefix):]
        if bpe_suffix and token.endswith(bpe_suffix):
            token = token[: -len(bpe_suffix)] + " "
        for pattern, content in replaces:
            token = token.replace(pattern, content)
        return len(token.encode("utf-8"))

    return raw_len


def tokenizer_file(spec: str | Path) -> Path:
    """--tokenizer: a tokenizer.json, a directory holding one, or a hub id (its tokenizer.json is fetched
    with huggingface_hub). Raises QuambaEdgeError naming the fix when none can be found."""
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        return path
    if looks_like_hub_id(spec):
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(str(spec), "tokenizer.json"))
        except Exception as exc:  # network, auth, missing file: all end the same way for the user
            raise QuambaEdgeError(
                f"--tokenizer {spec}: not a local file and not fetched from the Hugging Face hub "
                f"({type(exc).__name__}). Fix: download it on a connected machine (`huggingface-cli download "
                f"{spec} tokenizer.json --local-dir DIR`) and pass --tokenizer DIR/tokenizer.json.") from exc
    raise QuambaEdgeError(f"--tokenizer {spec}: no such tokenizer.json. Fix: pass a tokenizer.json, a directory "
                          "holding one, or a hub id.")


def tokenizer_for(model_dir: Path, vocab_size: int, override: str | Path | None = None) -> Tokenizer:
    """The tokenizer of a checkpoint or artifact: `override` (--tokenizer) first, then the directory's
    tokenizer.json, then bytes for a 256-token vocabulary."""
    if override is not None:
        return HFTokenizer(tokenizer_file(override), vocab_size)
    if (Path(model_dir) / "tokenizer.json").exists():
        return HFTokenizer(Path(model_dir) / "tokenizer.json", vocab_size)
    if vocab_size == 256:
        return ByteTokenizer()
    raise QuambaEdgeError(
        f"{model_dir} has no tokenizer.json and its vocabulary ({vocab_size}) is not byte-level. The state-spaces/"
        "mamba-* checkpoints use the GPT-NeoX tokenizer, which their repositories do not carry. Fix: pass "
        "--tokenizer EleutherAI/gpt-neox-20b (or a local tokenizer.json); calibrate copies it into the artifact.")
