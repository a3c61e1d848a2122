"""The audio a speech model is calibrated and evaluated on, as fixed-length windows.

Calibration uses synthetic speech only (the TTS keywords placed in noise over the training SNR grid,
or the user's own WAV files); evaluation uses the real recordings, which calibration never sees.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from quamba_edge.data.speech import SAMPLE_RATE, KwsTrials, kws_trials, load_keyword_clips, read_wav
from quamba_edge.errors import QuambaEdgeError

# The real test grid (dB; None is a clean clip in digital silence) and its seeds, fixed so that every
# model and precision is scored on the same trials.
TEST_SNRS: tuple[float | None, ...] = (None, 20.0, 10.0, 5.0, 0.0)
TEST_SEED = 20261126
CALIB_SEED = 7


def snr_label(snr_db: float | None) -> str | float:
    return "clean" if snr_db is None or snr_db == math.inf else snr_db


def wav_windows(path: Path, window: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Every WAV under `path` (a file or a directory), cut into whole windows; a clip shorter than one
    window is zero-padded. Each file is read with the toolkit's checks (rate, channels, corruption)."""
    files = sorted(path.rglob("*.wav")) if path.is_dir() else [path]
    if not files:
        raise QuambaEdgeError(f"{path} holds no .wav files. Fix: point --data at WAV files, or use `default`.")
    out = []
    for f in files:
        audio = read_wav(f, sample_rate, reject_silent=True)
        audio = np.pad(audio, (0, max(0, window - len(audio))))
        out.extend(audio[: len(audio) // window * window].reshape(-1, window))
    return np.stack(out).astype(np.float32)


def calibration_windows(data: str, samples: int, window_s: float, root: Path | None = None) -> np.ndarray:
    """`samples` windows of `window_s` seconds: `default` is synthetic keywords over the training SNR grid
    (pink and babble noise), taken in a fixed order; otherwise the user's WAV files in file order."""
    if str(data) != "default":
        return wav_windows(Path(data), int(round(window_s * SAMPLE_RATE)))[:samples]
    clips = load_keyword_clips("synth", root)
    grid = [(snr, noise) for snr in TEST_SNRS for noise in ("pink", "babble")]
    per = -(-samples // len(grid))
    parts = [kws_trials(clips, snr, per, CALIB_SEED + i, window_s=window_s, noise=noise).audio
             for i, (snr, noise) in enumerate(grid)]
    return np.concatenate(parts)[:samples]


def real_test_trials(n_trials: int = 500, snrs: tuple[float | None, ...] = TEST_SNRS, noise: str = "pink",
                     window_s: float = 1.5, root: Path | None = None,
                     labels: tuple[str, ...] | None = None) -> list[KwsTrials]:
    """The real recordings placed at random offsets in `window_s` windows of silence or noise, one
    condition per SNR, with fixed seeds so every model and precision sees the same trials."""
    clips = load_keyword_clips("real", root, **({"words": labels} if labels else {}))
    return [kws_trials(clips, snr, n_trials, TEST_SEED + i, window_s=window_s, noise=noise)
            for i, snr in enumerate(snrs)]
