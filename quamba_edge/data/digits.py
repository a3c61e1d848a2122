"""The 12-class digit-spotting task on real speech: the ten digits, "silence" and "unknown" (Speech Commands'
12-class layout), evaluated on speakers the model never heard.

A trial is one `WINDOW_S` window: a digit or unknown word placed at a random offset, or no word ("silence"),
in digital silence (clean) or in white, pink or babble noise at an exact SNR (the convention of
data/speech.py: clip power over the whole window's noise power; a silence window gets the noise level a
median digit of that speaker set would get). Labels are drawn uniformly over the 12 classes.

Sources (data/fsdd.py, data/asterisk.py): digits from the FSDD speakers (leave-one-speaker-out folds) and
the Asterisk English speaker; unknown words from Asterisk French and Italian for training, Russian for the
FSDD test folds, the English speaker's own words for her test; babble from the non-English prompts.
A clip longer than the window (16 of the 2500 FSDD takes pass 1 s) keeps its middle `WINDOW_S` seconds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from quamba_edge.data import asterisk, fsdd
from quamba_edge.data.speech import (
    BABBLE_TALKERS,
    COMMANDS,
    DIGITS,
    SAMPLE_RATE,
    KwsTrials,
    add_noise,
    babble_mix,
    load_keyword_clips,
    pink_noise,
    place_in_window,
    power,
    resample,
    unit_power_clips,
    white_noise,
)
from quamba_edge.errors import QuambaEdgeError

LABELS: tuple[str, ...] = (*DIGITS, "silence", "unknown")
SILENCE, UNKNOWN = len(DIGITS), len(DIGITS) + 1
WINDOW_S = 1.0
SNRS: tuple[float | None, ...] = (None, 20.0, 10.0, 5.0, 0.0)
NOISES: tuple[str, ...] = ("white", "pink", "babble")
CONDITIONS: tuple[tuple[float | None, str], ...] = ((None, "silence"),) + tuple(
    (snr, noise) for snr in SNRS[1:] for noise in NOISES)
TRAIN_CONDITIONS = CONDITIONS[:1] * 3 + CONDITIONS[1:]  # a fifth of the training windows clean
SPEED = (0.85, 1.15)  # speed perturbation of training clips


@dataclass(frozen=True)
class Recipe:
    """What a fold's training windows are made of, beyond its speakers' digits and the Asterisk unknown words.

    The first spotters (`Recipe()`) learned the recording channel: every unknown word was an Asterisk
    recording and every digit an FSDD one, so a digit spoken over Asterisk's channel came out "unknown".
    Each field takes one step against that shortcut:

    * `reversed_unknown`: the share of unknown windows that are a training take played backwards, so that
      "unknown" also sounds like the digits' own microphone, room and speaker (a reversed word keeps the
      channel and the long-term spectrum but is no digit);
    * `channel_eq`: the share of training clips, digits and unknown words alike, passed through a random
      equaliser (`random_eq`), so that a spectral tilt or resonance says nothing about the class;
    * `synthetic`: TTS takes per digit (data/speech.py's synthetic set: espeak-ng, flite and festival
      voices, band-limited to telephone like the test speakers), added to every fold as a further training
      "speaker" whose unknown words are the same voices saying other words: digits from a third channel.
    """

    reversed_unknown: float = 0.0
    channel_eq: float = 0.0
    synthetic: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.reversed_unknown <= 1 and 0 <= self.channel_eq <= 1 and self.synthetic >= 0):
            raise QuambaEdgeError(f"bad training recipe {self}: shares lie in [0, 1], synthetic takes are >= 0.")

    @property
    def name(self) -> str:
        """A short tag: 'base' for `Recipe()`, else e.g. 'rev0.5-eq0.5-syn100'."""
        parts = [f"rev{self.reversed_unknown:g}" if self.reversed_unknown else "",
                 f"eq{self.channel_eq:g}" if self.channel_eq else "", f"syn{self.synthetic}" if self.synthetic else ""]
        return "-".join(p for p in parts if p) or "base"


CHANNEL_RECIPE = Recipe(reversed_unknown=0.5, channel_eq=0.5, synthetic=100)  # the benchmark's default


def random_eq(clip: np.ndarray, rng: np.random.Generator, bands: tuple[int, int] = (1, 3),
              gain_db: float = 10.0, band_hz: tuple[float, float] = (100.0, 3800.0)) -> np.ndarray:
    """`clip` (float32, 16 kHz) through a random zero-phase equaliser: 1-3 bell-shaped bands on a
    log-frequency axis (centre log-uniform in `band_hz`, gain uniform in +-`gain_db` dB, width 0.3-1.5
    octaves) plus a spectral tilt of +-6 dB per decade from 1 kHz, applied in the frequency domain: a
    stand-in for other microphones, rooms and phone lines (the idea of audiomentations'
    SevenBandParametricEQ, here as smooth bells on a log axis). Returns float32 of the same length."""
    n = len(clip)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    octaves = np.log2(np.maximum(f, 20.0) / 1000.0)
    db = rng.uniform(-6, 6) * octaves / np.log2(10)
    for _ in range(int(rng.integers(bands[0], bands[1] + 1))):
        centre = np.log2(np.exp(rng.uniform(*np.log(band_hz))) / 1000.0)
        width = rng.uniform(0.3, 1.5)
        db = db + rng.uniform(-gain_db, gain_db) * np.exp(-0.5 * ((octaves - centre) / (width / 2)) ** 2)
    out = np.fft.irfft(np.fft.rfft(clip) * 10 ** (db / 20), n)
    return out.astype(np.float32)


@dataclass(frozen=True)
class Sources:
    """What trials are drawn from: `digits` {digit word: clips}, `unknown` clips (other words), `babble`
    clips (speech that noise is made of). All float32 mono at 16 kHz."""

    digits: Mapping[str, Sequence[np.ndarray]]
    unknown: Sequence[np.ndarray]
    babble: Sequence[np.ndarray]

    def __post_init__(self) -> None:
        missing = [d for d in DIGITS if not self.digits.get(d)]
        if missing or not self.unknown or not self.babble:
            raise QuambaEdgeError(f"digit trials need clips of every digit (missing: {missing}), unknown words "
                                  f"({len(self.unknown)}) and babble speech ({len(self.babble)}).")


def fit(clip: np.ndarray, window: int) -> np.ndarray:
    """`clip`, or its middle `window` samples when it is longer."""
    if len(clip) <= window:
        return clip
    start = (len(clip) - window) // 2
    return clip[start:start + window]


_UNIT_BABBLE: dict[int, tuple[Sequence[np.ndarray], list[np.ndarray]]] = {}


def _unit_babble(clips: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Unit-power babble clips, computed once per clip list (an hour of prompts takes a second to scale);
    the list is kept alive beside its result so that its id is never reused."""
    if id(clips) not in _UNIT_BABBLE:
        _UNIT_BABBLE[id(clips)] = (clips, [c.astype(np.float32) for c in unit_power_clips(clips)])
    return _UNIT_BABBLE[id(clips)][1]


class _Renderer:
    def __init__(self, sources: Sources, window_s: float):
        self.window = int(round(window_s * SAMPLE_RATE))
        self.babble = _unit_babble(sources.babble)
        self.ref_power = float(np.median([power(c) for cs in sources.digits.values() for c in cs]))

    def __call__(self, clip: np.ndarray | None, snr_db: float | None, noise: str,
                 rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """One window and the clip's offset (-1 for silence)."""
        n = self.window
        if clip is None:
            offset, audio, p_signal = -1, np.zeros(n, np.float32), self.ref_power
        else:
            clip = fit(clip, n)
            offset = int(rng.integers(0, n - len(clip) + 1))
            audio, p_signal = place_in_window(clip, n, offset), power(clip)
        if snr_db is None:
            return audio, offset
        background = {"white": white_noise, "pink": pink_noise}.get(noise)
        bg = background(n, rng) if background else babble_mix(n, rng, self.babble, BABBLE_TALKERS)
        return add_noise(audio, bg, snr_db, signal_power=p_signal), offset


def trials(sources: Sources, n: int, seed: int, snr_db: float | None, noise: str,
           window_s: float = WINDOW_S) -> KwsTrials:
    """`n` test trials of one condition, labels uniform over the 12 classes; a pure function of its arguments.
    `snr_db` None is clean (noise then only names the condition)."""
    if noise not in NOISES and snr_db is not None:
        raise QuambaEdgeError(f"unknown noise {noise!r}. Fix: use one of {', '.join(NOISES)}.")
    render = _Renderer(sources, window_s)
    rng = np.random.default_rng(seed)
    audio = np.zeros((n, render.window), np.float32)
    labels, offsets, index, lengths = np.zeros((4, n), np.int64)
    for i in range(n):
        k = int(rng.integers(len(LABELS)))
        pool = sources.digits[LABELS[k]] if k < SILENCE else sources.unknown if k == UNKNOWN else None
        j = int(rng.integers(len(pool))) if pool is not None else -1
        clip = pool[j] if pool is not None else None
        audio[i], offsets[i] = render(clip, snr_db, noise, rng)
        labels[i], index[i], lengths[i] = k, j, 0 if clip is None else min(len(clip), render.window)
    return KwsTrials(audio, labels, LABELS, offsets, index, lengths, snr_db, noise if snr_db is not None else "silence",
                     seed)


def speed_perturb(clip: np.ndarray, factor: float) -> np.ndarray:
    """`clip` played `factor` times faster (pitch and formants move with it): Kaldi-style speed perturbation,
    the standard stand-in for other speakers' vocal tracts and speaking rates (Ko et al., Interspeech 2015)."""
    return resample(clip, SAMPLE_RATE, int(round(SAMPLE_RATE / factor))) if factor != 1.0 else clip


def training_windows(sources: Sources, copies: int, seed: int, window_s: float = WINDOW_S,
                     speed: tuple[float, float] = SPEED,
                     recipe: Recipe = Recipe()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every digit clip `copies` times, each speed-perturbed by a factor drawn uniformly from `speed`, at a
    random offset in a condition drawn uniformly from
    `TRAIN_CONDITIONS`, plus as many silence and unknown windows as an average digit has, shuffled:
    (audio (m, window) float32, labels (m,) int64, takes (m,) int64: the clip's index among its digit's
    clips, so a few-label subset keeps takes < k; for silence and unknown a running index that spreads
    them over the same range). `recipe` adds reversed takes to the unknown windows and a random equaliser
    (see `Recipe`); a reversed unknown window reverses a take of its own running index, so a few-label
    subset hears no audio of the takes it leaves out."""
    render = _Renderer(sources, window_s)
    rng = np.random.default_rng(seed)
    items: list[tuple[int, int, np.ndarray | None]] = [(k, j, c) for k, d in enumerate(DIGITS)
                                                        for j, c in enumerate(sources.digits[d]) for _ in range(copies)]
    per_class = math.ceil(len(items) / len(DIGITS))
    takes = max(len(c) for c in sources.digits.values())
    items += [(SILENCE, i * takes // per_class, None) for i in range(per_class)]
    for i in range(per_class):
        j = i * takes // per_class
        if rng.random() < recipe.reversed_unknown:
            clips = sources.digits[DIGITS[int(rng.integers(len(DIGITS)))]]
            clip = np.ascontiguousarray(clips[min(j, len(clips) - 1)][::-1])
        else:
            clip = sources.unknown[int(rng.integers(len(sources.unknown)))]
        items.append((UNKNOWN, j, clip))
    audio = np.zeros((len(items), render.window), np.float32)
    labels, take = np.zeros((2, len(items)), np.int64)
    for i in rng.permutation(len(items)):
        k, j, clip = items[i]
        if clip is not None:
            clip = speed_perturb(clip, float(rng.uniform(*speed)))
            if rng.random() < recipe.channel_eq:
                clip = random_eq(clip, rng)
        snr, noise = TRAIN_CONDITIONS[int(rng.integers(len(TRAIN_CONDITIONS)))]
        audio[i], _ = render(clip, snr, noise, rng)
        labels[i], take[i] = k, j
    order = rng.permutation(len(items))
    return audio[order], labels[order], take[order]


# ------------------------------------------------------------------------------ the standard sets

TEST_SEED = 20261130
ASTERISK_SPEAKER = "asterisk-en"  # the English Asterisk voice: a further unseen (female, telephone) speaker


@functools.cache
def _fsdd() -> dict[str, dict[str, list[np.ndarray]]]:
    return fsdd.load_speakers()


@functools.cache
def _words(langs: tuple[str, ...]) -> list[np.ndarray]:
    return asterisk.words(langs)


@functools.cache
def _babble_speech() -> list[np.ndarray]:
    return asterisk.prompts(("fr", "it", "ru", "es"), min_s=1.0)


def speakers() -> tuple[str, ...]:
    """The FSDD speakers, in the folds' order."""
    return fsdd.SPEAKERS


def train_sources(speaker: str) -> Sources:
    """One FSDD speaker's digits with French and Italian unknown words (training)."""
    return Sources(_fsdd()[speaker], _words(("fr", "it")), _babble_speech())


@functools.cache
def synthetic_sources(per_digit: int) -> Sources:
    """`per_digit` synthetic takes of each digit (data/speech.py's TTS set, `make speech`) through the
    telephone band (8 kHz and back, as every real test speaker is), with the same set's other words
    (hello, goodbye, record, ...) as unknown: a training "speaker" of many voices on a third channel.

    Raises QuambaEdgeError when the synthetic set is missing or has fewer takes (the message names
    `make speech`)."""
    clips = load_keyword_clips("synth", words=(*DIGITS, *COMMANDS), max_per_word=per_digit)
    short = {w: len(c) for w, c in clips.items() if w in DIGITS and len(c) < per_digit}
    if short:
        raise QuambaEdgeError(f"the synthetic set has fewer than {per_digit} takes of {short}. Fix: "
                              f"`python calib/build_speech.py --variants {per_digit}` (or `make speech`).")
    band = {w: [resample(resample(c, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE) for c in cs] for w, cs in clips.items()}
    return Sources({d: band[d] for d in DIGITS}, [c for w in COMMANDS for c in band[w]], _babble_speech())


def test_sources(speaker: str) -> Sources:
    """A test speaker's digits with unknown words nobody trains on: Russian for an FSDD speaker, the English
    Asterisk speaker's own words for her."""
    if speaker == ASTERISK_SPEAKER:
        return Sources(asterisk.english_digits(), _words(("en",)), _babble_speech())
    return Sources(_fsdd()[speaker], _words(("ru",)), _babble_speech())


def test_sets(speaker: str, n: int, window_s: float = WINDOW_S,
              conditions: Sequence[tuple[float | None, str]] = CONDITIONS) -> list[KwsTrials]:
    """The fixed test trials of one speaker (an FSDD speaker or `ASTERISK_SPEAKER`): `n` per condition, the
    same for every model, precision and run (seeds derive from the speaker and the condition)."""
    every = (*speakers(), ASTERISK_SPEAKER)
    if speaker not in every:
        raise QuambaEdgeError(f"no test speaker {speaker!r}. Fix: use one of {', '.join(every)}.")
    sources = test_sources(speaker)
    return [trials(sources, n, TEST_SEED + 100 * every.index(speaker) + CONDITIONS.index(c), c[0], c[1], window_s)
            for c in conditions]


def calibration_windows(speakers: Sequence[str], samples: int, window_s: float = WINDOW_S) -> np.ndarray:
    """`samples` training windows drawn evenly from `speakers` (FSDD), in a fixed order: what `calibrate`
    uses for a digit spotter, so it never hears a speaker the model was not trained on."""
    per = -(-samples // len(speakers))
    parts = [training_windows(train_sources(s), 1, 7 + i, window_s, speed=(1.0, 1.0))[0][:per]
             for i, s in enumerate(speakers)]
    return np.concatenate(parts)[:samples]
