"""A data probe, not a product model: how well can *any* small model trained on our synthetic keywords
recognise the real speaker? A log-mel CNN (40 mel bands up to 4 kHz, three conv blocks, ~60 k parameters)
trains in minutes, so it answers "is the training data the bottleneck?" faster than the wav2vec 2.0
keyword spotter can.

    python benchmarks/kws_logmel_probe.py --telephone 1.0 --out benchmarks/results/kws_logmel_probe.json
    python benchmarks/kws_logmel_probe.py --engines festival --telephone 1.0   # one TTS engine only

Same training windows (train/kws.training_windows) and same real test trials (speech_sets.real_test_trials,
here 300 per condition, clean and 10 dB) as benchmarks/kws.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quamba_edge.data.speech import load_keyword_clips, telephone_band
from quamba_edge.data.speech_sets import real_test_trials
from quamba_edge.io import atomic_write_json
from quamba_edge.train.kws import accuracy_with_ci, training_windows


def mel_filterbank(bands: int = 40, n_fft: int = 512, rate: int = 16000, f_lo: float = 60.0,
                   f_hi: float = 4000.0) -> torch.Tensor:
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges = 700.0 * (10 ** (np.linspace(mel(f_lo), mel(f_hi), bands + 2) / 2595.0) - 1.0)
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    bank = np.zeros((bands, len(freqs)), np.float32)
    for i in range(bands):
        lo, centre, hi = edges[i:i + 3]
        bank[i] = np.clip(np.minimum((freqs - lo) / (centre - lo), (hi - freqs) / (hi - centre)), 0, None)
    return torch.from_numpy(bank)


def log_mel(audio: np.ndarray, bank: torch.Tensor) -> torch.Tensor:
    """(n, samples) -> (n, bands, frames): 25 ms windows every 10 ms, per-band mean removed per window."""
    spec = torch.stft(torch.from_numpy(audio), 512, 160, 400, window=torch.hann_window(400),
                      return_complex=True).abs() ** 2
    feats = torch.log(bank @ spec + 1e-6)
    return feats - feats.mean(-1, keepdim=True)


class ProbeCNN(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        blocks, channels = [], 1
        for width in (32, 64, 64):
            blocks += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        blocks[-1] = nn.AdaptiveMaxPool2d(1)
        self.body, self.out = nn.Sequential(*blocks), nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x.unsqueeze(1)).flatten(1))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="*", help="TTS engines to train on (default: all)")
    ap.add_argument("--telephone", type=float, default=1.0, help="share of clips band-limited to 4 kHz")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    bank = mel_filterbank()
    clips = telephone_band(load_keyword_clips("synth", engines=args.engines or None),
                           np.random.default_rng(args.seed), args.telephone)
    x, y, labels = training_windows(clips, args.train, args.seed)
    feats, targets = log_mel(x, bank), torch.from_numpy(y)
    net = ProbeCNN(len(labels))
    opt = torch.optim.AdamW(net.parameters(), 2e-3)
    for _ in range(args.epochs):
        net.train()
        order = torch.randperm(len(feats))
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            loss = nn.functional.cross_entropy(net(feats[idx]), targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    rows = []
    with torch.no_grad():
        train_acc = float((net(feats).argmax(-1) == targets).float().mean())
        for trials in real_test_trials(args.trials, snrs=(None, 10.0), labels=labels):
            pred = net(log_mel(trials.audio, bank)).argmax(-1).numpy()
            acc, lo, hi = accuracy_with_ci(pred == trials.labels)
            rows.append({"snr_db": "clean" if trials.snr_db is None else trials.snr_db, "accuracy": acc,
                         "ci95": [lo, hi], "trials": len(pred)})
    result = {"engines": args.engines or "all", "telephone": args.telephone, "train_windows": args.train,
              "epochs": args.epochs, "train_accuracy": train_acc, "rows": rows,
              "seconds": time.perf_counter() - start, "command": "python " + " ".join(sys.argv)}
    print(f"engines {result['engines']}, telephone {args.telephone}: train {train_acc:.3f}; real "
          + ", ".join(f"{r['snr_db']}: {r['accuracy']:.3f}" for r in rows) + f" ({result['seconds']:.0f} s)")
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
