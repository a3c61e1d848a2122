"""The digit task's data: FSDD checked against its pinned digests (local copy or a download), the Asterisk
prompt sets, the 12-class trials (balanced, deterministic, exact SNR, silence and unknown), and the digit
spotter's eval refusing speakers it was trained on. Audio the tests need is written by the tests, except
where the real FSDD copy is used (skipped where it is absent)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from quamba_edge.data import asterisk, digits, fsdd
from quamba_edge.data.speech import DIGITS, SAMPLE_RATE, power, write_wav
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import sha256_file


def tone(seconds: float, freq: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) * np.hanning(len(t)) + 0.01 * rng.standard_normal(len(t))
            ).astype(np.float32)


def toy_sources(n_takes: int = 3, long_clip: bool = False) -> digits.Sources:
    clips = {d: [tone(0.3 + 0.05 * j, 200 + 40 * k, seed=10 * k + j) for j in range(n_takes)]
             for k, d in enumerate(DIGITS)}
    if long_clip:
        clips["zero"][0] = tone(1.4, 150)
    return digits.Sources(clips, [tone(0.4, 1500, 99)], [tone(2.0, 700, 98), tone(1.5, 900, 97)])


def bench_script(name: str):
    """benchmarks/<name>.py, imported as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_fsdd() -> Path:
    try:
        return fsdd.fsdd_root()
    except QuambaEdgeError:
        pytest.skip("no FSDD copy on this machine (calib/build_digits.py downloads one)")


# ------------------------------------------------------------------------------------------------ FSDD

def test_the_shipped_digest_list_is_pinned_and_complete():
    sums = fsdd.pinned_sums()
    assert len(sums) == 2500
    assert {Path(n).stem.split("_")[1] for n in sums} == set(fsdd.SPEAKERS)


def test_verify_names_a_changed_or_missing_recording(tmp_path):
    name = "recordings/3_lucas_7.wav"
    with pytest.raises(QuambaEdgeError, match="3_lucas_7.wav is missing.*build_digits.py"):
        fsdd.verify(tmp_path, [name])
    write_wav(tmp_path / name, tone(0.4, 300))
    with pytest.raises(QuambaEdgeError, match="does not match its pinned sha256"):
        fsdd.verify(tmp_path, [name])


def test_download_checks_every_file_before_writing_it(tmp_path):
    """A mirror serving a wrong file is refused and nothing is written; the right bytes are accepted
    (a file:// mirror made from the local copy stands in for the GitHub repository at the pinned commit)."""
    name = "recordings/0_george_0.wav"
    bad = tmp_path / "bad" / name
    bad.parent.mkdir(parents=True)
    write_wav(bad, tone(0.4, 300))
    dest = tmp_path / "dest"
    with pytest.raises(QuambaEdgeError, match="does not match its pinned sha256; refusing it"):
        fsdd.download(dest, (tmp_path / "bad").as_uri(), names=[name])
    assert not (dest / name).exists()
    with pytest.raises(QuambaEdgeError, match="could not download.*QUAMBA_EDGE_FSDD"):
        fsdd.download(dest, (tmp_path / "nowhere").as_uri(), names=[name])
    with pytest.raises(QuambaEdgeError, match="not an FSDD recording"):
        fsdd.download(dest, (tmp_path / "bad").as_uri(), names=["recordings/0_somebody_0.wav"])
    root = real_fsdd()
    fsdd.download(dest, root.as_uri(), names=[name, "recordings/9_yweweler_49.wav"])
    fsdd.verify(dest, [name, "recordings/9_yweweler_49.wav"])


def test_load_speakers_reads_real_takes_by_speaker_and_digit():
    data = fsdd.load_speakers(real_fsdd(), ["nicolas"], verify_files=True)
    assert list(data) == ["nicolas"] and list(data["nicolas"]) == list(DIGITS)
    assert all(len(v) == fsdd.TAKES for v in data["nicolas"].values())
    lengths = [len(c) / SAMPLE_RATE for v in data["nicolas"].values() for c in v]
    assert min(lengths) > 0.1 and max(lengths) < 1.5  # trimmed words, resampled from 8 kHz
    with pytest.raises(QuambaEdgeError, match="not theo"):
        fsdd.load_speakers(real_fsdd(), ["theo"])


def test_fsdd_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("QUAMBA_EDGE_FSDD", str(tmp_path / "none"))
    with pytest.raises(QuambaEdgeError, match="FSDD is not at .*none.*build_digits.py"):
        fsdd.fsdd_root()
    (tmp_path / "none" / "recordings").mkdir(parents=True)
    assert fsdd.fsdd_root() == tmp_path / "none"


# -------------------------------------------------------------------------------------------- Asterisk

def test_asterisk_sets_need_building_and_keep_digits_and_letters_out_of_the_words(tmp_path):
    with pytest.raises(QuambaEdgeError, match="not built.*build_digits.py"):
        asterisk.files("fr", tmp_path)
    root = asterisk.root("fr", tmp_path)
    entries = []
    for rel, seconds in [("digits/1.wav", 0.5), ("letters/o.wav", 0.4), ("hello.wav", 0.6), ("long-phrase.wav", 2.5),
                         ("vm/blip.wav", 0.05)]:
        write_wav(root / rel, tone(seconds, 300))
        entries.append({"path": rel, "sha256": sha256_file(root / rel)})
    (root / "manifest.json").write_text(json.dumps({"files": entries}))
    words = asterisk.words(["fr"], tmp_path)
    assert len(words) == 1 and 0.4 < len(words[0]) / SAMPLE_RATE <= 0.6  # hello only (trimmed)
    assert len(asterisk.prompts(["fr"], tmp_path, min_s=1.0)) == 1
    (root / "hello.wav").write_bytes(b"RIFF")
    with pytest.raises(QuambaEdgeError, match="hello.wav does not match its manifest sha256"):
        asterisk.files("fr", tmp_path, verify=True)


# ------------------------------------------------------------------------------------------------ trials

def test_trials_are_balanced_deterministic_and_labelled():
    src = toy_sources()
    a = digits.trials(src, 600, seed=3, snr_db=5.0, noise="babble")
    b = digits.trials(src, 600, seed=3, snr_db=5.0, noise="babble")
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.label_names == digits.LABELS and a.audio.shape == (600, SAMPLE_RATE)
    counts = np.bincount(a.labels, minlength=12)
    assert counts.min() > 25 and counts.max() < 80  # uniform over 12 classes (50 expected)
    assert set(a.clip_index[a.labels == digits.SILENCE]) == {-1}
    assert not np.array_equal(a.audio, digits.trials(src, 600, seed=4, snr_db=5.0, noise="babble").audio)


@pytest.mark.parametrize("noise", digits.NOISES)
def test_a_digit_trial_sits_at_the_exact_snr(noise):
    src = toy_sources()
    clean = digits.trials(src, 40, seed=5, snr_db=None, noise=noise)
    noisy = digits.trials(src, 40, seed=5, snr_db=10.0, noise=noise)
    for i in np.flatnonzero(noisy.labels < digits.SILENCE)[:5]:
        clip = src.digits[DIGITS[noisy.labels[i]]][noisy.clip_index[i]]
        window = np.zeros(SAMPLE_RATE, np.float32)
        window[noisy.offsets[i]:noisy.offsets[i] + len(clip)] = clip
        measured = 10 * math.log10(power(clip) / power(noisy.audio[i] - window))
        assert abs(measured - 10.0) < 0.01
    silent = clean.audio[clean.labels == digits.SILENCE]
    assert silent.size and not silent.any()  # clean silence is digital silence


def test_a_clip_longer_than_the_window_keeps_its_middle():
    src = toy_sources(long_clip=True)
    long = src.digits["zero"][0]
    cut = digits.fit(long, SAMPLE_RATE)
    assert len(cut) == SAMPLE_RATE and np.array_equal(cut, long[(len(long) - SAMPLE_RATE) // 2:][:SAMPLE_RATE])
    t = digits.trials(src, 200, seed=1, snr_db=None, noise="white")
    assert t.audio.shape[1] == SAMPLE_RATE


def test_training_windows_cover_every_take_and_class_evenly():
    src = toy_sources(n_takes=4)
    audio, labels, takes = digits.training_windows(src, copies=2, seed=0)
    assert len(audio) == 10 * 4 * 2 + 2 * 8
    assert np.bincount(labels).tolist() == [8] * 12
    assert takes.min() == 0 and takes.max() == 3  # a few-label subset (takes < k) keeps every class
    assert np.bincount(labels[takes < 2], minlength=12).min() >= 2
    audio2, labels2, _ = digits.training_windows(src, copies=2, seed=0)
    np.testing.assert_array_equal(audio, audio2)
    np.testing.assert_array_equal(labels, labels2)


def test_reversed_unknown_windows_are_training_takes_played_backwards():
    src = toy_sources(n_takes=4)
    recipe = digits.Recipe(reversed_unknown=1.0)
    audio, labels, takes = digits.training_windows(src, copies=1, seed=2, speed=(1.0, 1.0), recipe=recipe)
    reversed_takes = [c[::-1] for cs in src.digits.values() for c in cs]
    # most windows are noisy: find the take each unknown window holds by correlation
    for window, take in zip(audio[labels == digits.UNKNOWN], takes[labels == digits.UNKNOWN]):
        best = max(reversed_takes, key=lambda r: np.max(np.correlate(window, r, "valid")) / np.linalg.norm(r))
        assert any(best is c[::-1] or np.array_equal(best, c[::-1]) for cs in src.digits.values()
                   for c in cs[take:take + 1]), "a reversed unknown window reverses a take of its own index"
    base = digits.training_windows(src, copies=1, seed=2, speed=(1.0, 1.0))[0]
    assert not np.array_equal(audio[labels == digits.UNKNOWN], base[labels == digits.UNKNOWN])


def test_random_eq_keeps_length_and_shapes_the_spectrum_within_its_bounds():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(SAMPLE_RATE).astype(np.float32)
    out = digits.random_eq(noise, np.random.default_rng(1))
    assert out.dtype == np.float32 and out.shape == noise.shape
    spread = []
    for seed in range(20):
        out = digits.random_eq(noise, np.random.default_rng(seed))
        ratio_db = 20 * np.log10(np.abs(np.fft.rfft(out))[1:] / np.abs(np.fft.rfft(noise))[1:])
        assert np.abs(ratio_db).max() < 3 * 10 + 6 * np.log10(SAMPLE_RATE / 2 / 1000) + 0.1  # bells + tilt
        spread.append(ratio_db.max() - ratio_db.min())
    assert np.median(spread) > 6.0  # it does shape the spectrum, by several dB
    assert not np.array_equal(out, digits.random_eq(noise, np.random.default_rng(2)))


def test_recipe_names_and_bounds():
    assert digits.Recipe().name == "base"
    assert digits.CHANNEL_RECIPE.name == "rev0.5-eq0.5-syn100"
    with pytest.raises(QuambaEdgeError, match="shares lie in"):
        digits.Recipe(reversed_unknown=1.5)


def test_unknown_noise_is_refused():
    with pytest.raises(QuambaEdgeError, match="unknown noise 'brown'"):
        digits.trials(toy_sources(), 4, 0, 5.0, "brown")
    with pytest.raises(QuambaEdgeError, match="every digit"):
        digits.Sources({"zero": [tone(0.3, 200)]}, [tone(0.3, 200)], [tone(1, 200)])


# ----------------------------------------------------------------------------------- eval on speakers

def test_eval_refuses_speakers_the_spotter_heard(tmp_path):
    from quamba_edge.families import wav2vec2 as family
    from quamba_edge.models.kws import KwsConfig

    heard = KwsConfig(labels=digits.LABELS, trained_on={"dataset": "fsdd", "speakers": ["george", "lucas"]})
    assert family._digit_speakers(heard, "fsdd") == ["jackson", "nicolas", "yweweler", digits.ASTERISK_SPEAKER]
    with pytest.raises(QuambaEdgeError, match="trained on george.*jackson, nicolas, yweweler"):
        family._digit_speakers(heard, "fsdd:george")
    with pytest.raises(QuambaEdgeError, match="no test speaker 'theo'"):
        family._digit_speakers(heard, "fsdd:theo")
    with pytest.raises(QuambaEdgeError, match="does not record which speakers.*--data asterisk-en"):
        family._digit_speakers(KwsConfig(labels=digits.LABELS), "fsdd")
    assert family._digit_speakers(KwsConfig(labels=digits.LABELS), "asterisk-en") == ["asterisk-en"]
    assert KwsConfig.from_dict(heard.to_dict()).trained_on == heard.trained_on
    assert "trained_on" not in KwsConfig(labels=("a",)).to_dict()  # older configs are unchanged


def _small_digit_spotter(path: Path, speakers: list[str]) -> Path:
    from quamba_edge.checkpoints.wav2vec2 import save_kws
    from quamba_edge.models.kws import KeywordSpotter, KwsConfig
    from quamba_edge.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder

    torch.manual_seed(0)
    small = {**Wav2Vec2Config.tiny().to_dict(), "conv_dim": (16,) * 4, "hidden_size": 16, "num_layers": 1,
             "num_heads": 2, "ffn_dim": 32, "pos_conv_kernel": 8, "pos_conv_groups": 4}
    model = KeywordSpotter(Wav2Vec2Encoder(Wav2Vec2Config.from_dict(small)),
                           KwsConfig(labels=digits.LABELS, n_heads=2, window_s=1.0,
                                     trained_on={"dataset": "fsdd", "speakers": speakers}))
    save_kws(model, path)
    return path


def _need_real_sets() -> None:
    real_fsdd()
    try:
        digits.test_sources("nicolas")
    except QuambaEdgeError:
        pytest.skip("the Asterisk prompt sets are not built (calib/build_digits.py)")


def test_a_digit_spotter_scores_a_real_unseen_speaker_end_to_end(tmp_path):
    """The eval path on the real recordings of one held-out speaker (a small random model: the figures are
    not the point, the trials, labels and refusals are)."""
    _need_real_sets()
    from quamba_edge.families.registry import load
    from quamba_edge.pipeline import evaluate

    path = _small_digit_spotter(tmp_path / "kws", ["george", "jackson", "lucas", "yweweler"])
    result = evaluate(load(str(path)), "fsdd:nicolas", 0, 12, 8)
    assert [c["speaker"] for c in result["conditions"]] == ["nicolas"] * len(digits.CONDITIONS)
    assert all(c["trials"] == 12 and 0 <= c["accuracy"] <= 1 for c in result["conditions"])
    with pytest.raises(QuambaEdgeError, match="trained on lucas"):
        evaluate(load(str(path)), "fsdd:lucas", 0, 12, 8)


def test_eval_of_one_model_per_fold_prints_the_leave_one_speaker_out_table(tmp_path):
    """`quamba-edge eval A B --data fsdd`: each model on the FSDD speaker it never heard and on the Asterisk
    speaker, then the held-out speakers pooled per condition."""
    _need_real_sets()
    from typer.testing import CliRunner

    from quamba_edge.cli import app

    every = list(fsdd.SPEAKERS)
    a = _small_digit_spotter(tmp_path / "a", [s for s in every if s != "george"])
    b = _small_digit_spotter(tmp_path / "b", [s for s in every if s != "lucas"])
    res = CliRunner().invoke(app, ["eval", str(a), str(b), "--data", "fsdd", "--max-samples", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])  # after the progress bars
    assert [r["model"] for r in out["results"]] == [str(a), str(b)]
    speakers = {c["speaker"] for c in out["results"][0]["conditions"]}
    assert speakers == {"george", digits.ASTERISK_SPEAKER}
    summary = out["summary"]["rows"]
    assert len(summary) == len(digits.CONDITIONS)
    assert all(r["trials"] == 6 and r["speaker"] == "george+lucas" for r in summary)


def test_report_shows_the_seed_spread_only_where_a_fold_has_two_seeds():
    """benchmarks/digits_report.py: a fold trained with seeds 0 and 1 gets one row per seed (held-out clean and
    0 dB, Asterisk clean, each pooled over its trials); a report of single-seed runs has no such table."""
    report = bench_script("digits_report")

    def row(seed, speaker, snr, noise, acc):
        return {"protocol": "end-to-end", "pooling": "adapool", "precision": "fp32", "labels_per_class": 50,
                "recipe": "rev0.5-eq0.5-syn100", "steps": 900, "fold": "george", "seed": seed, "speaker": speaker,
                "snr_db": snr, "noise": noise, "accuracy": acc, "trials": 200}

    rows = [row(s, "george", "clean", "silence", a) for s, a in ((0, 0.745), (1, 0.70))]
    rows += [row(s, "george", 0.0, n, a) for s, a in ((0, 0.6), (1, 0.5)) for n in ("white", "pink", "babble")]
    rows += [row(s, "asterisk-en", "clean", "silence", a) for s, a in ((0, 0.8), (1, 0.9))]
    table = report.seed_table(rows)
    assert "| rev0.5-eq0.5-syn100 | 900 | george | 0 | 74.5 | 60.0 | 80.0 |" in table
    assert "| rev0.5-eq0.5-syn100 | 900 | george | 1 | 70.0 | 50.0 | 90.0 |" in table
    assert report.seed_table([r for r in rows if r["seed"] == 0]) is None


def test_the_scratch_encoders_dropout_is_overridden_tagged_and_refused_for_a_pretrained_one(tmp_path):
    """benchmarks/digits.py --dropout: the scratch encoder is built with that dropout (layerdrop half of it),
    every weight of the default build except the positional conv's init scale (fairseq's, which follows the
    dropout), a tag that says so; a pre-trained encoder, the frozen protocol and a dropout outside [0, 1) are
    refused before any data is built."""
    module = bench_script("digits")
    default, none = module.load_encoder("scratch"), module.load_encoder("scratch", 0.0)
    cfg = none.cfg
    assert (cfg.dropout, cfg.attention_dropout, cfg.feat_proj_dropout, cfg.layerdrop) == (0.0, 0.0, 0.0, 0.0)
    assert default.cfg.dropout == 0.1 and module.load_encoder("scratch", 0.2).cfg.layerdrop == 0.1
    a, b = default.state_dict(), none.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == ["pos_conv.weight_v", "pos_conv.weight_g"]
    scale = (none.pos_conv.weight_v.norm() / default.pos_conv.weight_v.norm()).item()
    assert math.isclose(scale, (1 / 0.9) ** 0.5, rel_tol=1e-5)  # std ~ sqrt(1 - dropout)
    x = torch.randn(2, 4000)
    none.train()
    torch.testing.assert_close(none(x).hidden, none.eval()(x).hidden)  # no dropout left: train = eval
    recipe = digits.Recipe(0.5, 0.5, 100)
    assert module.training_tag(recipe, 4, (0.0, 0.0), 0.0) == "rev0.5-eq0.5-syn100-x4-d0"
    assert module.training_tag(recipe) == "rev0.5-eq0.5-syn100"
    with pytest.raises(ValueError, match="scratch encoder only"):
        module.load_encoder(str(tmp_path), 0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        module.load_encoder("scratch", 1.0)
    for argv in (["grid", "--dropout", "0"], ["grid", "--protocol", "end-to-end", "--dropout", "1"],
                 ["grid", "--protocol", "end-to-end", "--encoder", f"w={tmp_path}", "--dropout", "0"]):
        with pytest.raises(SystemExit):
            module.main(argv)
