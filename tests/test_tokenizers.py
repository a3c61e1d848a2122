"""Bits per byte needs each token's true UTF-8 byte count: tokenizers in the two layouts public checkpoints ship
(byte-level BPE as in GPT-NeoX / the Mamba checkpoints; sentencepiece with `<0xNN>` byte fallback as in Llama),
trained here on ASCII so that non-ASCII text splits characters across tokens, checked against byte counts the
tests compute independently (the text's own encoding, and GPT-2's byte alphabet from transformers)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from quamba_edge.data.tokenizers import ByteTokenizer, HFTokenizer

ASCII = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
         "must be in want of a wife. However little known the feelings or views of such a man may be. ") * 20
MIXED = unicodedata.normalize("NFC", (
    "Café crème, naïve façade; Straße Ærø Øresund. Żółć gęślą jaźń. "
    "東京の天気は晴れです。北京欢迎你。한국어 텍스트. "
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧 and ₿ ≠ ∑ — “quotes” «guillemets». Ελληνικά, русский текст.\n"
) * 12)


def byte_level_bpe(path: Path) -> Path:
    """A 300-token GPT-NeoX-style tokenizer: NFC, byte-level pre-tokenizer and decoder, one special token."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([ASCII], trainer)
    tok.save(str(path))
    return path


def sentencepiece_bpe(path: Path) -> Path:
    """A Llama-style tokenizer.json: `▁` for spaces (prepended to the text), BPE with the 256 `<0xNN>` byte
    tokens as fallback, decoder Replace + ByteFallback + Fuse + Strip."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator([ASCII.replace(" ", "▁")], trainers.BpeTrainer(vocab_size=100, special_tokens=["<unk>"]))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    path.write_text(json.dumps(spec))
    return path


def test_byte_level_bpe_counts_the_raw_bytes_of_partial_characters(tmp_path):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path = byte_level_bpe(tmp_path / "tokenizer.json")
    tok = HFTokenizer(path, vocab_size=304)  # the model's vocabulary is padded past the tokenizer's 300
    ids = tok.encode(MIXED)
    assert tok.decode(ids.tolist()) == MIXED
    # independent oracle: each token's raw bytes through GPT-2's alphabet (transformers' copy)
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    raw = [bytes(to_byte[c] for c in Tokenizer.from_file(str(path)).id_to_token(i)) for i in ids.tolist()]
    assert b"".join(raw) == MIXED.encode("utf-8")
    lengths = tok.byte_lengths()
    assert lengths.shape == (304,) and lengths[300:].eq(0).all()
    assert lengths[ids].tolist() == [float(len(r)) for r in raw]
    assert int(lengths[ids].sum()) == len(MIXED.encode("utf-8"))
    partial = sum(1 for r in raw if not _whole_characters(r))
    assert partial > len(ids) // 4  # the text really does split characters across tokens
    special = Tokenizer.from_file(str(path)).token_to_id("<|endoftext|>")
    assert lengths[special] == 0


def test_sentencepiece_byte_fallback_counts_one_byte_per_byte_token(tmp_path):
    tok = HFTokenizer(sentencepiece_bpe(tmp_path / "tokenizer.json"), vocab_size=400)
    ids = tok.encode(MIXED)
    assert tok.decode(ids.tolist()) == MIXED
    pieces = [Tokenizer.from_file(str(tmp_path / "tokenizer.json")).id_to_token(i) for i in ids.tolist()]
    assert sum(p.startswith("<0x") for p in pieces) > len(ids) // 2  # the non-ASCII text falls back to bytes
    # the normaliser's prepended `▁` is one byte more than the text, carried by the first token
    assert int(tok.byte_lengths()[ids].sum()) == len(MIXED.encode("utf-8")) + 1
    assert int(tok.byte_lengths()[ids[1:]].sum()) == len(MIXED.encode("utf-8")) + 1 - int(tok.byte_lengths()[ids[0]])


@pytest.mark.parametrize("text", ["", "a", "é", "😀"])
def test_byte_tokenizer_counts_and_empty_text(text):
    ids = ByteTokenizer().encode(text)
    assert ids.dtype == torch.long and len(ids) == len(text.encode("utf-8"))
    assert ByteTokenizer().decode(ids.tolist()) == text


def _whole_characters(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_a_long_text_is_encoded_in_pieces_to_the_same_ids(tmp_path):
    """Byte-level BPE encodes a long text piecewise (cut before " word" after a non-space), to the very ids of one
    encode of the whole text: a cut in the wrong place (inside a word, or between two spaces) would change
    them, so the text has double spaces, newlines, digits and non-ASCII; the sentencepiece layout is never cut."""
    text = (ASCII.replace("a man", "a  man").replace(". ", ".\n\n") + MIXED + " 1234 _x") * 3
    bpe = HFTokenizer(byte_level_bpe(tmp_path / "bpe.json"), vocab_size=304)
    whole = torch.tensor(bpe._tok.encode(text).ids)
    assert bpe._byte_level and torch.equal(bpe.encode(text, chunk_chars=97), whole)
    cut_anywhere = torch.cat([bpe.encode(text[i : i + 97], chunk_chars=1 << 20) for i in range(0, len(text), 97)])
    assert not torch.equal(cut_anywhere, whole)  # naive fixed-size pieces do change the ids
    sp = HFTokenizer(sentencepiece_bpe(tmp_path / "sp.json"), vocab_size=400)
    assert not sp._byte_level and torch.equal(sp.encode(text, chunk_chars=97), torch.tensor(sp._tok.encode(text).ids))
