"""Fine-tune a wav2vec 2.0 encoder for keyword spotting, and score it on KWS trials.

Three protocols (FinetuneConfig): frozen (encoder_lr 0: only the KWS head trains, on the encoder's cached
output); fine-tune (the conv feature encoder frozen, as in wav2vec 2.0's own fine-tuning recipe, so its
output is computed once per training window and reused every epoch: the conv stack is most of the CPU cost
of a step); end-to-end (train_conv: everything trains, every step runs the whole model, ~5x the cost).

Training windows are synthetic keywords (TTS voices) placed at random offsets in 1.5 s windows of
silence, pink, white or babble noise at SNRs drawn from the test's grid; the real recordings are never
seen in training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from quamba_edge.data.speech import KwsTrials, kws_trials
from quamba_edge.models.kws import KeywordSpotter, KwsConfig, normalize_window
from quamba_edge.models.wav2vec2 import Wav2Vec2Encoder
from quamba_edge.train.pretrain import span_mask

TRAIN_SNRS: tuple[float | None, ...] = (None, 20.0, 10.0, 5.0, 0.0)
TRAIN_NOISES = ("pink", "white", "babble")


@dataclass
class FinetuneConfig:
    pool: str = "adapool"
    epochs: int = 12
    batch_size: int = 32
    lr: float = 5e-4
    encoder_lr: float = 1e-4  # 0: the whole encoder stays frozen and only the KWS head trains
    train_conv: bool = False  # True: end to end, the conv stack too; `features` are then the raw windows
    seed: int = 0
    window_s: float = 1.5  # the window the features were cut from (KwsConfig.window_s)
    # SpecAugment in the manner of wav2vec 2.0's fine-tuning (fairseq mask_prob / mask_channel_prob; the fine-tune
    # and end-to-end protocols only): per window about prob * frames / length spans of `mask_time_length` frames
    # replaced by the encoder's mask_emb, and about prob * hidden / length spans of `mask_channel_length`
    # projected feature channels zeroed. Where it differs from fairseq: no minimum span count (fairseq masks at
    # least 2 time spans), span starts drawn with replacement, and channels zeroed before the time mask (so
    # mask_emb frames keep every channel)
    mask_time_prob: float = 0.0
    mask_time_length: int = 5
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 16

    def __post_init__(self) -> None:
        if not (0 <= self.mask_time_prob <= 1 and 0 <= self.mask_channel_prob <= 1
                and self.mask_time_length >= 1 and self.mask_channel_length >= 1):
            raise ValueError(f"bad masking in {self}: probabilities lie in [0, 1], span lengths are >= 1")

    @property
    def masking(self) -> bool:
        return self.mask_time_prob > 0 or self.mask_channel_prob > 0


def training_windows(clips: Mapping[str, Sequence[np.ndarray]], n: int, seed: int,
                     babble: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """n windows spread evenly over the SNR x noise grid (clean once per noise kind), shuffled."""
    conditions = [(snr, noise) for snr in TRAIN_SNRS for noise in TRAIN_NOISES]
    per = -(-n // len(conditions))
    trials = [kws_trials(clips, snr, per, seed * 1000 + i, noise=noise, babble_clips=babble)
              for i, (snr, noise) in enumerate(conditions)]
    x, y = np.concatenate([t.audio for t in trials])[:n], np.concatenate([t.labels for t in trials])
    order = np.random.default_rng(seed).permutation(len(x))[:n]
    return x[order], y[order], tuple(clips)


@torch.no_grad()
def conv_features(encoder: Wav2Vec2Encoder, audio: np.ndarray, batch_size: int = 64) -> Tensor:
    """The frozen conv stack's output for every window, (n, t, c), computed once."""
    encoder.eval()
    return torch.cat([encoder.conv_features(normalize_window(torch.from_numpy(audio[i:i + batch_size])))
                      for i in range(0, len(audio), batch_size)])


@torch.no_grad()
def encoder_states(encoder: Wav2Vec2Encoder, conv: Tensor, batch_size: int = 64) -> Tensor:
    """The frozen encoder's output frames (n, t, d) from cached conv features: with encoder_lr 0 the head
    trains on these alone (the SUPERB-style frozen-upstream protocol, which compares pre-trainings)."""
    encoder.eval()
    return torch.cat([encoder.contextualize(conv[i:i + batch_size]).hidden for i in range(0, len(conv), batch_size)])


def finetune(encoder: Wav2Vec2Encoder, labels: tuple[str, ...], features: Tensor, targets: Tensor,
             cfg: FinetuneConfig, on_epoch: Callable[[int, dict], None] | None = None) -> KeywordSpotter:
    """`features`: the conv stack's output (encoder_lr > 0), the frozen encoder's output (encoder_lr 0), or
    the audio windows themselves (train_conv: every step runs the whole model, ~5x the cost on a CPU)."""
    torch.manual_seed(cfg.seed)
    model = KeywordSpotter(encoder, KwsConfig(labels=labels, pool=cfg.pool, window_s=cfg.window_s))
    frozen = cfg.encoder_lr == 0
    if frozen and cfg.train_conv:
        raise ValueError("train_conv needs encoder_lr > 0")
    if frozen and cfg.masking:
        raise ValueError("masking needs a trained encoder (encoder_lr > 0): the frozen protocol trains the head "
                         "on the encoder's cached output, which no mask reaches")
    if not cfg.train_conv:  # frozen: the whole encoder stays fixed; fine-tune: its conv stack
        for p in (model.encoder if frozen else model.encoder.feature_encoder).parameters():
            p.requires_grad_(False)
    groups = [{"params": model.head.parameters(), "lr": cfg.lr}]
    if not frozen:
        groups.append({"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    steps = cfg.epochs * -(-len(features) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                    pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    mask_gen = torch.Generator().manual_seed(cfg.seed + 1)  # its own stream: masking leaves the data order as is
    model.train()
    if frozen:
        model.encoder.eval()  # no dropout in a frozen encoder
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(features), generator=gen)
        total, correct = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            logits = model.head(features[idx]) if frozen else _training_logits(model, features[idx], cfg, mask_gen)
            loss = torch.nn.functional.cross_entropy(logits, targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(-1) == targets[idx]).sum())
        if on_epoch:
            on_epoch(epoch, {"loss": total / len(features), "train_accuracy": correct / len(features),
                             "seconds": time.perf_counter() - start})
    return model.eval()


def _training_logits(model: KeywordSpotter, batch: Tensor, cfg: FinetuneConfig, generator: torch.Generator) -> Tensor:
    """Training logits of a trained encoder, with the config's time and channel masks (none at probability 0):
    `batch` is audio windows (train_conv) or the frozen conv stack's cached output."""
    conv = model.encoder.conv_features(normalize_window(batch)) if cfg.train_conv else batch
    b, t, _ = conv.shape
    time_mask = (span_mask(b, t, cfg.mask_time_prob, cfg.mask_time_length, generator, min_spans=0)
                 if cfg.mask_time_prob else None)
    channel_mask = (span_mask(b, model.encoder.cfg.hidden_size, cfg.mask_channel_prob, cfg.mask_channel_length,
                              generator, min_spans=0) if cfg.mask_channel_prob else None)
    return model.head(model.encoder.contextualize(conv, mask=time_mask, channel_mask=channel_mask).hidden)


@torch.no_grad()
def predict(model: KeywordSpotter, audio: np.ndarray, batch_size: int = 64,
            features: Tensor | None = None, states: Tensor | None = None) -> np.ndarray:
    """Class indices for every window. `features` (the cached conv output) skips the conv stack and `states`
    (the cached encoder output) the whole encoder: only for the fp32 model they were computed with."""
    model.eval()
    preds = []
    for i in range(0, len(audio), batch_size):
        if states is not None:
            logits = model.head(states[i:i + batch_size])
        elif features is not None:
            logits = model.head(model.encoder.contextualize(features[i:i + batch_size]).hidden)
        else:
            logits = model(torch.from_numpy(audio[i:i + batch_size]))
        preds.append(logits.argmax(-1).numpy())
    return np.concatenate(preds)


def accuracy_with_ci(correct: np.ndarray) -> tuple[float, float, float]:
    """Accuracy of a boolean array of trial outcomes and its 95% Wilson score interval."""
    return wilson_interval(int(np.sum(correct)), len(correct))


def wilson_interval(k: int, n: int) -> tuple[float, float, float]:
    """`k` correct of `n` trials: the accuracy and its 95% Wilson score interval (sound near 0 and 1, where
    the normal one is not; Wilson, JASA 1927)."""
    z = 1.959964
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, centre - half, centre + half


def score(model: KeywordSpotter, trials: KwsTrials, features: Tensor | None = None,
          states: Tensor | None = None) -> dict:
    pred = predict(model, trials.audio, features=features, states=states)
    acc, lo, hi = accuracy_with_ci(pred == trials.labels)
    return {"accuracy": acc, "ci95": [lo, hi], "trials": len(trials.labels)}
