"""Self-supervised pre-training of the wav2vec 2.0 encoder: plain wav2vec 2.0 or ccc-wav2vec 2.0, one loop.

The two objectives share everything but the loss (quamba_edge/train/ccc.py): the same data order, crops,
masks, negatives generator and optimiser for a given seed, so a comparison on the same budget measures
the objective. The ccc run does two forward passes per step (original and augmented view), so on the
same *time* budget it sees half as many steps; `--budget steps` compares per step instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from quamba_edge.checkpoints.wav2vec2 import save_wav2vec2
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.models.wav2vec2 import GumbelQuantizer, PretrainHeads, Wav2Vec2Config, Wav2Vec2Encoder
from quamba_edge.train.ccc import AugmentConfig, CCCConfig, augment, ccc_loss, wav2vec2_loss


@dataclass
class PretrainConfig:
    objective: str = "ccc"  # ccc | wav2vec2
    steps: int = 400
    max_minutes: float | None = None  # stop early when the wall clock runs out (the step budget still applies)
    batch_size: int = 8
    crop_s: float = 2.0
    lr: float = 5e-4
    warmup: float = 0.08  # fraction of steps with a linear ramp, then linear decay (fairseq's polynomial decay)
    mask_prob: float = 0.65  # fairseq: fraction of frames that start a span (before overlaps)
    mask_length: int = 10
    n_negatives: int = 50  # 100 in BASE; short crops have fewer masked frames to draw from
    temperature_start: float = 2.0
    temperature_end: float = 0.5
    seed: int = 0
    model: dict = field(default_factory=lambda: Wav2Vec2Config.tiny().to_dict())

    def to_dict(self) -> dict:
        return asdict(self)


def span_mask(batch: int, frames: int, mask_prob: float, length: int, generator: torch.Generator,
              min_spans: int = 2) -> torch.Tensor:
    """wav2vec 2.0's time mask, (batch, frames) bool: about mask_prob * frames / length span starts per
    utterance (fairseq's `compute_mask_indices`, rounded at random; its starts are distinct, ours are drawn with
    replacement), each masking `length` frames (spans may overlap), at least `min_spans` spans (pre-training:
    two, so negatives exist; train/kws.py's fine-tuning: none). Also the channel mask of fine-tuning, with
    channels in place of frames."""
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    span = min(length, max(frames - 1, 1))
    for b in range(batch):
        n = max(int(mask_prob * frames / span + float(torch.rand((), generator=generator))), min_spans)
        starts = torch.randint(0, frames - span + 1, (n,), generator=generator)
        for s in starts.tolist():
            mask[b, s:s + span] = True
    return mask


def crops(clips: list[np.ndarray], batch_size: int, crop: int, rng: np.random.Generator):
    """Endless batches of random windows of random clips, every window of a batch as long as the batch's
    shortest clip (at most `crop` samples), as fairseq crops: no padding, so every frame is real and
    every masked span lands on speech."""
    while True:
        picks = rng.integers(0, len(clips), batch_size)
        size = min(crop, *(len(clips[k]) for k in picks))
        out = np.zeros((batch_size, size), dtype=np.float32)
        for i, k in enumerate(picks):
            start = int(rng.integers(0, len(clips[k]) - size + 1))
            out[i] = clips[k][start:start + size]
        yield torch.from_numpy(out), torch.full((batch_size,), size, dtype=torch.int64)


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    warm = max(int(cfg.warmup * cfg.steps), 1)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * max(0.0, (cfg.steps - step) / max(cfg.steps - warm, 1))


class Pretrainer:
    """Encoder + quantizer + heads and the loss of one objective; `train` runs the optimiser steps."""

    def __init__(self, cfg: PretrainConfig, noise_bank: torch.Tensor | None = None):
        if cfg.objective not in ("ccc", "wav2vec2"):
            raise QuambaEdgeError(f"unknown objective {cfg.objective!r}. Fix: --objective ccc or wav2vec2.")
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.model_cfg = Wav2Vec2Config.from_dict(cfg.model)
        self.encoder = Wav2Vec2Encoder(self.model_cfg)
        self.quantizer = GumbelQuantizer.from_config(self.model_cfg)
        self.heads = PretrainHeads.from_config(self.model_cfg)
        params = [*self.encoder.parameters(), *self.quantizer.parameters(), *self.heads.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
        self.loss_cfg = CCCConfig(n_negatives=cfg.n_negatives)
        self.noise_bank = noise_bank
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)

    def _views(self, wave: torch.Tensor, mask: torch.Tensor):
        out = self.encoder(wave, None, mask)
        q = self.quantizer(out.features, mask & out.frame_mask)
        context, targets = self.heads(out.hidden, q.quantized)
        return out, q, context, targets

    def _batches(self, clips: list[np.ndarray], seed: int, mask_seed: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Endless (wave, lengths, mask) batches: random crops of `clips` (:func:`crops`) and their span masks."""
        cfg, mask_gen = self.cfg, torch.Generator().manual_seed(mask_seed)
        for wave, lengths in crops(clips, cfg.batch_size, int(cfg.crop_s * 16000), np.random.default_rng(seed)):
            frames = self.model_cfg.frames_for(wave.shape[1])
            yield wave, lengths, span_mask(cfg.batch_size, frames, cfg.mask_prob, cfg.mask_length, mask_gen)

    def loss(self, wave: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor):
        out, q, context, targets = self._views(wave, mask)
        mask = mask & out.frame_mask
        common = dict(generator=self.generator, cfg=self.loss_cfg, perplexity=q.prob_perplexity,
                      num_vars_total=self.quantizer.groups * self.quantizer.entries, features=out.feature_pen)
        if self.cfg.objective == "wav2vec2":
            return wav2vec2_loss(context, targets, mask, **common)
        aug_wave = augment(wave, self.generator, AugmentConfig(), noise_bank=self.noise_bank, lengths=lengths)
        _, _, aug_context, aug_targets = self._views(aug_wave, mask)
        return ccc_loss(context, aug_context, targets, aug_targets, mask, **common)

    def train(self, clips: list[np.ndarray], on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
        cfg = self.cfg
        batches = self._batches(clips, cfg.seed, cfg.seed + 2)
        for module in (self.encoder, self.quantizer, self.heads):
            module.train()
        ratio = cfg.temperature_end / cfg.temperature_start  # Gumbel temperature: geometric decay over the steps
        history, start = [], time.perf_counter()
        for step in range(cfg.steps):
            if cfg.max_minutes is not None and time.perf_counter() - start > 60 * cfg.max_minutes:
                break
            self.quantizer.temperature = cfg.temperature_start * ratio ** (step / max(cfg.steps - 1, 1))
            for group in self.optimizer.param_groups:
                group["lr"] = _lr_at(step, cfg)
            total, parts = self.loss(*next(batches))
            if not math.isfinite(float(total.detach())):
                raise QuambaEdgeError(f"pre-training diverged at step {step} (loss {float(total.detach())}). "
                                      "Fix: lower --lr or check the audio for NaNs.")
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), 10.0)
            self.optimizer.step()
            row = {"step": step, "seconds": time.perf_counter() - start, "lr": _lr_at(step, cfg), **parts}
            history.append(row)
            if on_step:
                on_step(step, row)
        return history

    @torch.no_grad()
    def evaluate(self, clips: list[np.ndarray], batches: int = 8, seed: int = 1234) -> dict:
        """Plain contrastive loss and accuracy on held-out clips, with a fixed mask and negatives: the same
        yardstick for both objectives (the ccc terms are not part of it)."""
        for module in (self.encoder, self.quantizer, self.heads):
            module.eval()
        gen, it = torch.Generator().manual_seed(seed), self._batches(clips, seed, seed + 1)
        losses, accs = [], []
        for _ in range(batches):
            wave, _, mask = next(it)
            out, _q, context, targets = self._views(wave, mask)
            _, parts = wav2vec2_loss(context, targets, mask & out.frame_mask, generator=gen, cfg=self.loss_cfg)
            losses.append(parts["contrastive"])
            accs.append(parts["accuracy"])
        return {"val_contrastive": float(np.mean(losses)), "val_accuracy": float(np.mean(accs))}

    def save(self, out_dir: Path) -> None:
        save_wav2vec2(self.encoder.eval(), self.model_cfg, out_dir, self.quantizer.eval(), self.heads.eval())


@torch.no_grad()
def frame_similarity(encoder: Wav2Vec2Encoder, clips: list[np.ndarray], n: int = 16, seconds: float = 1.0) -> float:
    """Mean cosine similarity between the encoder's output frames (all pairs within each clip, unmasked
    input): near 1 means the encoder collapsed to one vector whatever it hears, the failure mode that
    leaves the contrastive loss at ln(1 + negatives)."""
    encoder.eval()
    size = int(seconds * 16000)
    sims = []
    for clip in clips[:n]:
        unit = F.normalize(encoder(torch.from_numpy(clip[:size][None, :].copy())).hidden[0], dim=-1)
        t = unit.shape[0]
        sims.append(float(((unit @ unit.T).sum() - t) / (t * (t - 1))))
    return float(np.mean(sims))
