"""The digit spotter on real speech (issue 18): 12 classes (ten digits, silence, unknown) trained on four FSDD
speakers and tested on the fifth (leave-one-speaker-out), and on the Asterisk English speaker, in clean audio
and white, pink and babble noise at 20, 10, 5 and 0 dB, fp32 and int8, every pooling, several seeds.

    make digits      # everything below, then --merge into benchmarks/results/kws.json and kws.png

    python benchmarks/digits.py features --encoder ccc=out/pretrain-asterisk/ccc        # windows + cached features
    python benchmarks/digits.py grid --encoder ccc=out/pretrain-asterisk/ccc --protocol frozen \
        --pools adapool cls --seeds 0 1 2 --out out/digits/grid-a.json
    python benchmarks/digits.py few --encoder wav2vec2=out/pretrain-asterisk/wav2vec2 --labels 5 20 \
        --out out/digits/few-wav2vec2.json
    python benchmarks/digits.py merge out/digits/*.json --json benchmarks/results/kws.json \
        --plot benchmarks/results/kws.png
    python benchmarks/digits.py confusion out/digits/models/scratch-end-to-end-adapool-george --trials 300

Data (quamba_edge/data/digits.py): per FSDD speaker, every take twice at a random offset in a 1 s window,
in a condition drawn from clean (a fifth) and the 12 noisy ones, plus silence and unknown windows (French
and Italian Asterisk words) as frequent as one digit; test trials are fixed per speaker and condition:
`--trials` per condition for an FSDD speaker (unknown words in Russian), 500 for the Asterisk speaker (her
own words as unknown). Nothing of a test speaker is seen in training, calibration or pre-training.

Protocols: `frozen` trains the KWS head (one transformer layer, the pooling, the classifier) on the frozen
encoder's output, computed once per window; `fine-tune` also trains the transformer (the conv feature
encoder frozen, as in wav2vec 2.0's fine-tuning; its output is computed once per window); `end-to-end`
trains everything, the conv stack included (batch 32: about 10 CPU-minutes a model). Every run takes
`STEPS` optimizer steps, whatever the number of labels. int8 is the
default speech recipe (static W8A8 of every linear layer and the positional conv; the conv feature encoder
stays float, so the cached conv output is exactly what the int8 model computes), calibrated on 256 training
windows of the fold, run in PyTorch: the int8 reference every engine is checked against.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from quamba_edge.bench.report import machine
from quamba_edge.checkpoints.wav2vec2 import load_wav2vec2, save_kws
from quamba_edge.data import digits
from quamba_edge.io import atomic_write_json
from quamba_edge.models.pooling import POOLS
from quamba_edge.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder
from quamba_edge.quant.recipes import StaticW8A8
from quamba_edge.quant.static import quantize_static
from quamba_edge.train.kws import FinetuneConfig, accuracy_with_ci, conv_features, encoder_states, finetune

OUT = Path("out/digits")
COPIES = 2  # training windows per take
TRAIN_SEED = 11
STEPS = 450  # optimizer steps of BATCH windows, whatever the number of labels (few-label runs get more epochs)
BATCH = 64
LR = {"frozen": 2e-3, "fine-tune": 1e-3, "end-to-end": 1e-3}


def load_encoder(spec: str, dropout: float | None = None) -> Wav2Vec2Encoder:
    """A pre-trained encoder directory, or `scratch`: the tiny config, initialised with seed 0.

    `dropout` (scratch only; None: the config's 0.1; 0 <= dropout < 1): the transformer's dropout, attention
    dropout and feature-projection dropout, with layerdrop at half of it (the config's 0.05 at 0.1). Every
    weight is initialised as in the default build except the positional conv's, whose scale follows fairseq's
    sqrt(4 (1 - dropout) / (kernel * dim)) (x1.054 at dropout 0): the scratch encoder of that config.
    Raises ValueError for a dropout outside [0, 1) or with a pre-trained encoder."""
    if dropout is not None and not 0 <= dropout < 1:
        raise ValueError(f"dropout must lie in [0, 1), not {dropout}")
    if spec == "scratch":
        cfg = Wav2Vec2Config.tiny()
        if dropout is not None:
            cfg = dataclasses.replace(cfg, dropout=dropout, attention_dropout=dropout, feat_proj_dropout=dropout,
                                      layerdrop=dropout / 2)
        torch.manual_seed(0)
        return Wav2Vec2Encoder(cfg).eval()
    if dropout is not None:
        raise ValueError("dropout applies to the scratch encoder only (a pre-trained one keeps its config)")
    return load_wav2vec2(spec)[0].eval()


def build_windows(trials: int, asterisk_trials: int = 500, copies: int = COPIES,
                  recipe: digits.Recipe = digits.Recipe()) -> dict:
    """Training windows per FSDD speaker (and of the synthetic voices when the recipe has them: key
    "synthetic", in every fold's training) and the test trials of every speaker (a pure function of the seeds)."""
    data: dict = {"train": {}, "test": {}}
    for i, speaker in enumerate(digits.speakers()):
        audio, labels, takes = digits.training_windows(digits.train_sources(speaker), copies, TRAIN_SEED + i,
                                                       recipe=recipe)
        data["train"][speaker] = {"audio": audio, "labels": labels, "takes": takes}
    if recipe.synthetic:
        audio, labels, takes = digits.training_windows(digits.synthetic_sources(recipe.synthetic), copies,
                                                       TRAIN_SEED + 99, recipe=recipe)
        data["train"]["synthetic"] = {"audio": audio, "labels": labels, "takes": takes}
    for speaker in (*digits.speakers(), digits.ASTERISK_SPEAKER):
        n = asterisk_trials if speaker == digits.ASTERISK_SPEAKER else trials
        data["test"][speaker] = digits.test_sets(speaker, n)
    return data


def windows(trials: int, log, asterisk_trials: int = 500, copies: int = COPIES,
            recipe: digits.Recipe = digits.Recipe()) -> dict:
    """The windows alone (what end to end needs: its conv stack trains), built in about a minute, not cached."""
    start = time.perf_counter()
    data = build_windows(trials, asterisk_trials, copies, recipe)
    data["test"] = {s: [{"trials": t} for t in sets] for s, sets in data["test"].items()}
    log(f"windows ({recipe.name}) in {time.perf_counter() - start:.0f} s")
    return data


def features(name: str, spec: str, trials: int, log, asterisk_trials: int = 500, copies: int = COPIES,
             recipe: digits.Recipe = digits.Recipe()) -> dict:
    """Windows, their conv features and the frozen encoder's output, computed once per encoder and recipe and
    cached under out/digits/features-<name>-<recipe>-....pt (3.7 GB)."""
    path = OUT / f"features-{name}-{recipe.name}-{trials}-{asterisk_trials}-{copies}.pt"
    if path.exists():
        return _arrays(torch.load(path, weights_only=False), np.asarray)  # our own cache
    start = time.perf_counter()
    data = build_windows(trials, asterisk_trials, copies, recipe)
    log(f"windows in {time.perf_counter() - start:.0f} s")
    encoder = load_encoder(spec)
    for part in data["train"].values():
        part["conv"] = conv_features(encoder, part["audio"])
        part["states"] = encoder_states(encoder, part["conv"])
    for speaker, sets in data["test"].items():
        data["test"][speaker] = [{"trials": t, "conv": (c := conv_features(encoder, t.audio)),
                                  "states": encoder_states(encoder, c)} for t in sets]
        log(f"features of {speaker}'s tests in {time.perf_counter() - start:.0f} s")
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(_arrays(data, torch.from_numpy), tmp)  # tensors: pickling 3 GB of numpy arrays would copy them
    tmp.replace(path)
    return data


def _arrays(data: dict, convert) -> dict:
    """The cache with its audio as tensors (to save, zero-copy) or numpy arrays (to use)."""
    for part in data["train"].values():
        part["audio"] = convert(part["audio"])
    for sets in data["test"].values():
        for part in sets:
            part["trials"] = dataclasses.replace(part["trials"], audio=convert(part["trials"].audio))
    return data


def fold_data(data: dict, held_out: str, key: str, labels_per_class: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [p for s, p in data["train"].items() if s != held_out]
    keep = [np.ones(len(p["labels"]), bool) if labels_per_class is None else p["takes"] < labels_per_class
            for p in parts]
    x = torch.cat([torch.as_tensor(p[key])[torch.from_numpy(k)] for p, k in zip(parts, keep)])
    y = torch.cat([torch.from_numpy(p["labels"][k]) for p, k in zip(parts, keep)])
    return x, y


@torch.no_grad()
def logits_of(model, conv: torch.Tensor, states: torch.Tensor | None, batch: int = 128) -> np.ndarray:
    out = []
    for i in range(0, len(conv), batch):
        h = states[i:i + batch] if states is not None else model.encoder.contextualize(conv[i:i + batch]).hidden
        out.append(model.head(h).argmax(-1).numpy())
    return np.concatenate(out)


def training_tag(recipe: digits.Recipe, copies: int = COPIES, masking: tuple[float, float] = (0.0, 0.0),
                 dropout: float | None = None) -> str:
    """The recipe's name, plus what else shaped the training windows and steps when it is not the default:
    e.g. 'rev0.5-eq0.5-syn100-x4-mt0.2-mc0.2-d0' (4 windows per take; time and channel masking; no dropout)."""
    extras = [f"x{copies}" if copies != COPIES else "", f"mt{masking[0]:g}" if masking[0] else "",
              f"mc{masking[1]:g}" if masking[1] else "", f"d{dropout:g}" if dropout is not None else ""]
    return "-".join([recipe.name, *(e for e in extras if e)])


def run_one(data: dict, spec: str, name: str, protocol: str, pool: str, seed: int, held_out: str,
            labels_per_class: int | None, int8: bool, log, save: Path | None = None,
            recipe: digits.Recipe = digits.Recipe(), steps: int = STEPS, copies: int = COPIES,
            masking: tuple[float, float] = (0.0, 0.0), dropout: float | None = None) -> list[dict]:
    """Train one spotter on the four speakers other than `held_out` (and the synthetic voices when `data`
    has them); score it on `held_out` and the Asterisk speaker, every condition, fp32 (and int8).
    `masking` = (time, channel) SpecAugment probabilities of fine-tuning (FinetuneConfig.mask_*_prob);
    `dropout`: the scratch encoder's (load_encoder)."""
    frozen, e2e = protocol == "frozen", protocol == "end-to-end"
    x, y = fold_data(data, held_out, "states" if frozen else "audio" if e2e else "conv", labels_per_class)
    batch = 32 if e2e else BATCH
    epochs = max(1, round(steps * batch / len(y)))
    cfg = FinetuneConfig(pool=pool, epochs=epochs, lr=LR[protocol], encoder_lr=0 if frozen else 1e-3,
                         seed=seed, window_s=digits.WINDOW_S, batch_size=batch, train_conv=e2e,
                         mask_time_prob=masking[0], mask_channel_prob=masking[1])  # frozen + masking: finetune refuses
    tag = training_tag(recipe, copies, masking, dropout)
    start = time.perf_counter()
    curve: list[dict] = []  # per epoch: loss and accuracy on the (augmented, dropped-out) training windows
    model = finetune(load_encoder(spec, dropout), digits.LABELS, x, y, cfg, lambda e, m: curve.append(m))
    train_s = time.perf_counter() - start
    speakers = [s for s in digits.speakers() if s != held_out]
    model.cfg.trained_on = {"dataset": "fsdd", "speakers": speakers, "labels_per_class": labels_per_class or 50,
                            "recipe": dataclasses.asdict(recipe), "copies": copies,
                            "masking": {"time": cfg.mask_time_prob, "channel": cfg.mask_channel_prob}}
    if save is not None:
        save_kws(model, save, {"training": {"encoder": spec, "pretraining": name, "protocol": protocol,
                                            "seed": seed, "epochs": cfg.epochs, "lr": cfg.lr,
                                            "windows": len(y), "command": "python " + " ".join(sys.argv)}})
    models = {"fp32": model}
    if int8:
        parts = [data["train"][s]["audio"][:64] for s in speakers]
        calib = torch.from_numpy(np.concatenate(parts))
        qmodel, _ = quantize_static(model, [(w,) for w in calib.split(32)], StaticW8A8(), data="audio")
        probe = data["test"][held_out][0]
        full = qmodel(torch.from_numpy(probe["trials"].audio[:8]))
        conv = conv_features(model.encoder, probe["trials"].audio[:8]) if e2e else probe["conv"][:8]
        cached = qmodel.head(qmodel.encoder.contextualize(conv).hidden)
        assert torch.allclose(full, cached, atol=1e-5), "int8 conv features must be the float ones"
        models["int8"] = qmodel
    rows = []
    for speaker in (held_out, digits.ASTERISK_SPEAKER):
        for part in data["test"][speaker]:
            t = part["trials"]
            # end to end, the conv stack was trained: its output (float in the int8 model too) is this model's
            conv = conv_features(model.encoder, t.audio) if e2e else part["conv"]
            for precision, m in models.items():
                pred = logits_of(m, conv, part["states"] if frozen and precision == "fp32" else None)
                acc, lo, hi = accuracy_with_ci(pred == t.labels)
                rows.append({"speaker": speaker, "fold": held_out, "pooling": pool, "precision": precision,
                             "snr_db": "clean" if t.snr_db is None else t.snr_db, "noise": t.noise, "seed": seed,
                             "accuracy": acc, "ci95": [lo, hi], "trials": len(t.labels), "encoder": "tiny",
                             "pretraining": name, "protocol": protocol, "recipe": tag,
                             "labels_per_class": labels_per_class or 50, "train_seconds": round(train_s, 1),
                             "steps": steps, "train_loss": round(curve[-1]["loss"], 4),
                             "train_accuracy": round(curve[-1]["train_accuracy"], 4)})
    clean = [r["accuracy"] for r in rows if r["speaker"] == held_out and r["snr_db"] == "clean"]
    log(f"[{name}/{tag}/{protocol}/{pool}/seed {seed}/{held_out}/{labels_per_class or 50} takes] "
        f"clean fp32 {clean[0]:.3f}{f' int8 {clean[1]:.3f}' if int8 else ''} ({train_s:.0f} s; last epoch: loss "
        f"{curve[-1]['loss']:.3f}, training accuracy {curve[-1]['train_accuracy']:.3f})")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("features", "grid", "few", "merge", "confusion"))
    ap.add_argument("inputs", nargs="*", type=Path, help="merge: run files; confusion: saved spotters")
    ap.add_argument("--speaker", default=digits.ASTERISK_SPEAKER, help="confusion: the test speaker")
    ap.add_argument("--encoder", default="scratch=scratch", help="NAME=DIR of a pre-trained encoder, or NAME=scratch")
    ap.add_argument("--protocol", choices=("frozen", "fine-tune", "end-to-end"), default="frozen")
    ap.add_argument("--pools", nargs="+", default=list(POOLS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--folds", nargs="+", default=None, help="held-out FSDD speakers (default: all five)")
    ap.add_argument("--labels", nargs="+", type=int, default=[5, 20], help="few: takes per digit per speaker")
    ap.add_argument("--int8-seeds", nargs="*", type=int, default=None, help="seeds scored in int8 (default: all)")
    ap.add_argument("--trials", type=int, default=200, help="test trials per condition per FSDD speaker")
    ap.add_argument("--asterisk-trials", type=int, default=500, help="test trials per condition, Asterisk speaker")
    ap.add_argument("--copies", type=int, default=COPIES, help="training windows per take")
    ap.add_argument("--reversed-unknown", type=float, default=digits.CHANNEL_RECIPE.reversed_unknown,
                    help="share of unknown windows that are reversed training takes (0: Asterisk words only)")
    ap.add_argument("--channel-eq", type=float, default=digits.CHANNEL_RECIPE.channel_eq,
                    help="share of training clips through a random equaliser")
    ap.add_argument("--synthetic", type=int, default=digits.CHANNEL_RECIPE.synthetic,
                    help="synthetic (TTS) takes per digit added to every fold (0: none; needs `make speech`)")
    ap.add_argument("--mask-time", type=float, default=0.0,
                    help="fine-tuning's time masking (SpecAugment; wav2vec 2.0 mask_prob): spans of 5 frames")
    ap.add_argument("--mask-channel", type=float, default=0.0,
                    help="fine-tuning's channel masking (wav2vec 2.0 mask_channel_prob): spans of 16 channels")
    ap.add_argument("--dropout", type=float, default=None,
                    help="scratch encoder only, in [0, 1): its dropout, attention and feature-projection dropout "
                         "(default 0.1), layerdrop half of it; the positional conv's init scale follows it")
    ap.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per model (the epochs follow)")
    ap.add_argument("--save", action="store_true", help="save each seed-0 model under out/digits/models/")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"{time.perf_counter() - start:7.0f}s {message}", flush=True)

    if args.stage == "confusion":  # where a saved spotter's answers go on one test speaker, clean
        from quamba_edge.checkpoints.wav2vec2 import load_kws
        from quamba_edge.train.kws import predict

        for directory in args.inputs:
            t = digits.test_sets(args.speaker, args.trials, conditions=digits.CONDITIONS[:1])[0]
            pred = predict(load_kws(directory), t.audio)
            matrix = np.zeros((len(digits.LABELS),) * 2, int)
            np.add.at(matrix, (t.labels, pred), 1)
            is_digit = t.labels < digits.SILENCE
            share = float((pred[is_digit] == digits.UNKNOWN).mean())
            print(f"{directory} on {args.speaker}, clean (rows: truth, columns: answer; {', '.join(digits.LABELS)})")
            print(matrix)
            print(f"digits named right: {(pred == t.labels)[is_digit].mean():.1%}; digits answered 'unknown': "
                  f"{share:.1%}; unknown words rejected: {(pred == t.labels)[t.labels == digits.UNKNOWN].mean():.1%}")
        return
    if args.stage == "merge":
        from digits_report import merge

        merge(args.inputs, args.json, args.plot)
        return
    if args.protocol == "frozen" and (args.mask_time or args.mask_channel):
        ap.error("--mask-time/--mask-channel need a trained encoder: use --protocol fine-tune or end-to-end")
    name, _, spec = args.encoder.partition("=")
    if args.dropout is not None:  # refused before any data is built: load_encoder's checks, then the protocol's
        try:
            load_encoder(spec, args.dropout)
        except ValueError as e:
            ap.error(f"--dropout: {e}")
        if args.protocol == "frozen":
            ap.error("--dropout sets the scratch encoder's dropout while it trains: use --protocol fine-tune or "
                     "end-to-end")
    recipe = digits.Recipe(args.reversed_unknown, args.channel_eq, args.synthetic)
    if args.stage == "grid" and args.protocol == "end-to-end":
        data = windows(args.trials, log, args.asterisk_trials, args.copies, recipe)
    else:
        data = features(name, spec, args.trials, log, args.asterisk_trials, args.copies, recipe)
    if args.stage == "features":
        return
    folds = args.folds or list(digits.speakers())
    rows: list[dict] = []

    def save_rows() -> None:
        if args.out:
            atomic_write_json(args.out, {"command": "python " + " ".join(sys.argv), "machine": machine("cpu"),
                                         "seconds": time.perf_counter() - start, "rows": rows})

    jobs = ([(pool, seed, None) for pool in args.pools for seed in args.seeds] if args.stage == "grid"
            else [(args.pools[0], args.seeds[0], k) for k in args.labels])
    masking = (args.mask_time, args.mask_channel)
    trained = training_tag(recipe, args.copies, masking, args.dropout)
    tag = f"{name}-{args.protocol}" if trained == "base" else f"{name}-{trained}-{args.protocol}"
    tag += f"-{args.steps}steps" if args.steps != STEPS else ""
    for pool, seed, k in jobs:
        for held_out in folds:
            where = OUT / "models" / f"{tag}-{pool}-{held_out}" if args.save and seed == 0 else None
            int8 = args.int8_seeds is None or seed in args.int8_seeds
            rows += run_one(data, spec, name, args.protocol, pool, seed, held_out, k, int8 and k is None, log, where,
                            recipe, args.steps, args.copies, masking, args.dropout)
            save_rows()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
