"""Speech data layer: WAV I/O and its refusals, resampling, noise at an exact SNR, KWS trials, and the
TTS build script's deterministic parts. Every file is written by the test itself (no cache needed)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import struct
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from quamba_edge.data.speech import (
    REAL_CLIPS,
    VOCAB,
    add_noise,
    babble_noise,
    kws_trials,
    load_keyword_clips,
    pink_noise,
    place_in_window,
    power,
    read_wav,
    resample,
    telephone_band,
    trim_silence,
    white_noise,
    write_wav,
)
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import sha256_file

REPO = Path(__file__).resolve().parents[1]


def load_build_script():
    """calib/ is scripts, not a package: import build_speech.py by path (registered first, as dataclasses need)."""
    if "build_speech" in sys.modules:
        return sys.modules["build_speech"]
    spec = importlib.util.spec_from_file_location("build_speech", REPO / "calib" / "build_speech.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_speech"] = module
    spec.loader.exec_module(module)
    return module


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def write_raw_wav(path: Path, frames: bytes, *, channels: int, width: int, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)


def snr_db(clean: np.ndarray, mixture: np.ndarray, ref_power: float | None = None) -> float:
    noise = mixture.astype(np.float64) - clean.astype(np.float64)
    return 10 * math.log10((power(clean) if ref_power is None else ref_power) / power(noise))


def fake_clips(seed: int = 0, per_word: int = 3, words=("zero", "one", "hello")) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {w: [(0.2 * rng.standard_normal(int(rng.integers(3000, 15000)))).astype(np.float32)
                for _ in range(per_word)] for w in words}


# --------------------------------------------------------------------------------------------- WAV I/O


def test_write_read_round_trip(tmp_path: Path) -> None:
    x = sine(440, 16000, 0.5) + 0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    path = tmp_path / "a.wav"
    write_wav(path, x, 16000)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 8000)
    y = read_wav(path, 16000)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.max(np.abs(y - x)) <= 0.5 / 32768 + 1e-7  # one rounding of a 16-bit step
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary behind


def test_write_clips_out_of_range_and_refuses_nan(tmp_path: Path) -> None:
    write_wav(tmp_path / "loud.wav", np.array([2.0, -2.0, 0.5], np.float32), 16000)
    assert np.allclose(read_wav(tmp_path / "loud.wav", None), [32767 / 32768, -1.0, 0.5])
    with pytest.raises(QuambaEdgeError, match="NaN"):
        write_wav(tmp_path / "nan.wav", np.array([0.0, np.nan], np.float32), 16000)
    with pytest.raises(QuambaEdgeError, match="mono"):
        write_wav(tmp_path / "st.wav", np.zeros((10, 2), np.float32), 16000)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths_decode_to_the_same_values(tmp_path: Path, width: int) -> None:
    values = np.array([0.0, 0.5, -0.5, 0.25, -1.0], np.float64)
    if width == 1:
        frames = (np.round(values * 128) + 128).clip(0, 255).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(values * 2**23).astype(np.int64).clip(-(2**23), 2**23 - 1)
        frames = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        scale, dtype = {2: (2**15, "<i2"), 4: (2**31, "<i4")}[width]
        frames = np.round(values * scale).clip(-scale, scale - 1).astype(dtype).tobytes()
    path = tmp_path / f"w{width}.wav"
    write_raw_wav(path, frames, channels=1, width=width, rate=16000)
    assert np.allclose(read_wav(path, None), values, atol=1 / 128)
    assert np.allclose(read_wav(path, None), values, atol=1.5 / 2 ** (8 * width - 1))


def test_resample_keeps_frequency_and_duration() -> None:
    for src, dst, freq in [(8000, 16000, 1000.0), (22050, 16000, 3000.0), (16000, 8000, 440.0)]:
        x = sine(freq, src, 1.0)
        y = resample(x, src, dst)
        assert len(y) == round(len(x) * dst / src)
        assert abs(peak_hz(y, dst) - freq) <= 2.0, (src, dst, peak_hz(y, dst))
        # and the level: an HQ resampler keeps a pass-band sine's RMS (edges aside)
        assert abs(power(y[dst // 10 : -dst // 10]) / power(x[src // 10 : -src // 10]) - 1) < 0.01


def test_resample_removes_content_above_the_new_nyquist() -> None:
    x = sine(6000, 16000, 1.0)  # above 4 kHz: must not alias down to 2 kHz
    y = resample(x, 16000, 8000)
    assert power(y[800:-800]) < 1e-4 * power(x)


def test_8k_file_read_at_16k(tmp_path: Path) -> None:
    path = tmp_path / "tel.wav"
    write_wav(path, sine(700, 8000, 0.8), 8000)
    y = read_wav(path, 16000)
    assert len(y) == 12800
    assert abs(peak_hz(y, 16000) - 700) <= 2.0
    assert len(read_wav(path, None)) == 6400  # None keeps the file's rate


def test_stereo_refused_or_downmixed(tmp_path: Path) -> None:
    left = np.round(sine(300, 16000, 0.2) * 32767).astype("<i2")
    right = np.round(sine(500, 16000, 0.2, amp=0.25) * 32767).astype("<i2")
    path = tmp_path / "stereo.wav"
    write_raw_wav(path, np.stack([left, right], 1).tobytes(), channels=2, width=2, rate=16000)
    with pytest.raises(QuambaEdgeError, match="2 channels.*mix_to_mono"):
        read_wav(path)
    mono = read_wav(path, mix_to_mono=True)
    assert np.allclose(mono, (left.astype(np.float64) + right) / 2 / 32768, atol=1e-6)


def test_missing_empty_corrupt_and_silent_files(tmp_path: Path) -> None:
    with pytest.raises(QuambaEdgeError, match="no such file"):
        read_wav(tmp_path / "nope.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(QuambaEdgeError, match="empty file"):
        read_wav(tmp_path / "empty.wav")
    (tmp_path / "text.wav").write_text("this is not audio at all, just text pretending to be a wav file\n")
    with pytest.raises(QuambaEdgeError, match="not a readable audio file"):
        read_wav(tmp_path / "text.wav")
    write_wav(tmp_path / "good.wav", sine(440, 16000, 0.1), 16000)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "good.wav").read_bytes()[:30])  # header cut short
    with pytest.raises(QuambaEdgeError, match="corrupt|not a readable"):
        read_wav(tmp_path / "cut.wav")
    write_raw_wav(tmp_path / "noframes.wav", b"", channels=1, width=2, rate=16000)
    with pytest.raises(QuambaEdgeError, match="no audio"):
        read_wav(tmp_path / "noframes.wav")
    write_wav(tmp_path / "silent.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(QuambaEdgeError, match="silence"):
        read_wav(tmp_path / "silent.wav", reject_silent=True)
    assert not read_wav(tmp_path / "silent.wav").any()  # allowed unless asked to reject


def _fmt(tag: int = 1, channels: int = 1, bits: int = 16, rate: int = 16000, extensible: bool = False) -> bytes:
    """A `fmt ` chunk; extensible: WAVE_FORMAT_EXTENSIBLE (tag 65534) with `tag` as the sub-format GUID."""
    block = channels * bits // 8
    body = struct.pack("<HHIIHH", 65534 if extensible else tag, channels, rate, rate * block, block, bits)
    if extensible:  # cbSize, valid bits, channel mask, sub-format GUID (KSDATAFORMAT_SUBTYPE_*)
        guid = struct.pack("<H", tag) + bytes.fromhex("000000001000800000aa00389b71")
        body += struct.pack("<HHI", 22, bits, 0) + guid
    return b"fmt " + struct.pack("<I", len(body)) + body


def _chunk(name: bytes, payload: bytes, size: int | None = None, pad: bool = True) -> bytes:
    size = len(payload) if size is None else size
    return name + struct.pack("<I", size) + payload + (b"\0" if pad and len(payload) % 2 else b"")


def _riff(*chunks: bytes, size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if size is None else size) + body


_TONE = np.round(np.sin(np.arange(400) / 7.0) * 0.6 * 32768).astype("<i2")  # 400 frames of 16-bit PCM
_VALUES = _TONE.astype(np.float32) / 32768
_FLOATS = np.linspace(-1.0, 1.0, 64)
_I32 = np.round(_FLOATS * 2**31).clip(-(2**31), 2**31 - 1).astype("<i4")
_I24 = b"".join(int(v).to_bytes(3, "little", signed=True) for v in np.round(_FLOATS * 2**23).clip(-(2**23), 2**23 - 1))
_U8 = (np.round(_FLOATS * 128) + 128).clip(0, 255).astype(np.uint8)
_GOOD = _riff(_fmt(), _chunk(b"data", _TONE.tobytes()))
_STEREO = np.stack([_TONE, -_TONE // 2], 1)

# name -> (file bytes, expected mono samples, or the error a user must see)
WAV_TABLE: dict[str, tuple[bytes, np.ndarray | str]] = {
    "pcm8": (_riff(_fmt(bits=8), _chunk(b"data", _U8.tobytes())), (_U8.astype(np.float32) - 128) / 128),
    "pcm16": (_GOOD, _VALUES),
    "pcm24": (_riff(_fmt(bits=24), _chunk(b"data", _I24)), _FLOATS.clip(-1, 1 - 2**-23)),
    "pcm32": (_riff(_fmt(bits=32), _chunk(b"data", _I32.tobytes())), _I32 / 2**31),
    "float32": (_riff(_fmt(3, bits=32), _chunk(b"data", _FLOATS.astype("<f4").tobytes())), _FLOATS),
    "float64": (_riff(_fmt(3, bits=64), _chunk(b"data", _FLOATS.astype("<f8").tobytes())), _FLOATS),
    "extensible-pcm16": (_riff(_fmt(extensible=True), _chunk(b"data", _TONE.tobytes())), _VALUES),
    "extensible-pcm24": (_riff(_fmt(bits=24, extensible=True), _chunk(b"data", _I24)),
                         _FLOATS.clip(-1, 1 - 2**-23)),
    "extensible-pcm32": (_riff(_fmt(bits=32, extensible=True), _chunk(b"data", _I32.tobytes())), _I32 / 2**31),
    "extensible-float": (_riff(_fmt(3, bits=32, extensible=True), _chunk(b"data", _FLOATS.astype("<f4").tobytes())),
                         _FLOATS),
    "streamed-size-ffffffff": (_riff(_fmt(), _chunk(b"data", _TONE.tobytes(), size=0xFFFFFFFF), size=0xFFFFFFFF),
                               _VALUES),
    "streamed-size-0": (_riff(_fmt(), _chunk(b"data", _TONE.tobytes(), size=0), size=0), _VALUES),
    "odd-chunk-with-pad": (_riff(_fmt(), _chunk(b"junk", b"abc"), _chunk(b"data", _TONE.tobytes())), _VALUES),
    "stereo-mixed": (_riff(_fmt(channels=2), _chunk(b"data", _STEREO.tobytes())),
                     _STEREO.astype(np.float64).mean(1) / 32768),
    "cut-in-data": (_GOOD[: 44 + 2 * 100 + 1], "cut short: its data chunk declares 800 bytes but the file holds 201"),
    "empty": (b"", "empty file"),
    "header-only": (_riff(_fmt()), "not a readable audio file.*data"),
    "no-samples": (_riff(_fmt(), _chunk(b"data", b"")), "no audio"),
    "cut-in-riff-header": (_GOOD[:10], "not a readable audio file"),
    "cut-in-fmt": (_GOOD[:30], "not a readable audio file"),
    "cut-in-data-header": (_GOOD[:40], "not a readable audio file"),
    "chunk-claims-more-than-the-file": (_riff(_fmt(), _chunk(b"LIST", b"INFOabcd", size=10**6),
                                              _chunk(b"data", _TONE.tobytes())), "not a readable audio file"),
    "odd-chunk-without-pad": (_riff(_fmt(), _chunk(b"junk", b"abc", pad=False), _chunk(b"data", _TONE.tobytes())),
                              "not a readable audio file"),
    "40-bit": (_riff(_fmt(bits=40), _chunk(b"data", bytes(50))), "not a readable audio file.*unimplemented"),
    "zero-channels": (_riff(_fmt(channels=0), _chunk(b"data", _TONE.tobytes())), "not a readable audio file"),
    "nan-samples": (_riff(_fmt(3, bits=32), _chunk(b"data", np.array([0.0, np.nan, 0.5], "<f4").tobytes())),
                    "NaN or infinite"),
    "not-audio": (b"this is not audio at all, just text pretending to be a wav file\n", "not a readable audio file"),
}


@pytest.mark.parametrize("name", list(WAV_TABLE))
def test_wav_file_table(tmp_path: Path, name: str) -> None:
    """Every header a recorder or editor writes decodes to the right samples; every broken file is our error,
    naming the file (never the decoder's bare RuntimeError)."""
    payload, expected = WAV_TABLE[name]
    path = tmp_path / f"{name}.wav"
    path.write_bytes(payload)
    if isinstance(expected, str):
        with pytest.raises(QuambaEdgeError, match=expected) as info:
            read_wav(path, None, mix_to_mono=True)
        assert str(path) in str(info.value)
    else:
        got = read_wav(path, None, mix_to_mono=True)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.allclose(got, expected, atol=1e-6), np.abs(got - expected).max()


def test_trim_silence_cuts_the_padding_only() -> None:
    word = sine(500, 16000, 0.4)
    padded = np.concatenate([np.zeros(8000, np.float32), word, np.zeros(4000, np.float32)])
    out = trim_silence(padded, pad_s=0.0)
    assert abs(len(out) - len(word)) <= 160  # within one 10 ms frame
    assert power(out) > 0.9 * power(word)


# ------------------------------------------------------------------------------------------------ noise


@pytest.mark.parametrize("target", [-5.0, 0.0, 7.5, 20.0])
def test_add_noise_hits_the_snr(target: float) -> None:
    rng = np.random.default_rng(1)
    clean = sine(440, 16000, 1.0, amp=0.3)
    for noise in (white_noise(16000, rng), pink_noise(40000, rng)):  # equal length, and longer (a segment)
        mixed = add_noise(clean, noise, target, rng)
        assert abs(snr_db(clean, mixed) - target) < 0.001
    # a reference power other than the signal's (what kws_trials passes: the keyword's, not the window's)
    mixed = add_noise(clean, white_noise(16000, rng), target, signal_power=0.01)
    assert abs(snr_db(clean, mixed, ref_power=0.01) - target) < 0.001


def test_add_noise_takes_a_random_contiguous_segment_of_a_longer_noise() -> None:
    clean = np.zeros(1000, np.float32)
    clean[0] = 1.0
    noise = np.arange(1, 5001, dtype=np.float32)  # a ramp: a segment's first value is its start + 1
    starts = []
    for seed in range(3):
        a = (add_noise(clean, noise, 0.0, np.random.default_rng(seed)) - clean).astype(np.float64)
        a[0] = a[1] - (a[2] - a[1])  # sample 0 also holds the signal's impulse
        step = (a[-1] - a[0]) / 999  # the gain: a ramp segment rises by one per sample
        assert np.allclose(np.diff(a) / step, 1.0, atol=1e-2)  # contiguous, in order
        starts.append(round(a[0] / step) - 1)
    assert len(set(starts)) == 3 and all(0 <= s <= 4000 for s in starts)


def test_add_noise_none_and_inf_mean_clean_and_silence_is_refused() -> None:
    clean = sine(440, 16000, 0.1)
    rng = np.random.default_rng(0)
    assert np.array_equal(add_noise(clean, white_noise(1600, rng), None), clean)
    assert np.array_equal(add_noise(clean, white_noise(1600, rng), math.inf), clean)
    with pytest.raises(QuambaEdgeError, match="signal is silent"):
        add_noise(np.zeros(100, np.float32), white_noise(100, rng), 10.0)
    with pytest.raises(QuambaEdgeError, match="noise is silent"):
        add_noise(clean, np.zeros(1600, np.float32), 10.0)


def _slope_db_per_octave(noise_fn, n: int = 16000, reps: int = 20) -> float:
    rng = np.random.default_rng(3)
    psd = np.mean([np.abs(np.fft.rfft(noise_fn(n, rng))) ** 2 for _ in range(reps)], axis=0)
    f = np.fft.rfftfreq(n, 1 / 16000)
    band = (f >= 50) & (f <= 6000)
    slope, _ = np.polyfit(np.log2(f[band]), 10 * np.log10(psd[band]), 1)
    return float(slope)


def test_pink_noise_falls_3db_per_octave_and_white_is_flat() -> None:
    assert -3.6 < _slope_db_per_octave(pink_noise) < -2.4
    assert abs(_slope_db_per_octave(white_noise)) < 0.5
    assert abs(power(pink_noise(24000, np.random.default_rng(0))) - 1) < 1e-4


def test_babble_is_deterministic_unit_power_speech_mixture() -> None:
    clips = [c for v in fake_clips().values() for c in v]
    a = babble_noise(24000, np.random.default_rng(5), clips)
    b = babble_noise(24000, np.random.default_rng(5), clips)
    c = babble_noise(24000, np.random.default_rng(6), clips)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(power(a) - 1) < 1e-4
    with pytest.raises(QuambaEdgeError, match="non-silent"):
        babble_noise(100, np.random.default_rng(0), [np.zeros(10, np.float32)])


# ------------------------------------------------------------------------------------------------ trials


def test_place_in_window() -> None:
    clip = np.ones(100, np.float32)
    out = place_in_window(clip, 1000, 250)
    assert out[250:350].all() and not out[:250].any() and not out[350:].any()
    bg = np.full(1000, 0.5, np.float32)
    out = place_in_window(clip, 1000, 900, bg)
    assert np.allclose(out[900:], 1.5) and np.allclose(out[:900], 0.5) and np.allclose(bg, 0.5)
    with pytest.raises(QuambaEdgeError, match="outside"):
        place_in_window(clip, 1000, 901)
    with pytest.raises(QuambaEdgeError, match="does not fit"):
        place_in_window(np.ones(1001, np.float32), 1000, 0)


def test_kws_trials_clean_puts_the_clip_at_its_offset() -> None:
    clips = fake_clips()
    t = kws_trials(clips, None, 60, seed=7)
    assert t.audio.shape == (60, 24000) and t.label_names == ("zero", "one", "hello")
    assert set(t.labels.tolist()) == {0, 1, 2}
    assert len(set(t.offsets.tolist())) > 30  # offsets vary
    for i in range(60):
        clip = clips[t.label_names[t.labels[i]]][t.clip_index[i]]
        off, n = int(t.offsets[i]), len(clip)
        assert t.clip_lengths[i] == n and off + n <= 24000
        assert np.array_equal(t.audio[i, off : off + n], clip)
        assert not t.audio[i, :off].any() and not t.audio[i, off + n :].any()


@pytest.mark.parametrize("noise", ["white", "pink", "babble"])
def test_kws_trials_are_deterministic_and_at_the_snr(noise: str) -> None:
    clips = fake_clips()
    a = kws_trials(clips, 5.0, 40, seed=11, noise=noise)
    b = kws_trials(clips, 5.0, 40, seed=11, noise=noise)
    c = kws_trials(clips, 5.0, 40, seed=12, noise=noise)
    assert np.array_equal(a.audio, b.audio) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.audio, c.audio)
    for i in range(40):
        clip = clips[a.label_names[a.labels[i]]][a.clip_index[i]]
        keyword = place_in_window(clip, 24000, int(a.offsets[i]))
        # SNR relative to the keyword clip's own power, noise measured over the whole window
        assert abs(snr_db(keyword, a.audio[i], ref_power=power(clip)) - 5.0) < 0.01


def test_kws_trials_500_per_condition_are_cheap() -> None:
    clips = fake_clips(per_word=10, words=VOCAB)
    start = time.perf_counter()
    for noise in ("white", "pink", "babble"):
        kws_trials(clips, 0.0, 500, seed=0, noise=noise)
    assert time.perf_counter() - start < 10.0  # ~1.6 s on 2 CPU cores


def test_kws_trials_refuses_clips_longer_than_the_window() -> None:
    with pytest.raises(QuambaEdgeError, match="longer than the 1.5 s window"):
        kws_trials({"zero": [np.ones(30000, np.float32)]}, None, 1, seed=0)
    with pytest.raises(QuambaEdgeError, match="at least one clip"):
        kws_trials({"zero": []}, None, 1, seed=0)
    with pytest.raises(QuambaEdgeError, match="silent"):  # even clean: a silent "keyword" is a mislabeled trial
        kws_trials({"zero": [np.zeros(100, np.float32)]}, None, 1, seed=0)


# ------------------------------------------------------------------------------- cache and build script


def test_loaders_read_the_manifest_and_catch_edited_files(tmp_path: Path) -> None:
    root = tmp_path / "speech"
    clips = []
    for i, word in enumerate(VOCAB):
        rel = f"{word}/0.wav"
        audio = np.concatenate([np.zeros(1600, np.float32), sine(200 + 50 * i, 16000, 0.3), np.zeros(1600, np.float32)])
        write_wav(root / "synth" / rel, audio, 16000)
        clips.append({"word": word, "path": rel, "sha256": sha256_file(root / "synth" / rel)})
    (root / "synth" / "manifest.json").write_text(json.dumps({"kind": "synth", "clips": clips}))
    loaded = load_keyword_clips("synth", root)
    assert list(loaded) == list(VOCAB) and all(len(v) == 1 for v in loaded.values())
    assert all(len(v[0]) < 0.3 * 16000 + 2000 for v in loaded.values())  # silence trimmed
    write_wav(root / "synth" / "zero/0.wav", sine(999, 16000, 0.3), 16000)
    with pytest.raises(QuambaEdgeError, match="does not match its manifest"):
        load_keyword_clips("synth", root, verify=True)
    with pytest.raises(QuambaEdgeError, match="not built.*build_speech"):
        load_keyword_clips("real", root)


def test_keyword_clips_of_chosen_engines_and_the_telephone_band(tmp_path: Path) -> None:
    root = tmp_path / "speech"
    clips = []
    for i, word in enumerate(VOCAB):
        for j, engine in enumerate(("espeak-ng", "festival")):
            rel = f"{word}/{j}.wav"
            write_wav(root / "synth" / rel, sine(300 + 40 * i + 7 * j, 16000, 0.3), 16000)
            clips.append({"word": word, "path": rel, "sha256": sha256_file(root / "synth" / rel), "engine": engine})
    (root / "synth" / "manifest.json").write_text(json.dumps({"kind": "synth", "clips": clips}))
    everything = load_keyword_clips("synth", root)
    festival = load_keyword_clips("synth", root, engines=["festival"])
    assert all(len(v) == 2 for v in everything.values()) and all(len(v) == 1 for v in festival.values())
    assert all(np.array_equal(festival[w][0], everything[w][1]) for w in VOCAB)
    with pytest.raises(QuambaEdgeError, match="no clips"):
        load_keyword_clips("synth", root, engines=["flite"])

    # band-limiting: nothing left above 4 kHz where it is applied, the clip untouched where it is not
    wide = {"zero": [(sine(1000, 16000, 0.5) + sine(6000, 16000, 0.5)).astype(np.float32)]}
    spec = np.abs(np.fft.rfft(telephone_band(wide, np.random.default_rng(0), 1.0)["zero"][0])) ** 2
    f = np.fft.rfftfreq(len(wide["zero"][0]), 1 / 16000)
    assert spec[f > 4500].sum() < 1e-4 * spec.sum()
    assert np.array_equal(telephone_band(wide, np.random.default_rng(0), 0.0)["zero"][0], wide["zero"][0])


def test_real_clip_map_covers_the_vocabulary() -> None:
    assert list(REAL_CLIPS) == list(VOCAB)
    assert [REAL_CLIPS[w] for w in VOCAB[:10]] == [f"digits/{i}.wav" for i in range(10)]


def test_keyword_plan_is_a_function_of_seed_word_and_index() -> None:
    bs = load_build_script()
    voices = [("espeak-ng", "en-us"), ("espeak-ng", "en-gb+f3"), ("flite", "slt")]
    a = bs.keyword_plan(VOCAB, 5, 0, voices)
    assert a == bs.keyword_plan(VOCAB, 5, 0, voices)
    assert a != bs.keyword_plan(VOCAB, 5, 1, voices)
    # more variants, or fewer words, leave the existing clips' settings unchanged
    longer = bs.keyword_plan(VOCAB, 8, 0, voices)
    assert [p for p in longer if p[1] < 5] == a
    assert bs.keyword_plan(VOCAB[3:], 5, 0, voices) == a[15:]
    assert not set(bs.SENTENCE_WORDS) & set(VOCAB)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_espeak_ng_says_one_word() -> None:
    bs = load_build_script()
    voice = bs.Voice("espeak-ng", "en-us", 160, 50)
    audio = bs.synthesize("seven", voice)
    assert audio.dtype == np.float32 and 0.2 * 16000 < len(audio) < 1.2 * 16000
    assert np.max(np.abs(audio)) > 0.05
    assert np.array_equal(audio, bs.synthesize("seven", voice))  # deterministic
    # most speech energy below 4 kHz, and some above 100 Hz: it is voice, not a tone or a click
    spec = np.abs(np.fft.rfft(audio)) ** 2
    f = np.fft.rfftfreq(len(audio), 1 / 16000)
    assert spec[(f > 100) & (f < 4000)].sum() > 0.8 * spec.sum()
    slower = bs.synthesize("seven", bs.Voice("espeak-ng", "en-us", 100, 50))
    assert len(slower) > 1.2 * len(audio)


def test_festival_share_and_settings_without_changing_older_sets() -> None:
    bs = load_build_script()
    older = [("espeak-ng", "en-us"), ("espeak-ng", "en-gb+f3"), ("flite", "slt")]
    with_festival = [*older, ("festival", "kal_diphone"), ("festival", "cmu_us_slt_arctic_hts")]
    plan = bs.keyword_plan(VOCAB, 50, 0, with_festival)
    festival = [v for _, _, v in plan if v.engine == "festival"]
    assert abs(len(festival) / len(plan) - bs.FESTIVAL_SHARE) < 0.06
    assert {v.voice for v in festival} == {"kal_diphone", "cmu_us_slt_arctic_hts"}
    assert all(bs.FESTIVAL_STRETCH[0] <= v.rate <= bs.FESTIVAL_STRETCH[1] for v in festival)
    assert all(bs.FESTIVAL_WARP[0] <= v.pitch <= bs.FESTIVAL_WARP[1] for v in festival)
    # a machine without festival draws exactly what it drew before festival was added
    assert bs.keyword_plan(VOCAB, 5, 0, older) == [(w, i, bs.draw_voice(bs._word_rng(0, w, i), older))
                                                   for w in VOCAB for i in range(5)]
    assert all(v.engine != "festival" for _, _, v in bs.keyword_plan(VOCAB, 5, 0, older))
    cmd = bs.Voice("festival", "kal_diphone", 1.1, 1.0).command("seven", Path("/x/tts.wav"))
    assert cmd[0] == "text2wave" and "(voice_kal_diphone)" in cmd and cmd[-1] == "/x/tts.txt"
    assert "(Parameter.set 'Duration_Stretch 1.100)" in cmd


@pytest.mark.skipif(shutil.which("text2wave") is None, reason="festival is not installed (apt-get install festival)")
def test_festival_warp_moves_every_frequency() -> None:
    bs = load_build_script()
    plain = bs.synthesize("seven", bs.Voice("festival", "kal_diphone", 1.0, 1.0))
    assert np.array_equal(plain, bs.synthesize("seven", bs.Voice("festival", "kal_diphone", 1.0, 1.0)))
    higher = bs.synthesize("seven", bs.Voice("festival", "kal_diphone", 1.0, 1.12))
    assert len(higher) == pytest.approx(len(plain) / 1.12, rel=0.05)  # shorter by the warp

    def centroid(a: np.ndarray) -> float:
        spec = np.abs(np.fft.rfft(a)) ** 2
        return float((np.fft.rfftfreq(len(a), 1 / 16000) * spec).sum() / spec.sum())

    assert centroid(higher) == pytest.approx(centroid(plain) * 1.12, rel=0.05)
    slower = bs.synthesize("seven", bs.Voice("festival", "kal_diphone", 1.3, 1.0))
    assert len(slower) > 1.15 * len(plain)
