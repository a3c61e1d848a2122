"""Keyword spotting on real recordings: an encoder (pre-trained, or untrained "scratch") x each pooling
(AdaPool, Avg, Max, Cls), trained on synthetic speech, scored on the real clips placed in noise, fp32 and int8.

    make kws    # the end-to-end runs (two processes side by side), the frozen ccc run, then --merge

    python benchmarks/kws.py --encoder scratch=scratch --train-conv --train 3000 --epochs 6 --lr 1e-3 \
        --encoder-lr 1e-3 --int8-conv --pools adapool --out out/kws/scratch-a.json
    python benchmarks/kws.py --merge out/kws/*.json --json benchmarks/results/kws_synthetic.json \
        --plot benchmarks/results/kws_synthetic.png

Protocols: --encoder-lr 0 keeps the encoder frozen and trains the KWS head on its output (the
frozen-upstream protocol that compares pre-trainings); > 0 also trains the transformer (fine-tune);
--train-conv trains everything, the conv stack included (end-to-end, the one that works here).

Training: synthetic keywords (espeak-ng, flite and festival voices, band-limited to 8 kHz and back with
probability --telephone, 1 by default: the real clips are telephone-band, nothing above 4 kHz) placed at
random offsets in 1.5 s windows over the SNR x noise grid. Test: the 16 real recordings
(asterisk-core-sounds-en-wav, one speaker), each trial a random clip at a random offset in 1.5 s of
silence or pink noise at SNR clean/20/10/5/0 dB, 500 trials per condition with fixed seeds, the same
trials for every model. The keyword covers 35-60% of the window. Accuracy with a 95% Wilson interval.
int8: the default speech recipe, static W8A8 of every linear layer and the positional conv, the conv feature
encoder float (quant/static.py; --int8-conv adds rows with that encoder int8 too), calibrated on synthetic windows
only, run in PyTorch (the int8 reference every engine is checked against).

    python benchmarks/kws.py --encoder scratch=scratch --train-conv --encoder-lr 1e-3 --lr 1e-3 --epochs 6 \
        --load out/kws --int8-conv --out out/kws/scratch-scored.json   # score saved models, no training
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from quamba_edge.checkpoints.wav2vec2 import load_kws, load_wav2vec2, save_kws
from quamba_edge.data.speech import load_keyword_clips, load_pretrain_clips, telephone_band
from quamba_edge.data.speech_sets import calibration_windows, real_test_trials, snr_label
from quamba_edge.io import atomic_write, atomic_write_json
from quamba_edge.models.pooling import POOLS
from quamba_edge.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder
from quamba_edge.quant.recipes import StaticW8A8
from quamba_edge.quant.static import quantize_static
from quamba_edge.train.kws import (
    FinetuneConfig,
    conv_features,
    encoder_states,
    finetune,
    score,
    training_windows,
)


def protocol(encoder_lr: float, train_conv: bool) -> str:
    """frozen: only the KWS head trains on the encoder's output; fine-tune: the transformer too (conv stack
    frozen, as in wav2vec 2.0's recipe); end-to-end: everything, the conv stack included."""
    return "frozen" if encoder_lr == 0 else "end-to-end" if train_conv else "fine-tune"


def load_encoder(spec: str, seed: int) -> Wav2Vec2Encoder:
    if spec == "scratch":  # no pre-training: the control
        torch.manual_seed(seed)
        return Wav2Vec2Encoder(Wav2Vec2Config.tiny())
    return load_wav2vec2(spec)[0]


def run(name: str, spec: str, pools: list[str], int8_pools: list[str], n_train: int, epochs: int, trials: int,
        seed: int, save_dir: Path | None, log, lr: float = 5e-4, encoder_lr: float = 1e-4,
        telephone: float = 1.0, train_conv: bool = False, on_pool=None, load_dir: Path | None = None,
        int8_conv: bool = False) -> list[dict]:
    """`on_pool(rows)` is called after each pooling method with the rows so far (a long run keeps its results
    when stopped). `load_dir`: score the models an earlier run saved there instead of training. `int8_conv`:
    also score the int8 model with the conv feature encoder in int8 (the ablation of the default recipe)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    clips = telephone_band(load_keyword_clips("synth"), rng, telephone)
    babble = load_pretrain_clips(limit=300)
    x_train, y_train, labels = training_windows(clips, n_train, seed, babble=babble)
    tests = real_test_trials(trials, labels=labels)
    calib = torch.from_numpy(calibration_windows("default", 256, 1.5))
    rows = []
    t0 = time.perf_counter()
    frozen = load_encoder(spec, seed)  # the conv stack stays frozen, so its output serves every pooling
    if train_conv:  # end to end: nothing can be cached
        feats, test_feats = torch.from_numpy(x_train), [None] * len(tests)
    else:
        feats = conv_features(frozen, x_train)
        test_feats = [conv_features(frozen, t.audio) for t in tests]
    if encoder_lr == 0:  # frozen encoder: its output is computed once too
        feats = encoder_states(frozen, feats)
        test_feats = [encoder_states(frozen, f) for f in test_feats]
    log(f"[{name}] {'encoder' if encoder_lr == 0 else 'conv'} features of {len(x_train)} training and "
        f"{sum(len(t.audio) for t in tests)} test windows in {time.perf_counter() - t0:.0f} s")
    how = protocol(encoder_lr, train_conv)
    for pool in pools:
        if load_dir is not None:
            model = load_kws(load_dir / f"{name}-{how}-{pool}")
        else:
            model = finetune(load_encoder(spec, seed), labels, feats, torch.from_numpy(y_train),
                             FinetuneConfig(pool=pool, epochs=epochs, seed=seed, lr=lr, encoder_lr=encoder_lr,
                                            train_conv=train_conv),
                             on_epoch=lambda e, r, pool=pool: log(f"[{name}/{pool}] epoch {e}: {json.dumps(r)}"))
        if save_dir is not None and load_dir is None:
            save_kws(model, save_dir / f"{name}-{how}-{pool}", {"training": {
                "windows": n_train, "epochs": epochs, "seed": seed, "encoder": spec, "protocol": how, "lr": lr,
                "encoder_lr": encoder_lr, "telephone": telephone}})

        def add(precision: str, result: dict, t, pool: str = pool) -> None:
            rows.append({"pretraining": name, "protocol": how, "pooling": pool, "precision": precision,
                         "snr_db": snr_label(t.snr_db), "noise": t.noise if t.snr_db is not None else "silence",
                         **result})
            log(f"[{name}/{pool}] {precision} {rows[-1]['snr_db']}: {rows[-1]['accuracy']:.3f}")

        for t, f in zip(tests, test_feats):
            add("fp32", score(model, t, states=f) if encoder_lr == 0 else score(model, t, f), t)
        if pool in int8_pools:  # the default recipe (conv features float), then optionally all-int8
            for precision, conv in (("int8", False), ("int8 (conv features int8)", True))[:2 if int8_conv else 1]:
                qmodel, _ = quantize_static(model, [(w,) for w in torch.split(calib, 32)],
                                            StaticW8A8(int8_conv_features=conv), data="audio")
                for t in tests:
                    add(precision, score(qmodel, t), t)
        if on_pool:
            on_pool(rows)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({(r["pretraining"], r["protocol"]) for r in rows})
    cols = min(2, len(names))
    grid_rows = -(-len(names) // cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(6.5 * cols, 5.5 * grid_rows), sharey=True, squeeze=False)
    order = ["clean", 20.0, 10.0, 5.0, 0.0]
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    styles = (("fp32", "-"), ("int8", "--"), ("int8 (conv features int8)", ":"))
    for ax, name in zip(axes.flat, names):
        for colour, pool in enumerate(POOLS):  # one colour per pooling, one line style per precision
            for precision, style in styles:
                sel = {r["snr_db"]: r for r in rows if (r["pretraining"], r["protocol"]) == name
                       and r["pooling"] == pool and r["precision"] == precision}
                if not sel:
                    continue
                xs = [i for i, s in enumerate(order) if s in sel]
                acc = [sel[order[i]]["accuracy"] for i in xs]
                lo = [sel[order[i]]["accuracy"] - sel[order[i]]["ci95"][0] for i in xs]
                hi = [sel[order[i]]["ci95"][1] - sel[order[i]]["accuracy"] for i in xs]
                ax.errorbar(xs, acc, yerr=[lo, hi], linestyle=style, marker="o", capsize=3, color=f"C{colour}",
                            label=f"{pool} ({precision})")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)  # below: no data hidden
        ax.set_xticks(range(len(order)), [str(s) if s == "clean" else f"{s:g} dB" for s in order])
        ax.set_title(f"{name[0]} encoder, {name[1]}")
        ax.set_xlabel("SNR of the real clip in pink noise")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("keyword accuracy (16 words, 95% CI)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", help="NAME=DIR of a pre-trained encoder, or NAME=scratch")
    ap.add_argument("--pools", nargs="+", default=list(POOLS))
    ap.add_argument("--int8-pools", nargs="*", default=list(POOLS))
    ap.add_argument("--train", type=int, default=4000, help="training windows")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--trials", type=int, default=500, help="real test trials per SNR")
    ap.add_argument("--lr", type=float, default=5e-4, help="KWS head learning rate")
    ap.add_argument("--encoder-lr", type=float, default=1e-4, help="0 keeps the whole encoder frozen")
    ap.add_argument("--load", type=Path, help="score the models a run saved in this directory; no training")
    ap.add_argument("--int8-conv", action="store_true", help="also score int8 with the conv feature encoder int8")
    ap.add_argument("--train-conv", action="store_true", help="train end to end, the conv stack included")
    ap.add_argument("--telephone", type=float, default=1.0, help="share of training clips band-limited to 4 kHz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, default=Path("out/kws"), help="directory for the fine-tuned models")
    ap.add_argument("--out", type=Path, help="rows of this run (JSON)")
    ap.add_argument("--merge", nargs="+", type=Path, help="combine runs into --json and --plot")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)
    if args.merge:
        runs = [json.loads(p.read_text()) for p in args.merge]
        rows = [{"protocol": protocol(run_["encoder_lr"], run_.get("train_conv", False)), **r}
                for run_ in runs for r in run_["rows"]]
        if args.json:
            atomic_write_json(args.json, {"rows": rows, "runs": [{k: v for k, v in r.items() if k != "rows"}
                                                                 for r in runs]})
        if args.plot:
            plot(rows, args.plot)
        return
    name, _, spec = args.encoder.partition("=")
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"{time.perf_counter() - start:7.0f}s {message}", flush=True)

    def save(rows: list[dict]) -> None:
        if args.out:
            atomic_write_json(args.out, {"encoder": spec, "pretraining": name, "train_windows": args.train,
                                         "epochs": args.epochs, "lr": args.lr, "encoder_lr": args.encoder_lr,
                                         "telephone": args.telephone, "train_conv": args.train_conv,
                                         "seed": args.seed, "seconds": time.perf_counter() - start,
                                         "command": "python " + " ".join(sys.argv), "rows": rows})

    save(run(name, spec, args.pools, args.int8_pools, args.train, args.epochs, args.trials, args.seed, args.save,
             log, args.lr, args.encoder_lr, args.telephone, args.train_conv, on_pool=save, load_dir=args.load,
             int8_conv=args.int8_conv))


if __name__ == "__main__":
    main()
