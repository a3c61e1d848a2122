import pytest
import torch

from quamba_edge.data import austen
from quamba_edge.data.text import read_text, take_windows, text_files
from quamba_edge.data.tokenizers import ByteTokenizer
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import sha256_file


def test_default_corpus_is_built_offline_and_checked():
    """Builds from Debian's r-cran-janeaustenr on first use (cached afterwards) and pins every text."""
    root = austen.ensure_corpus()
    for name in austen.NOVELS:
        assert sha256_file(root / f"{name}.txt") == austen.TEXT_SHA256[name]
    assert austen.HELDOUT_NOVEL not in austen.TRAIN_NOVELS
    assert read_text("default-heldout").startswith("Persuasion")


def test_windows_are_in_file_order_and_digested():
    ids = torch.arange(100) % 256
    w = take_windows(ids, 3, 10)
    assert torch.equal(w.tokens[1], ids[10:20]) and w.available == 10
    assert w.digest == take_windows(ids, 3, 10).digest != take_windows(ids, 2, 10).digest


def test_too_many_samples():
    with pytest.raises(QuambaEdgeError, match=r"has 100 tokens = 10 samples of 10.*--samples 10"):
        take_windows(torch.zeros(100), 11, 10)


def test_directory_and_bad_files(tmp_path):
    (tmp_path / "b.txt").write_text("world")
    (tmp_path / "a.txt").write_text("hello ")
    assert read_text(tmp_path) == "hello world"
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(QuambaEdgeError, match="not UTF-8"):
        read_text(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QuambaEdgeError, match="no \\*.txt"):
        text_files(empty)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "Anne Elliot — café"
    assert tok.decode(tok.encode(text).tolist()) == text
