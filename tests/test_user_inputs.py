"""Inputs modelled on public bug reports, through the user's commands: a checkpoint with its own byte-level BPE
evaluated on non-ASCII text, spot on a batch with a broken WAV in the middle, empty prompts and data files.
Each asserts the right value or a clear error whose fix, when it names one, works."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from safetensors.torch import save_file
from typer.testing import CliRunner

from quamba_edge.checkpoints.wav2vec2 import save_kws
from quamba_edge.cli import app
from quamba_edge.data.speech import write_wav
from quamba_edge.models.mamba import MambaConfig

from .conftest import make_model
from .test_speech_pipeline import LABELS, small_kws, speechlike
from .test_tokenizers import MIXED, byte_level_bpe

runner = CliRunner()


def _run(*args) -> object:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


@pytest.fixture
def bpe_mamba(tmp_path: Path) -> Path:
    """A Hugging Face layout Mamba (vocabulary 304 = the tokenizer's 300, padded) with its own tokenizer.json."""
    model = make_model(MambaConfig(d_model=32, n_layer=2, vocab_size=304, d_state=8))
    state = {k.replace("backbone.embedding.", "backbone.embeddings."): v.contiguous()
             for k, v in model.state_dict().items() if k != "lm_head.weight"}
    out = tmp_path / "bpe-mamba"
    out.mkdir()
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 32, "num_hidden_layers": 2,
                                                 "vocab_size": 304, "state_size": 8}))
    byte_level_bpe(out / "tokenizer.json")
    return out


def test_eval_counts_the_true_utf8_bytes_of_non_ascii_text(bpe_mamba, tmp_path):
    from tokenizers import Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    text = tmp_path / "mixed.txt"
    text.write_text(MIXED, encoding="utf-8")
    res = _run("eval", bpe_mamba, "--data", text, "--seq-len", 64, "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.output[res.output.index("{"):])
    # independent count: the raw bytes of every predicted token (positions 1..63 of each window)
    tok = Tokenizer.from_file(str(bpe_mamba / "tokenizer.json"))
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    ids = tok.encode(MIXED).ids
    windows = [ids[i : i + 64] for i in range(0, len(ids) // 64 * 64, 64)]
    predicted = sum(len(bytes(to_byte[c] for c in tok.id_to_token(i))) for w in windows for i in w[1:])
    assert result["samples"] == len(windows) and result["tokens"] == 63 * len(windows)
    assert result["bytes"] == predicted
    assert predicted < len(MIXED.encode("utf-8"))  # a sanity bound the old per-token decode broke (it was ~2x)


def test_spot_keeps_going_past_a_cut_download(tmp_path):
    save_kws(small_kws("adapool"), tmp_path / "kws")
    good = tmp_path / "good.wav"
    write_wav(good, speechlike(1, 16000, 3)[0].numpy(), 16000)
    riff = good.read_bytes()
    cut = tmp_path / "cut.wav"  # a LIST chunk before `data` that claims more bytes than the file has
    cut.write_bytes(riff[:36] + b"LIST" + (10**6).to_bytes(4, "little") + b"INFOabcd" + riff[36:])
    ext = tmp_path / "extensible.wav"  # the same samples behind a WAVE_FORMAT_EXTENSIBLE header
    fmt = (65534).to_bytes(2, "little") + riff[22:36] + (22).to_bytes(2, "little") + (16).to_bytes(2, "little") + \
        bytes(4) + (1).to_bytes(2, "little") + bytes.fromhex("000000001000800000aa00389b71")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + riff[36:]
    ext.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    res = _run("spot", tmp_path / "kws", good, cut, good, ext, "--json")
    assert res.exit_code == 1  # one file failed
    rows = json.loads(res.output)
    assert [r["file"] for r in rows] == [str(good), str(cut), str(good), str(ext)]
    assert "keyword" not in rows[1] and "cut.wav is not a readable audio file" in rows[1]["error"]
    assert rows[0]["keyword"] in LABELS and rows[0] == rows[2]
    assert rows[3]["keyword"] == rows[0]["keyword"] and rows[3]["confidence"] == pytest.approx(rows[0]["confidence"])


def test_an_empty_prompt_is_a_clear_error():
    res = _run("generate", "default", "--prompt", "", "--max-new-tokens", 2)
    assert res.exit_code == 2 and "prompt is empty" in res.output
    res = _run("generate", "default", "--prompt", "a", "--max-new-tokens", 0)  # a defined result: nothing added
    assert res.exit_code == 0 and "0 tokens" in res.output


def _command(command: str, tmp_path: Path) -> list:
    if command == "calibrate":
        return ["calibrate", "--model", "default", "--out", tmp_path / "out"]
    return ["eval", "default"]


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf"], ids=["empty", "bom-only"])
@pytest.mark.parametrize("command", ["calibrate", "eval"])
def test_an_empty_data_file_is_a_clear_error(tmp_path, content, command):
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    args = _command(command, tmp_path)
    res = _run(*args, "--data", data)
    assert res.exit_code == 2 and "is empty" in res.output and "Traceback" not in res.output
    assert "--samples 0" not in res.output


def _fix(output: str) -> list[str]:
    """The flags an error's `Fix: pass ...` names, ready to append to the command."""
    text = " ".join(output.split())
    match = re.search(r"Fix: pass ((?:--[\w-]+ \d+ ?)+)", text)
    assert match, text
    return shlex.split(match.group(1))


@pytest.mark.parametrize("command", ["calibrate", "eval"])
def test_data_shorter_than_a_window_names_a_fix_that_works(tmp_path, command):
    data = tmp_path / "short.txt"
    data.write_text("A short note.\n", encoding="utf-8")  # 14 bytes: not one window of 512
    args = _command(command, tmp_path)
    res = _run(*args, "--data", data)
    assert res.exit_code == 2 and "fewer than one window" in res.output
    again = _run(*args, "--data", data, *_fix(res.output))
    assert again.exit_code == 0, again.output


def test_too_few_windows_names_a_fix_that_works(tmp_path):
    data = tmp_path / "short.txt"
    data.write_text("word " * 300, encoding="utf-8")  # 1500 bytes = 2 windows of 512
    args = ["calibrate", "--model", "default", "--out", tmp_path / "out", "--data", data, "--samples", 8]
    res = _run(*args)
    assert res.exit_code == 2 and "2 samples of 512" in res.output
    again = _run(*args, *_fix(res.output))
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["calibration"]["samples"] == 2


@pytest.mark.parametrize("flag", ["--prompt-len", "--repeats", "--batch"])
def test_bench_with_an_empty_workload_is_a_usage_error(flag):
    res = _run("bench", "default", "--prompt-len", 4, "--gen-len", 2, flag, 0)
    assert res.exit_code == 2 and flag in res.output and res.exception is None or isinstance(res.exception, SystemExit)


def test_measure_refuses_zero_repeats():
    from quamba_edge.bench.measure import measure
    from quamba_edge.errors import QuambaEdgeError

    with pytest.raises(QuambaEdgeError, match="--repeats must be at least 1"):
        measure(None, None, repeats=0, threads=1)


def test_brackets_in_prompts_paths_and_errors_are_text_not_markup(tmp_path):
    res = _run("generate", "default", "--prompt", "bad [/] close [bold]x[/bold]", "--max-new-tokens", 2)
    assert res.exit_code == 0 and "bad [/] close [bold]x[/bold]" in res.output
    res = _run("eval", tmp_path / "br[x]" / "nope")
    assert res.exit_code == 2 and "br[x]" in res.output and "Traceback" not in res.output


def test_a_checkpoint_without_its_tokenizer_names_the_flag_and_the_flag_works(bpe_mamba, tmp_path):
    """The state-spaces/mamba-* repositories carry no tokenizer.json: the error names --tokenizer and the
    GPT-NeoX tokenizer; --tokenizer then works, and the artifact carries the tokenizer on."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(bpe_mamba, bare)
    tokenizer = tmp_path / "my-tokenizer.json"
    (bare / "tokenizer.json").rename(tokenizer)
    text = tmp_path / "text.txt"
    text.write_text(MIXED * 4, encoding="utf-8")
    args = ["calibrate", "--model", bare, "--data", text, "--samples", 2, "--seq-len", 32, "--out", tmp_path / "art"]
    res = _run(*args)
    assert res.exit_code == 2 and "--tokenizer EleutherAI/gpt-neox-20b" in " ".join(res.output.split())
    res = _run(*args, "--tokenizer", tokenizer)
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["source"]["tokenizer"] == str(tokenizer) and "tokenizer.json" in manifest["files"]
    res = _run("eval", tmp_path / "art", "--data", text, "--seq-len", 32, "--json")  # no flag: the artifact's own
    assert res.exit_code == 0, res.output
    res = _run("eval", bare, "--data", text, "--seq-len", 32, "--tokenizer", tmp_path / "none.json")
    assert res.exit_code == 2 and "no such tokenizer.json" in res.output
