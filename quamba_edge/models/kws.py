"""Keyword spotting on a wav2vec 2.0 encoder: frames -> one transformer layer -> pooling -> classifier.

Every pooling method (AdaPool, and the Avg/Max/Cls baselines from models/pooling.py) sits behind the
same extra transformer layer, so they differ only in how frames become one vector; Cls needs that layer
anyway (its token must attend to the frames before it is read). The input window is normalised to zero
mean and unit variance, as Hugging Face's wav2vec2 feature extractor does, so a recording's level (the
real clips are quieter than the TTS ones) is not a feature.

Checkpoints: `save_kws` and `load_kws` in quamba_edge/checkpoints/wav2vec2.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.models.pooling import EncoderLayer, make_pool
from quamba_edge.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder


@dataclass
class KwsConfig:
    labels: tuple[str, ...]
    pool: str = "adapool"
    n_heads: int = 4
    ffn_mult: int = 2
    sample_rate: int = 16000
    window_s: float = 1.5  # the clip length it was trained on; shorter clips are padded to it
    encoder: dict | None = None  # the encoder's Wav2Vec2Config, filled in by KeywordSpotter
    trained_on: dict | None = None  # e.g. {"dataset": "fsdd", "speakers": [...]}: what eval must not score it on

    def to_dict(self) -> dict:
        return {k: v for k, v in {**asdict(self), "labels": list(self.labels)}.items()
                if v is not None or k != "trained_on"}

    @classmethod
    def from_dict(cls, values: dict) -> KwsConfig:
        kept = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**kept | {"labels": tuple(values["labels"])})


def normalize_window(waveform: Tensor, eps: float = 1e-7) -> Tensor:
    mean = waveform.mean(-1, keepdim=True)
    var = waveform.var(-1, keepdim=True, unbiased=False)
    return (waveform - mean) / torch.sqrt(var + eps)


class KwsHead(nn.Module):
    """Encoder frames (b, t, d) -> logits (b, classes)."""

    def __init__(self, d: int, cfg: KwsConfig):
        super().__init__()
        self.cfg = cfg
        self.layer = EncoderLayer(d, cfg.n_heads, cfg.ffn_mult * d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pool == "cls" else None
        self.pool = make_pool(cfg.pool, d, cfg.n_heads)
        self.norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, len(cfg.labels))

    def forward(self, frames: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        if self.cls is not None:
            frames = torch.cat([self.cls.expand(frames.shape[0], 1, -1), frames], 1)
            if frame_mask is not None:
                frame_mask = torch.cat([frame_mask.new_ones(frame_mask.shape[0], 1), frame_mask], 1)
        h = self.layer(frames, frame_mask)
        return self.classifier(self.norm(self.pool(h, frame_mask)))


class KeywordSpotter(nn.Module):

    def __init__(self, encoder: Wav2Vec2Encoder, cfg: KwsConfig):
        super().__init__()
        cfg.encoder = encoder.cfg.to_dict()
        self.encoder = encoder
        self.head = KwsHead(encoder.cfg.hidden_size, cfg)
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: KwsConfig) -> KeywordSpotter:
        """An unfilled model of this shape: what saved weights (fp or int8 artifacts) load into."""
        if cfg.encoder is None:
            raise QuambaEdgeError("this KWS config has no encoder config. Fix: save the model again.")
        return cls(Wav2Vec2Encoder(Wav2Vec2Config.from_dict(cfg.encoder)), cfg)

    def forward(self, waveform: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        out = self.encoder(normalize_window(waveform), attention_mask)
        return self.head(out.hidden, out.frame_mask if attention_mask is not None else None)
