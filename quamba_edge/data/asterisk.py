"""Asterisk's recorded telephone prompts (Debian `asterisk-core-sounds-{lang}-wav` 1.6.1-1, CC-BY-SA): real
speech in five languages, one professional speaker each, 8 kHz mono 16-bit, about 25 minutes per language.

    en  en_US_f_Allison      es  es_MX_f_Allison (the same speaker as en)      fr  fr_CA_f_June
    it  it_IT_m_Carlo        ru  ru_RU_f_IvrvoiceRU

Uses here: unlabeled pre-training speech (every language); "unknown" words and babble for the digit spotter
(fr, it, ru); the English speaker's digits (digits/0.wav .. 9.wav) and short words as a further unseen test
voice, never trained on. `build` extracts a pinned, sha256-checked package into `<cache>/speech/asterisk/<lang>/`
with a manifest listing every file's sha256; the loaders read that manifest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from quamba_edge.data.debs import apt_download
from quamba_edge.data.speech import DIGITS, SAMPLE_RATE, read_wav, speech_dir, trim_silence
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write_json, sha256_file, staged_dir

VERSION = "1.6.1-1"
PACKAGES: dict[str, tuple[str, str]] = {  # language: (voice directory, sha256 of the .deb from Debian bookworm)
    "en": ("en_US_f_Allison", "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d"),
    "es": ("es_MX_f_Allison", "9283a09a6d56fccdcc2bcfe86c48f0f844289cfbd46a3184d8785a6f7f569903"),
    "fr": ("fr_CA_f_June", "8d4e1bc32ed5ba7fbda40841ca1825ed20cc6232724a473c90f8bb0e53e6073e"),
    "it": ("it_IT_m_Carlo", "5a26638089e134b8ac39363fe249c5c93c50cd8bfdc9b2499ae61ec4a35e2fcb"),
    "ru": ("ru_RU_f_IvrvoiceRU", "ccbfaebfa450b7a9ddf644ae0f3d1e9017d5df7c0aebe816e946345589d38201"),
}
NOT_WORDS = ("digits/", "letters/")  # number words in any language, and letters ("o", "e") that sound like digits
_FIX = "Fix: run `.venv/bin/python calib/build_digits.py` (it downloads and extracts the pinned packages)."


def root(lang: str, base: Path | None = None) -> Path:
    return (base or speech_dir()) / "asterisk" / lang


def build(lang: str, base: Path | None = None, force: bool = False) -> dict:
    """Download (apt-get download, sha256-checked) and extract one language's prompts with a manifest; a
    complete, matching build is kept. Returns the manifest."""
    voice, digest = PACKAGES[lang]
    out = root(lang, base)
    config = {"package": f"asterisk-core-sounds-{lang}-wav", "version": VERSION, "sha256": digest, "voice": voice}
    manifest_path = out / "manifest.json"
    if not force and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config") == config:
            return manifest
    debs = (base or speech_dir()) / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = apt_download(config["package"], VERSION, digest, debs,
                       download_fix="Fix: check that Debian's package lists are reachable (apt-get update).",
                       mismatch_fix="Fix: delete the file and run the build again.")
    staged = staged_dir(out, ours=lambda d: (d / "manifest.json").exists(), what="an Asterisk prompt set")
    with tempfile.TemporaryDirectory() as x, staged as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), x], check=True)
        sounds = Path(x) / "usr/share/asterisk/sounds" / voice
        files = []
        for src in sorted(sounds.rglob("*.wav")):
            rel = src.relative_to(sounds).as_posix()
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
            files.append({"path": rel, "sha256": sha256_file(tmp / rel)})
        manifest = {"config": config, "license": "CC-BY-SA (asterisk-core-sounds)", "sample_rate": 8000,
                    "files": files}
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def files(lang: str, base: Path | None = None, verify: bool = False) -> list[tuple[str, Path]]:
    """(relative path, path) of every prompt of one language, in manifest order."""
    path = root(lang, base) / "manifest.json"
    if not path.exists():
        raise QuambaEdgeError(f"the Asterisk {lang} prompts are not built ({path} is missing). {_FIX}")
    out = []
    for entry in json.loads(path.read_text())["files"]:
        file = root(lang, base) / entry["path"]
        if verify and sha256_file(file) != entry["sha256"]:
            raise QuambaEdgeError(f"{file} does not match its manifest sha256. {_FIX}")
        out.append((entry["path"], file))
    return out


def _audio(items: Iterable[tuple[str, Path]], trim: bool) -> Iterable[tuple[str, np.ndarray]]:
    for rel, path in items:
        try:
            audio = read_wav(path, SAMPLE_RATE, reject_silent=True)
        except QuambaEdgeError:  # a few packages hold silent "beep" placeholders; they are not speech
            continue
        yield rel, trim_silence(audio) if trim else audio


def prompts(langs: Sequence[str], base: Path | None = None, *, min_s: float = 0.0) -> list[np.ndarray]:
    """Every prompt of `langs` at 16 kHz, untrimmed, at least `min_s` long: pre-training speech and babble.
    English digits are left out (they are a test set)."""
    out = []
    for lang in langs:
        items = [(r, p) for r, p in files(lang, base) if not (lang == "en" and r.startswith("digits/"))]
        out += [a for _, a in _audio(items, trim=False) if len(a) >= min_s * SAMPLE_RATE]
    return out


def words(langs: Sequence[str], base: Path | None = None, *, max_s: float = 1.0) -> list[np.ndarray]:
    """Short prompts (a word or two) of `langs`, silence-trimmed, at most `max_s` long, none of them a number
    or a letter: the "unknown" class of the digit spotter."""
    out = []
    for lang in langs:
        items = [(r, p) for r, p in files(lang, base) if not r.startswith(NOT_WORDS)]
        out += [a for _, a in _audio(items, trim=True) if 0.15 * SAMPLE_RATE <= len(a) <= max_s * SAMPLE_RATE]
    return out


def english_digits(base: Path | None = None) -> dict[str, list[np.ndarray]]:
    """The English speaker's ten digits (digits/0.wav .. 9.wav, one take each), silence-trimmed."""
    table = dict(files("en", base))
    return {word: [trim_silence(read_wav(table[f"digits/{i}.wav"], SAMPLE_RATE, reject_silent=True))]
            for i, word in enumerate(DIGITS)}
