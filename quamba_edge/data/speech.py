"""Speech data for the keyword-spotting (KWS) task: WAV I/O, resampling, noise, and test trials.

The vocabulary is the ten digits plus six command words that Debian's `asterisk-core-sounds-en-wav`
holds as single-word recordings (one real speaker, 8 kHz telephone audio; it lacks the common KWS commands
yes/no/up/...). Training speech is synthetic (espeak-ng, flite), built by `calib/build_speech.py` under
`<cache>/speech/`; the real clips are only ever a test set.

Everything here works on float32 mono arrays in [-1, 1] at `SAMPLE_RATE` (16 kHz). Randomness always
comes from a caller-supplied `numpy.random.Generator` or seed, so a trial set is a pure function of its
arguments and two machines build the same test set.

SNR convention (used by `add_noise` and `kws_trials`): the signal power is the mean square over *all*
samples of the keyword clip (not the window it sits in, not a voice-activity-detected part). The loaders
trim leading and trailing silence (`trim_silence`) so that "all samples of the clip" is close to
"the speech-active part"; internal pauses still count. The noise power is the mean square of the noise
over the whole window that receives it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write, sha256_file
from quamba_edge.paths import cache_dir

SAMPLE_RATE = 16000
WINDOW_S = 1.5

DIGITS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Single-word clips that exist in asterisk-core-sounds-en-wav 1.6.1 (en_US_f_Allison); chosen to be
# acoustically distinct from each other and from the digits.
COMMANDS: tuple[str, ...] = ("hello", "goodbye", "record", "pause", "cancelled", "star")
VOCAB: tuple[str, ...] = DIGITS + COMMANDS

# Word -> path of its recording inside usr/share/asterisk/sounds/en_US_f_Allison/ (also its path under
# <cache>/speech/real/, where the files are copied byte for byte).
REAL_CLIPS: dict[str, str] = {
    **{word: f"digits/{i}.wav" for i, word in enumerate(DIGITS)},
    "hello": "hello.wav",
    "goodbye": "goodbye.wav",
    "record": "dictate/record.wav",
    "pause": "dictate/pause.wav",
    "cancelled": "cancelled.wav",
    "star": "digits/star.wav",
}

BABBLE_TALKERS = 6  # overlapping talkers in babble noise: enough that none can be followed
NoiseKind = Literal["white", "pink", "babble"]
_BUILD_FIX = "Fix: run `.venv/bin/python calib/build_speech.py` (it builds <cache>/speech/)."


# --------------------------------------------------------------------------------------------- WAV I/O


def read_wav(path: str | Path, sample_rate: int | None = SAMPLE_RATE, *, mix_to_mono: bool = False,
             reject_silent: bool = False) -> np.ndarray:
    """Read an audio file as float32 mono in [-1, 1], resampled to `sample_rate` (None: keep the file's).

    Decoding is libsndfile's (through `soundfile`): WAV with any header it accepts (PCM 8/16/24/32-bit,
    float, mu-law/A-law, WAVE_FORMAT_EXTENSIBLE, streamed sizes), and FLAC, OGG, AIFF. Integer samples
    are scaled by 1/2^(bits-1) (8-bit is unsigned, centred on 128). A WAV whose `data` chunk declares
    0 bytes (a recorder that never finalised its header) is read to the end of the file. Multi-channel
    audio is refused unless `mix_to_mono=True` (channel mean): silently averaging a stereo file can
    cancel out-of-phase content, so it must be asked for. `reject_silent=True` refuses a file whose
    peak is below one 16-bit step (a clip of digital silence makes a KWS trial with no keyword in it,
    and an SNR relative to zero power is undefined).

    Raises QuambaEdgeError, naming the file, for every failure: missing, a directory, empty, any
    decoder error (truncated or malformed chunks, unknown formats), no samples, NaN/inf samples,
    unwanted channels, silence.
    """
    path = Path(path)
    if not path.exists():
        raise QuambaEdgeError(f"{path}: no such file. Fix: check the path.")
    if path.is_dir():
        raise QuambaEdgeError(f"{path} is a directory, not a WAV file. Fix: pass the path of a .wav file.")
    if path.stat().st_size == 0:
        raise QuambaEdgeError(f"{path} is an empty file (0 bytes). Fix: re-create or re-download it.")
    audio, rate = _decode(path)
    if audio.shape[0] == 0:
        raise QuambaEdgeError(f"{path} holds no audio (0 samples). Fix: re-record or re-generate it.")
    if not np.all(np.isfinite(audio)):
        raise QuambaEdgeError(f"{path} holds NaN or infinite samples (a float WAV written from broken audio). "
                              "Fix: re-create it from the source audio.")
    if audio.shape[1] > 1 and not mix_to_mono:
        raise QuambaEdgeError(
            f"{path} has {audio.shape[1]} channels; speech models here take mono. Fix: average the channels "
            f"(`spot --mix-to-mono`, or mix_to_mono=True in Python), or convert it with `sox {path} -c 1 mono.wav`.")
    audio = audio.mean(axis=1, dtype=np.float64).astype(np.float32) if audio.shape[1] > 1 else audio[:, 0]
    if reject_silent and float(np.max(np.abs(audio))) < 1.0 / 32768:
        raise QuambaEdgeError(f"{path} is all silence (peak below one 16-bit step). "
                              "Fix: drop this file, or re-record it.")
    if sample_rate is not None and rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """libsndfile's samples (frames, channels) float32 and the rate; its every failure as our error. A WAV
    whose data chunk declares more bytes than the file holds (a cut download) is refused: libsndfile would
    return the part that is there, and a keyword cut in half is a wrong answer, not a short clip."""
    import soundfile

    try:
        with soundfile.SoundFile(str(path)) as f:
            rate, channels, subtype, kind = f.samplerate, f.channels, f.subtype, f.format
            audio = f.read(dtype="float32", always_2d=True)
        data = _data_chunk(path) if kind in ("WAV", "WAVEX") else None
        if data is not None and data[1] == 0 and audio.shape[0] == 0:
            payload = path.read_bytes()[data[0] :]  # unsized: decode the rest of the file as headerless audio
            audio = soundfile.read(io.BytesIO(payload), format="RAW", subtype=subtype, channels=channels,
                                   samplerate=rate, endian="LITTLE", dtype="float32", always_2d=True)[0]
    except Exception as exc:  # LibsndfileError, RuntimeError, TypeError...: every one is about this file
        reason = getattr(exc, "error_string", None) or str(exc)
        raise QuambaEdgeError(
            f"{path} is not a readable audio file (libsndfile: {reason}). It may be cut short, or have a "
            "malformed header. Fix: re-create or re-download it; if another player reads it, convert it with "
            f"`sox {path} -b 16 -e signed-integer fixed.wav`."
        ) from exc
    if data is not None and data[1] not in (0, 0xFFFFFFFF) and (held := path.stat().st_size - data[0]) < data[1]:
        raise QuambaEdgeError(f"{path} is cut short: its data chunk declares {data[1]:,} bytes but the file holds "
                              f"{held:,} ({held / max(data[1], 1):.0%}). Fix: download or copy it again.")
    if rate <= 0:
        raise QuambaEdgeError(f"{path} has a broken header ({rate} Hz). Fix: re-create it.")
    return audio, rate


def _data_chunk(path: Path) -> tuple[int, int] | None:
    """(offset of the samples, declared byte size) of a RIFF/WAVE file's `data` chunk, read from the chunk
    headers only. A size of 0 is a recorder that never finalised its header (libsndfile then reads no
    samples, sox reads them with --ignore-length: so do we); 0xFFFFFFFF is a stream's "to the end"."""
    with open(path, "rb") as f:
        pos, end = 12, path.stat().st_size  # the first chunk follows "RIFF" <size> "WAVE"
        while pos + 8 <= end:
            f.seek(pos)
            chunk, size = f.read(4), int.from_bytes(f.read(4), "little")
            if chunk == b"data":
                return pos + 8, size
            pos += 8 + size + (size & 1)
    return None


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio as 16-bit PCM, atomically (a crash never leaves a half-written clip that a
    later idempotency check would trust). Values outside [-1, 1] are clipped, NaN/inf refused."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise QuambaEdgeError(f"write_wav takes mono audio (1-D), got shape {audio.shape}. Fix: pass one channel.")
    if not np.all(np.isfinite(audio)):
        raise QuambaEdgeError(f"refusing to write {path}: the audio holds NaN or inf.")
    import soundfile

    pcm = np.clip(np.round(audio.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
    atomic_write(Path(path), lambda tmp: soundfile.write(str(tmp), pcm, int(sample_rate), "PCM_16", format="WAV"))


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling with libsoxr (python-soxr, "HQ"), the converter `sox` itself uses. Output length
    is round(len * dst / src), so durations and offsets computed in seconds stay valid."""
    audio = np.asarray(audio, dtype=np.float32)
    if src_rate == dst_rate:
        return audio.copy()
    if src_rate <= 0 or dst_rate <= 0:
        raise QuambaEdgeError(f"sample rates must be positive, got {src_rate} -> {dst_rate}.")
    import soxr

    out = soxr.resample(audio, src_rate, dst_rate, quality="HQ").astype(np.float32)
    want = round(len(audio) * dst_rate / src_rate)
    return np.pad(out[:want], (0, max(0, want - len(out))))


def telephone_band(clips: Mapping[str, Sequence[np.ndarray]], rng: np.random.Generator,
                   share: float = 1.0) -> dict[str, list[np.ndarray]]:
    """`share` of the clips (drawn with `rng`, word by word) through 8 kHz and back: training audio for a
    telephone-band test set, which carries nothing above 4 kHz. A log-mel probe (benchmarks/kws_logmel_probe.py)
    scored 16% on the clean real clips with half of the training clips band-limited and 31% with all of them."""
    return {w: [resample(resample(c, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE) if rng.random() < share
                else np.asarray(c, np.float32) for c in cs] for w, cs in clips.items()}


def trim_silence(audio: np.ndarray, threshold_db: float = -40.0, pad_s: float = 0.03,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Cut leading/trailing parts quieter than `threshold_db` relative to the clip's peak (10 ms frames),
    keeping `pad_s` either side. TTS engines and IVR recordings carry 0.1-0.4 s of silence, which would
    otherwise lower the clip power that the SNR is measured against and make the keyword look longer."""
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.max(np.abs(audio), initial=0.0))
    hop = max(1, sample_rate // 100)
    n = len(audio) // hop
    frames = np.abs(audio[: n * hop].reshape(n, hop)).max(axis=1)
    loud = np.flatnonzero(frames >= peak * 10 ** (threshold_db / 20))
    if peak == 0.0 or loud.size == 0:  # silence, shorter than a frame, or the peak is in the last partial frame
        return audio.copy()
    pad = int(pad_s * sample_rate)
    start = max(0, loud[0] * hop - pad)
    stop = min(len(audio), (loud[-1] + 1) * hop + pad)
    return audio[start:stop].copy()


# ------------------------------------------------------------------------------------------------ noise


def power(x: np.ndarray) -> float:
    """Mean square, in float64 (float32 sums over 24k samples lose the 0.01 dB the SNR tests need)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x * x)) if x.size else 0.0


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian white noise."""
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power 1/f noise: white Gaussian noise shaped in the frequency domain by 1/sqrt(f), so the power
    spectral density falls 3 dB per octave (the DC bin is zeroed). Pink noise is a better stand-in for
    room and fan noise than white noise, which is mostly energy above the speech band."""
    if n <= 0:
        return np.zeros(0, np.float32)
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n)
    x = np.fft.irfft(spec * np.r_[0.0, 1.0 / np.sqrt(f[1:])], n)
    return (x / math.sqrt(max(power(x), 1e-30))).astype(np.float32)


def babble_noise(n: int, rng: np.random.Generator, clips: Sequence[np.ndarray],
                 talkers: int = BABBLE_TALKERS) -> np.ndarray:
    """Unit-power babble: `talkers` streams, each a random sequence of `clips` (each clip first scaled to
    unit power so no talker dominates), summed. Six or more overlapping talkers are no longer followable,
    which is what makes babble the hardest of the three noises for a keyword spotter."""
    return babble_mix(n, rng, unit_power_clips(clips), talkers)


def unit_power_clips(clips: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The non-empty, non-silent `clips` scaled to unit mean power (float64): what `babble_mix` draws from.
    Raises QuambaEdgeError when none is left."""
    usable = [np.asarray(c, np.float64) / math.sqrt(power(c)) for c in clips if len(c) and power(c) > 0]
    if not usable:
        raise QuambaEdgeError("babble noise needs at least one non-silent speech clip. Fix: pass babble_clips.")
    return usable


def babble_mix(n: int, rng: np.random.Generator, unit_clips: list[np.ndarray], talkers: int) -> np.ndarray:
    """`n` samples of babble: `talkers` streams of back-to-back `unit_clips` (from `unit_power_clips`), each
    from a random phase, summed and scaled to unit power (float32)."""
    out = np.zeros(n, np.float64)
    for _ in range(talkers):
        start = int(rng.integers(0, max(1, n)))  # a random phase, so the streams do not start together
        parts, length = [], 0
        while length < n + start:
            c = unit_clips[int(rng.integers(len(unit_clips)))]
            parts.append(c)
            length += len(c)
        out += np.concatenate(parts)[start : start + n]
    p = power(out)
    return (out / math.sqrt(p) if p > 0 else out).astype(np.float32)


def add_noise(signal: np.ndarray, noise: np.ndarray, snr_db: float | None, rng: np.random.Generator | None = None,
              *, signal_power: float | None = None) -> np.ndarray:
    """Return signal + g * noise with g chosen so that signal_power / power(g * noise) is exactly `snr_db`.

    signal_power defaults to the mean square of all of `signal` (see the module docstring for why the
    keyword clip, not the window, is the reference; `kws_trials` passes the clip's power here).
    A noise longer than the signal contributes a random segment (chosen with `rng`; the start without
    one); a shorter one is tiled. The noise power is measured on the segment actually added.
    `snr_db` None or +inf returns a copy of the signal. The result is not clipped: clipping would move
    the SNR, and the models take float input anyway.
    """
    signal = np.asarray(signal, dtype=np.float32)
    if snr_db is None or snr_db == math.inf:
        return signal.copy()
    if math.isnan(snr_db):
        raise QuambaEdgeError("snr_db is NaN. Fix: pass a number of dB, or None for no noise.")
    noise = np.asarray(noise, dtype=np.float32)
    n = len(signal)
    if noise.size == 0:
        raise QuambaEdgeError("add_noise got an empty noise array. Fix: pass noise with at least one sample.")
    if len(noise) < n:
        noise = np.tile(noise, -(-n // len(noise)))[:n]
    elif len(noise) > n:
        start = int(rng.integers(0, len(noise) - n + 1)) if rng is not None else 0
        noise = noise[start : start + n]
    p_signal = power(signal) if signal_power is None else float(signal_power)
    p_noise = power(noise)
    if p_signal <= 0:
        raise QuambaEdgeError("the signal is silent, so an SNR relative to it is undefined. Fix: drop the clip.")
    if p_noise <= 0:
        raise QuambaEdgeError("the noise is silent, so no gain reaches a finite SNR. Fix: pass a non-zero noise.")
    gain = math.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (signal.astype(np.float64) + gain * noise.astype(np.float64)).astype(np.float32)


def place_in_window(clip: np.ndarray, window_samples: int, offset: int,
                    background: np.ndarray | None = None) -> np.ndarray:
    """Return a window of `window_samples` holding `background` (silence when None) with `clip` added
    starting at sample `offset`. Refuses a clip that does not fit rather than cutting the keyword off,
    since a truncated keyword would be a mislabeled trial."""
    clip = np.asarray(clip, dtype=np.float32)
    if len(clip) > window_samples:
        raise QuambaEdgeError(f"a {len(clip)}-sample clip does not fit a {window_samples}-sample window. "
                              "Fix: trim the clip's silence (trim_silence) or use a longer window.")
    if not 0 <= offset <= window_samples - len(clip):
        raise QuambaEdgeError(f"offset {offset} puts the {len(clip)}-sample clip outside the {window_samples}-sample "
                              f"window (valid: 0..{window_samples - len(clip)}).")
    out = np.zeros(window_samples, np.float32) if background is None else np.array(background, np.float32)
    if out.shape != (window_samples,):
        raise QuambaEdgeError(f"background has shape {out.shape}, expected ({window_samples},).")
    out[offset : offset + len(clip)] += clip
    return out


# ------------------------------------------------------------------------------------------------ trials


@dataclass(frozen=True)
class KwsTrials:
    """A test condition: `audio[i]` holds keyword `label_names[labels[i]]` (clip `clip_index[i]` of that
    label) starting at sample `offsets[i]`, with `clip_lengths[i]` samples, at `snr_db` in `noise`."""

    audio: np.ndarray  # (n, window) float32
    labels: np.ndarray  # (n,) int64 index into label_names
    label_names: tuple[str, ...]
    offsets: np.ndarray  # (n,) int64
    clip_index: np.ndarray  # (n,) int64
    clip_lengths: np.ndarray  # (n,) int64
    snr_db: float | None
    noise: str
    seed: int


def kws_trials(clips: Mapping[str, Sequence[np.ndarray]], snr_db: float | None, n_trials: int, seed: int,
               window_s: float = WINDOW_S, noise: NoiseKind = "pink", *, sample_rate: int = SAMPLE_RATE,
               babble_clips: Sequence[np.ndarray] | None = None) -> KwsTrials:
    """Deterministic KWS trials: for each, a uniformly random label (classes balanced in expectation),
    a random clip of it, a random offset that keeps the whole clip inside the window, and `noise` over the
    whole window at `snr_db` relative to the clip's own power. `snr_db=None` (or inf) gives clips in
    digital silence.

    Labels are indices into `label_names`, the keys of `clips` in insertion order. Babble is made from
    `babble_clips` (e.g. the pre-training sentences); without them, from all the keyword clips played
    backwards, which keeps speech's spectrum and rhythm but never says a keyword in the background.
    """
    names = tuple(clips)
    empty = [k for k in names if len(clips[k]) == 0]
    if not names or empty:
        raise QuambaEdgeError(f"kws_trials needs at least one clip per label (empty: {empty or 'no labels'}).")
    if noise not in ("white", "pink", "babble"):
        raise QuambaEdgeError(f"unknown noise {noise!r}. Fix: use 'white', 'pink' or 'babble'.")
    window = int(round(window_s * sample_rate))
    pool = [[np.asarray(c, np.float32) for c in clips[k]] for k in names]
    for name, group in zip(names, pool):
        for j, c in enumerate(group):
            if len(c) > window:
                raise QuambaEdgeError(f"clip {j} of {name!r} is {len(c) / sample_rate:.2f} s, longer than the "
                                      f"{window_s} s window. Fix: trim_silence() it, or raise window_s.")
            if power(c) == 0:
                raise QuambaEdgeError(f"clip {j} of {name!r} is silent; an SNR relative to it is undefined.")
    clean = snr_db is None or snr_db == math.inf
    backgrounds = {"white": white_noise, "pink": pink_noise}
    if noise == "babble" and not clean:
        babble_src = unit_power_clips(babble_clips if babble_clips is not None else [c[::-1] for g in pool for c in g])
        backgrounds["babble"] = lambda n, rng: babble_mix(n, rng, babble_src, BABBLE_TALKERS)

    rng = np.random.default_rng(seed)
    audio = np.zeros((n_trials, window), np.float32)
    labels, offsets, index, lengths = np.zeros((4, n_trials), np.int64)
    for i in range(n_trials):
        k = int(rng.integers(len(names)))
        j = int(rng.integers(len(pool[k])))
        clip = pool[k][j]
        off = int(rng.integers(0, window - len(clip) + 1))
        keyword = place_in_window(clip, window, off)
        audio[i] = keyword if clean else add_noise(keyword, backgrounds[noise](window, rng), snr_db,
                                                   signal_power=power(clip))
        labels[i], offsets[i], index[i], lengths[i] = k, off, j, len(clip)
    return KwsTrials(audio, labels, names, offsets, index, lengths, None if clean else float(snr_db), noise, seed)


# ------------------------------------------------------------------------------------- the built cache


def speech_dir() -> Path:
    """`<cache>/speech`, where calib/build_speech.py puts the real, synthetic and pre-training sets."""
    return cache_dir() / "speech"


def read_manifest(kind: Literal["real", "synth", "pretrain"], root: Path | None = None) -> dict:
    """The manifest of one built set, or a QuambaEdgeError saying how to build it."""
    path = (root or speech_dir()) / kind / "manifest.json"
    if not path.exists():
        raise QuambaEdgeError(f"{path} does not exist: the {kind} speech set is not built. {_BUILD_FIX}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise QuambaEdgeError(f"{path} is not valid JSON ({e}). {_BUILD_FIX}") from e


def _load_entries(kind: Literal["real", "synth", "pretrain"], root: Path | None, verify: bool, trim: bool):
    base = (root or speech_dir()) / kind
    for entry in read_manifest(kind, root)["clips"]:
        path = base / entry["path"]
        if verify and path.exists() and sha256_file(path) != entry["sha256"]:
            raise QuambaEdgeError(f"{path} does not match its manifest sha256. {_BUILD_FIX}")
        audio = read_wav(path, SAMPLE_RATE, reject_silent=True)
        yield entry, (trim_silence(audio) if trim else audio)


def load_keyword_clips(kind: Literal["real", "synth"] = "real", root: Path | None = None, *,
                       words: Sequence[str] = VOCAB, max_per_word: int | None = None, verify: bool = False,
                       trim: bool = True, engines: Collection[str] | None = None) -> dict[str, list[np.ndarray]]:
    """Keyword clips as {word: [16 kHz float32 clips]} in `words` order, silence-trimmed (see the SNR
    convention above). `verify=True` re-hashes every file against its manifest first; `engines` keeps only
    the synthetic clips of those TTS engines (the manifest's `engine` field)."""
    out: dict[str, list[np.ndarray]] = {w: [] for w in words}
    for entry, audio in _load_entries(kind, root, verify, trim):
        word = entry["word"]
        if engines is not None and entry.get("engine") not in engines:
            continue
        if word in out and (max_per_word is None or len(out[word]) < max_per_word):
            out[word].append(audio)
    missing = [w for w, v in out.items() if not v]
    if missing:
        raise QuambaEdgeError(f"the {kind} speech set has no clips for {missing}. {_BUILD_FIX}")
    return out


def load_pretrain_clips(root: Path | None = None, *, limit: int | None = None,
                        verify: bool = False) -> list[np.ndarray]:
    """The unlabeled 1-4 s synthetic sentences, for self-supervised pre-training and as babble."""
    out = []
    for _, audio in _load_entries("pretrain", root, verify, trim=False):
        out.append(audio)
        if limit is not None and len(out) >= limit:
            break
    return out
