"""Build the keyword-spotting speech sets under `<cache>/speech/` and print what was built.

    .venv/bin/python calib/build_speech.py                      # 20 TTS variants per word, 200 sentences
    .venv/bin/python calib/build_speech.py --variants 100 --pretrain 2000 --install

Three sets, each a folder with a manifest.json that lists every clip with its sha256:

* real/      the test set: one real speaker (Allison Smith, CC-BY-SA-3.0), copied byte for byte from
             Debian's `asterisk-core-sounds-en-wav` 1.6.1-1 (fetched with `apt-get download`, sha256-pinned),
             8 kHz 16-bit mono, at the same relative paths as in the package (digits/0.wav, hello.wav, ...).
* synth/     training keywords: `<word>/<i>.wav`, 16 kHz mono int16, from espeak-ng (8 accents x 15 voice
             variants x speed x pitch) and, when installed, flite (4 voices x duration x pitch) and festival
             (two diphone voices cut from real recordings and one HTS voice x duration x a vocal-tract warp).
* pretrain/  unlabeled 1-4 s sentences of random everyday words (never a keyword) for pre-training and
             as babble noise.

Every synthetic clip is a pure function of (seed, word, index) and the TTS tool versions, which the
manifest records; a set is rebuilt only when its manifest is missing, differs in configuration, or a
file no longer matches its sha256. Sets are built in a temporary folder and swapped in when complete.
The cache root is $QUAMBA_EDGE_CACHE, or <repo>/.cache when unset (as in the Makefile).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from quamba_edge.data.debs import apt_download
from quamba_edge.data.speech import (
    REAL_CLIPS,
    SAMPLE_RATE,
    VOCAB,
    WINDOW_S,
    read_manifest,
    read_wav,
    resample,
    trim_silence,
    write_wav,
)
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.io import atomic_write_json, sha256_file, staged_dir
from quamba_edge.paths import cache_dir

REPO = Path(__file__).resolve().parents[1]
console = Console()

# ---- the real clips
DEB_NAME = "asterisk-core-sounds-en-wav"
DEB_VERSION = "1.6.1-1"
DEB_FILE = f"{DEB_NAME}_{DEB_VERSION}_all.deb"
DEB_SHA256 = "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d"  # 18,272,864 bytes, bookworm
SOUNDS_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"

# ---- TTS
INSTALL_CMD = ["apt-get", "install", "-y", "espeak-ng", "sox", "flite", "festival", "festvox-kallpc16k",
               "festvox-kdlpc16k", "festvox-us-slt-hts"]
# espeak-ng's own English voices (the mbrola ones need extra packages), and its voice variants.
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                 "en-us-nyc")
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt3")
ESPEAK_SPEED = (120, 200)  # words per minute (espeak-ng's default is 175)
ESPEAK_PITCH = (25, 75)  # 0-99, default 50
FLITE_VOICES = ("slt", "rms", "awb", "kal16")  # the 16 kHz ones (kal is 8 kHz)
FLITE_STRETCH = (0.8, 1.3)  # duration_stretch: > 1 is slower
FLITE_F0 = (90, 190)  # int_f0_target_mean, Hz
FLITE_SHARE = 0.25  # fraction of clips from flite when it is installed
# festival's voices are the closest to a real speaker we can install: kal and ked are diphones cut from real
# recordings, slt is an HTS voice trained on CMU ARCTIC. espeak-ng's formant voices transfer worst to real
# speech, so with festival installed they are a minority of the keyword clips.
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
FESTIVAL_SHARE = 0.45  # of keyword clips, when festival is installed
FESTIVAL_STRETCH = (0.85, 1.25)  # Duration_Stretch
FESTIVAL_WARP = (0.88, 1.14)  # every frequency (pitch and formants) times this: a shorter or longer vocal tract
MANIFEST_VERSION = 1

# Everyday words for the unlabeled sentences; none of them is (or sounds like a form of) a keyword.
SENTENCE_WORDS = tuple(
    """the a of and to in is it you that he was for on are as with his they at be this have from or by
    one had not but what all were when we there can an your which their said if do will each about how up
    out them then she many some so these would other into has more her like him see time could make than
    first been its who now people my made over did down only way find use may water long little very after
    words called just where most know get through back much before go good new write our used me man too
    any day same right look think also around another came come work three must because does part even
    place well such here take why help put different away again off went old number great tell men say
    small every found still between name should home big give air line set own under read last never us
    left end along while might next sound below saw something thought both few those always show large
    often together asked house world going want school important until form food keep children feet land
    side without boy once animal life enough took four head above kind began almost live page got earth
    need far hand high year mother light country father let night picture being study second soon story
    since white ever paper hard near sentence better best across during today however sure knew it's try
    told young sun thing whole hear example heard several change answer room sea against top turned learn
    point city play toward five himself usually money seen didn't car morning I'm body upon family later
    turn move face door cut done group true leave color red friends easy""".split()
)
_EXCLUDE = set(VOCAB) | {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero", "ten",
                         "today", "second", "number", "play", "stop"}
SENTENCE_WORDS = tuple(dict.fromkeys(w for w in SENTENCE_WORDS if w.lower() not in _EXCLUDE))
PRETRAIN_SECONDS = (1.0, 4.0)


@dataclass(frozen=True)
class Voice:
    """One synthesis setting; with the text it fixes the audio (TTS engines are deterministic)."""

    engine: str  # "espeak-ng" | "flite" | "festival"
    voice: str
    rate: float  # espeak: words per minute; flite and festival: duration stretch
    pitch: float  # espeak: 0-99; flite: mean F0 in Hz; festival: frequency warp (applied after synthesis)

    def command(self, text: str, out: Path) -> list[str]:
        """festival reads its text from `out` with a .txt suffix, which synthesize() writes."""
        if self.engine == "espeak-ng":
            return ["espeak-ng", "-v", self.voice, "-s", str(int(self.rate)), "-p", str(int(self.pitch)),
                    "-w", str(out), "--", text]
        if self.engine == "festival":
            return ["text2wave", "-eval", f"(voice_{self.voice})", "-eval",
                    f"(Parameter.set 'Duration_Stretch {self.rate:.3f})", "-o", str(out), str(out.with_suffix(".txt"))]
        return ["flite", "-voice", self.voice, "--setf", f"duration_stretch={self.rate:.3f}",
                "--setf", f"int_f0_target_mean={self.pitch:.1f}", "-t", text, "-o", str(out)]


# ------------------------------------------------------------------------------------------------ tools


def tool_versions() -> dict[str, str | None]:
    """The first version line of each TTS tool, or None where it is not installed; recorded in the
    manifests because a different espeak-ng release says the same word differently."""
    probes = {"espeak-ng": ["espeak-ng", "--version"], "sox": ["sox", "--version"], "flite": ["flite", "--version"],
              "festival": ["festival", "--version"]}
    out: dict[str, str | None] = {}
    for name, cmd in probes.items():
        if shutil.which(cmd[0]) is None:
            out[name] = None
            continue
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if "version" in ln.lower()]
        text = lines[0] if lines else (proc.stdout or proc.stderr).strip().splitlines()[0]
        out[name] = text.split(" Data at:")[0].strip()  # espeak-ng appends its data path, which is per-machine
    return out


def ensure_tools(install: bool = False) -> dict[str, str | None]:
    """Check for espeak-ng (required), flite and festival (optional); with `install` and root, apt-get them.

    sox is listed in the install command for hand work on the clips (`sox in.wav -n stat`), but nothing
    here needs it: resampling runs in-process with python-soxr, the library sox itself uses.
    """
    versions = tool_versions()
    missing = [t for t in ("espeak-ng", "sox", "flite", "festival") if versions[t] is None]
    if not missing:
        return versions
    cmd = " ".join(INSTALL_CMD)
    console.print(f"[yellow]missing: {', '.join(missing)}[/] -> install with: [bold]{cmd}[/]")
    if install:
        if os.geteuid() != 0:
            raise QuambaEdgeError(f"--install needs root. Fix: run `sudo {cmd}` yourself, then re-run this script.")
        if subprocess.run(INSTALL_CMD).returncode != 0:
            subprocess.run(["apt-get", "update"], check=False)
            if subprocess.run(INSTALL_CMD).returncode != 0:
                raise QuambaEdgeError(f"`{cmd}` failed (see its output above). Fix: run it by hand.")
        versions = tool_versions()
    if versions["espeak-ng"] is None:
        raise QuambaEdgeError(f"espeak-ng is not installed. Fix: `{cmd}` as root, or re-run with --install.")
    if versions["flite"] is None:
        console.print("[yellow]flite is not installed: synthetic speech will come from espeak-ng only.[/]")
    if versions["festival"] is None:
        console.print("[yellow]festival is not installed: keyword clips will lack its near-natural voices.[/]")
    return versions


# ----------------------------------------------------------------------------------------- real clips


def fetch_deb(deb_dir: Path) -> Path:
    """The pinned asterisk-core-sounds-en-wav .deb in `deb_dir`: reused if its sha256 matches, else
    downloaded with `apt-get download` (no root needed), then checked against the pin."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    deb = deb_dir / DEB_FILE
    if deb.exists() and sha256_file(deb) == DEB_SHA256:
        return deb
    with tempfile.TemporaryDirectory(dir=deb_dir) as tmp:
        apt_download(DEB_NAME, DEB_VERSION, DEB_SHA256, Path(tmp),
                     download_fix=f"Fix: run `apt-get update` as root (Debian bookworm's main archive has {DEB_NAME} "
                                  f"{DEB_VERSION}), or put the .deb at {deb} yourself.",
                     mismatch_fix=f"A different build would change the test set. Fix: check your apt sources, or get "
                                  f"the original .deb from snapshot.debian.org and put it at {deb}.")
        os.replace(Path(tmp) / DEB_FILE, deb)
    return deb


def _manifest_ok(out_dir: Path, kind: str, config: dict) -> bool:
    """True when `out_dir` holds a complete set built with `config` (every clip present, hashes equal)."""
    try:
        manifest = read_manifest(kind, out_dir.parent)  # type: ignore[arg-type]
    except QuambaEdgeError:
        return False
    if manifest.get("config") != config:
        return False
    return all((out_dir / c["path"]).exists() and sha256_file(out_dir / c["path"]) == c["sha256"]
               for c in manifest.get("clips", []))


def _is_ours(kind: str) -> Callable[[Path], bool]:
    """staged_dir replaces an existing folder only if it is one of ours (its manifest names the kind)."""

    def ours(d: Path) -> bool:
        try:
            return read_manifest(kind, d.parent).get("kind") == kind  # type: ignore[arg-type]
        except QuambaEdgeError:
            return False

    return ours


def build_real(speech: Path, force: bool = False) -> dict:
    """Copy the vocabulary's recordings out of the pinned .deb into `speech/real/` with a manifest."""
    out_dir = speech / "real"
    config = {"version": MANIFEST_VERSION, "deb": DEB_FILE, "deb_sha256": DEB_SHA256, "clips": REAL_CLIPS}
    if not force and _manifest_ok(out_dir, "real", config):
        console.print(f"real: up to date ({out_dir})")
        return read_manifest("real", speech)
    deb = fetch_deb(speech / "debs")
    staged = staged_dir(out_dir, ours=_is_ours("real"), what="a real-speech set")
    with tempfile.TemporaryDirectory() as x, staged as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), x], check=True)
        sounds = Path(x) / SOUNDS_DIR
        clips = []
        for word, rel in REAL_CLIPS.items():
            src = sounds / rel
            if not src.exists():
                raise QuambaEdgeError(
                    f"{DEB_FILE} has no {SOUNDS_DIR}/{rel} (for {word!r}); REAL_CLIPS is out of date."
                )
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
            audio = read_wav(tmp / rel, None, reject_silent=True)
            clips.append({"word": word, "path": rel, "sha256": sha256_file(tmp / rel), "samples": len(audio),
                          "seconds": round(len(audio) / 8000, 4)})
        manifest = {"kind": "real", "config": config, "source": "Allison Smith, CC-BY-SA-3.0 (asterisk-core-sounds)",
                    "sample_rate": 8000, "clips": clips}
        atomic_write_json(tmp / "manifest.json", manifest)
    console.print(f"real: {len(clips)} clips -> {out_dir}")
    return manifest


# ------------------------------------------------------------------------------------------ synthesis


def available_voices(versions: dict[str, str | None], use_flite: bool = True,
                     use_festival: bool = True) -> list[tuple[str, str]]:
    """(engine, voice) pairs this machine can synthesize: every ESPEAK_VOICES x ESPEAK_VARIANTS whose
    accent espeak-ng lists, plus FLITE_VOICES and FESTIVAL_VOICES when installed and wanted."""
    listed = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True).stdout.split()
    pairs = [("espeak-ng", v + (f"+{var}" if var else "")) for v in ESPEAK_VOICES if v in listed
             for var in ESPEAK_VARIANTS]
    if not pairs:
        raise QuambaEdgeError("espeak-ng lists none of the English voices. Fix: reinstall espeak-ng-data.")
    if use_flite and versions.get("flite"):
        listed_flite = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
        pairs += [("flite", v) for v in FLITE_VOICES if v in listed_flite]
    if use_festival and versions.get("festival"):
        listed_festival = subprocess.run(["festival", "-b", "(print (voice.list))"], capture_output=True,
                                         text=True).stdout.replace("(", " ").replace(")", " ").split()
        pairs += [("festival", v) for v in FESTIVAL_VOICES if v in listed_festival]
    return pairs


def draw_voice(rng: np.random.Generator, voices: Sequence[tuple[str, str]]) -> Voice:
    """A random setting: festival for FESTIVAL_SHARE of clips and flite for FLITE_SHARE when available,
    else an espeak-ng voice+variant, with uniform speed and pitch. Without festival among `voices` the
    draws are the ones this made before festival was added, so older sets keep their clips."""
    espeak = [v for e, v in voices if e == "espeak-ng"]
    flite = [v for e, v in voices if e == "flite"]
    festival = [v for e, v in voices if e == "festival"]
    if festival and rng.random() < FESTIVAL_SHARE:
        return Voice("festival", festival[int(rng.integers(len(festival)))],
                     round(float(rng.uniform(*FESTIVAL_STRETCH)), 3), round(float(rng.uniform(*FESTIVAL_WARP)), 3))
    use_flite = bool(flite) and rng.random() < FLITE_SHARE
    if use_flite:
        return Voice("flite", flite[int(rng.integers(len(flite)))], round(float(rng.uniform(*FLITE_STRETCH)), 3),
                     round(float(rng.uniform(*FLITE_F0)), 1))
    name = espeak[int(rng.integers(len(espeak)))]
    speed = int(rng.integers(ESPEAK_SPEED[0], ESPEAK_SPEED[1] + 1))
    return Voice("espeak-ng", name, speed, int(rng.integers(ESPEAK_PITCH[0], ESPEAK_PITCH[1] + 1)))


def synthesize(text: str, voice: Voice, trim: bool = True) -> np.ndarray:
    """Speak `text` with `voice`: 16 kHz float32 mono, leading/trailing silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tts.wav"
        out.with_suffix(".txt").write_text(text + "\n")
        proc = subprocess.run(voice.command(text, out), capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            raise QuambaEdgeError(f"{voice.engine} failed for {text!r} with {voice}: {proc.stderr.strip()[-300:]}")
        audio = read_wav(out, SAMPLE_RATE, reject_silent=True)
    if voice.engine == "festival":  # read as if recorded at rate x warp: frequencies x warp, duration / warp
        audio = resample(audio, int(round(SAMPLE_RATE * voice.pitch)), SAMPLE_RATE)
    return trim_silence(audio) if trim else audio


def _word_rng(seed: int, word: str, index: int) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process.
    return np.random.default_rng([seed, zlib.crc32(word.encode()), index])


def keyword_plan(words: Sequence[str], variants: int, seed: int, voices) -> list[tuple[str, int, Voice]]:
    """(word, index, voice) for every synthetic keyword clip; a clip's voice depends only on (seed, word,
    index), so adding words or variants leaves the existing clips unchanged."""
    return [(w, i, draw_voice(_word_rng(seed, w, i), voices)) for w in words for i in range(variants)]


def _run_parallel(jobs: list, work: Callable, label: str, n_jobs: int) -> list:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress, ThreadPoolExecutor(n_jobs) as pool:
        task = progress.add_task(label, total=len(jobs))
        results = []
        for r in pool.map(work, jobs):  # map keeps job order, so output does not depend on scheduling
            results.append(r)
            progress.advance(task)
    return results


def build_synth(speech: Path, variants: int, seed: int, versions: dict, voices, force: bool = False,
                n_jobs: int = 2) -> dict:
    """Write `variants` TTS clips per VOCAB word to speech/synth/<word>/<i>.wav with a manifest."""
    out_dir = speech / "synth"
    config = {"version": MANIFEST_VERSION, "seed": seed, "variants": variants, "words": list(VOCAB),
              "tools": {k: versions.get(k) for k in ("espeak-ng", "flite", "festival")},
              "voices": [list(v) for v in voices], "sample_rate": SAMPLE_RATE}
    if not force and _manifest_ok(out_dir, "synth", config):
        console.print(f"synth: up to date ({out_dir})")
        return read_manifest("synth", speech)
    plan = keyword_plan(VOCAB, variants, seed, voices)
    window = int(WINDOW_S * SAMPLE_RATE)
    with staged_dir(out_dir, ours=_is_ours("synth"), what="a synthetic-speech set") as tmp:

        def work(job):
            word, i, voice = job
            audio = synthesize(word, voice)
            if len(audio) > window:
                raise QuambaEdgeError(f"{word!r} with {voice} is {len(audio) / SAMPLE_RATE:.2f} s, over the window.")
            rel = f"{word}/{i}.wav"
            (tmp / word).mkdir(exist_ok=True)
            write_wav(tmp / rel, audio, SAMPLE_RATE)
            return {"word": word, "index": i, "path": rel, "sha256": sha256_file(tmp / rel), "samples": len(audio),
                    **asdict(voice)}

        clips = _run_parallel(plan, work, "synth keywords", n_jobs)
        manifest = {"kind": "synth", "config": config, "clips": clips}
        atomic_write_json(tmp / "manifest.json", manifest)
    console.print(f"synth: {len(clips)} clips -> {out_dir}")
    return manifest


def sentence(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(SENTENCE_WORDS[int(k)] for k in rng.integers(len(SENTENCE_WORDS), size=n_words))


def pretrain_clip(seed: int, index: int, voices) -> tuple[str, Voice, np.ndarray]:
    """One unlabeled sentence of 1-4 s: aim for a random duration, pick a word count from the voice's
    speed, then add or drop words until it fits (cutting the end only as a last resort)."""
    rng = _word_rng(seed, "<pretrain>", index)
    voice = draw_voice(rng, voices)
    target = float(rng.uniform(*PRETRAIN_SECONDS))
    words_per_s = voice.rate / 60 if voice.engine == "espeak-ng" else 2.6 / voice.rate
    n = max(1, round(target * words_per_s))
    lo, hi = (int(s * SAMPLE_RATE) for s in PRETRAIN_SECONDS)
    text, audio = "", np.zeros(0, np.float32)
    for _ in range(8):
        text = sentence(_word_rng(seed, f"<pretrain-text-{n}>", index), n)
        audio = synthesize(text, voice)
        if len(audio) < lo:
            n += 1
        elif len(audio) > hi:
            n = max(1, n - 1)
        else:
            break
    if len(audio) > hi:  # still too long: cut, with a 20 ms fade so the cut does not click
        audio = audio[:hi].copy()
        fade = int(0.02 * SAMPLE_RATE)
        audio[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    if len(audio) < lo:
        audio = np.pad(audio, (0, lo - len(audio)))
    return text, voice, audio


def build_pretrain(speech: Path, n_clips: int, seed: int, versions: dict, voices, force: bool = False,
                   n_jobs: int = 2) -> dict:
    """Write `n_clips` unlabeled sentences to speech/pretrain/<i>.wav with a manifest (text included)."""
    out_dir = speech / "pretrain"
    config = {"version": MANIFEST_VERSION, "seed": seed, "clips": n_clips, "seconds": list(PRETRAIN_SECONDS),
              "tools": {k: versions.get(k) for k in ("espeak-ng", "flite")}, "voices": [list(v) for v in voices],
              "words": len(SENTENCE_WORDS), "sample_rate": SAMPLE_RATE}
    if not force and _manifest_ok(out_dir, "pretrain", config):
        console.print(f"pretrain: up to date ({out_dir})")
        return read_manifest("pretrain", speech)
    with staged_dir(out_dir, ours=_is_ours("pretrain"), what="a pre-training speech set") as tmp:

        def work(i: int) -> dict:
            text, voice, audio = pretrain_clip(seed, i, voices)
            rel = f"{i}.wav"
            write_wav(tmp / rel, audio, SAMPLE_RATE)
            return {"index": i, "path": rel, "sha256": sha256_file(tmp / rel), "samples": len(audio), "text": text,
                    **asdict(voice)}

        clips = _run_parallel(list(range(n_clips)), work, "pretrain sentences", n_jobs)
        manifest = {"kind": "pretrain", "config": config, "clips": clips}
        atomic_write_json(tmp / "manifest.json", manifest)
    console.print(f"pretrain: {len(clips)} clips -> {out_dir}")
    return manifest


# ------------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=int, default=20, help="synthetic clips per keyword (default 20)")
    parser.add_argument("--pretrain", type=int, default=200, help="unlabeled sentences (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel TTS processes")
    parser.add_argument("--install", action="store_true", help="apt-get install missing TTS tools (as root)")
    parser.add_argument("--no-flite", action="store_true", help="no flite voices, even if flite is installed")
    parser.add_argument("--no-festival", action="store_true", help="no festival voices for the keyword clips")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifests match")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-synth", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("QUAMBA_EDGE_CACHE", str(REPO / ".cache"))
    speech = cache_dir() / "speech"
    started = time.perf_counter()
    try:
        if not args.skip_real:
            t = time.perf_counter()
            real = build_real(speech, force=args.force)
            console.print(f"  ({time.perf_counter() - t:.1f} s)")
            for c in real["clips"]:
                print(f"{c['sha256']}  {c['seconds']:.3f} s  {c['word']:<10} real/{c['path']}")
        if not args.skip_synth:
            versions = ensure_tools(args.install)
            voices = available_voices(versions, use_flite=not args.no_flite, use_festival=not args.no_festival)
            console.print(f"TTS: {versions['espeak-ng']}; flite: {versions['flite']}; festival: "
                          f"{versions['festival']}; {len(voices)} voices")
            t = time.perf_counter()
            build_synth(speech, args.variants, args.seed, versions, voices, args.force, args.jobs)
            console.print(f"  ({time.perf_counter() - t:.1f} s)")
            t = time.perf_counter()
            # the sentences keep espeak-ng and flite only, so the pre-trained encoders stay valid
            sentence_voices = [v for v in voices if v[0] != "festival"]
            build_pretrain(speech, args.pretrain, args.seed, versions, sentence_voices, args.force, args.jobs)
            console.print(f"  ({time.perf_counter() - t:.1f} s)")
    except QuambaEdgeError as e:
        console.print(f"[red]error:[/] {e}")
        return 1
    console.print(f"done in {time.perf_counter() - started:.1f} s: {speech}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
