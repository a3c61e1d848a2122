"""wav2vec 2.0 encoder (Baevski et al., 2020): a readable fp reference in plain PyTorch, any size.

Why a reimplementation instead of `transformers.Wav2Vec2Model`: quantization passes need to see and
replace every matmul and norm by name, the deployed encoder must not drag the pre-training quantizer
along, and we load fairseq checkpoints as well as Hugging Face ones.

Data flow (b batch, s samples, t frames, c conv channels, d hidden):
waveform (b, s) -> conv feature encoder (b, c, t) -> LayerNorm(c) = `features` (what the pre-training
quantizer discretises) -> Linear(c -> d) (none when `feature_proj=False`: fairseq builds no projection
when c == d) -> optional time mask (masked frames become `mask_emb`) -> + positional conv -> transformer
layers -> `hidden` (b, t, d).

Two layer orders exist: BASE is post-LN (`layer_norm_first=False`: LayerNorm after every residual add,
plus one after the positional conv); LARGE-lv60 style is pre-LN (LayerNorm before attention and FFN,
one final LayerNorm). Both, and both conv-norm modes, load from Hugging Face and fairseq checkpoints.

The Gumbel quantizer and the contrastive projections are separate modules (`GumbelQuantizer`,
`PretrainHeads`): pre-training objectives use them, the deployed encoder never holds them.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from quamba_edge.errors import QuambaEdgeError

FAMILY = "wav2vec2"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
HEADS_FILE = "pretrain_heads.safetensors"


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Wav2Vec2Config:
    """Shape and training hyper-parameters. Defaults are wav2vec 2.0 BASE (fairseq `wav2vec_small`)."""

    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # "group": GroupNorm on conv layer 0 only; "layer": LayerNorm on every conv
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    layer_norm_first: bool = False  # False: post-LN (BASE); True: pre-LN (LARGE-lv60, XLS-R)
    layer_norm_eps: float = 1e-5  # feature LayerNorm and transformer LayerNorms; the conv norms use 1e-5
    feature_proj: bool = True  # False: no Linear(c -> d) after the feature LayerNorm (needs c == d)
    num_codevector_groups: int = 2
    num_codevectors_per_group: int = 320
    codevector_dim: int = 256
    final_dim: int = 256
    # Training only (eval ignores them); BASE pre-training values from the paper's fairseq recipe.
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.1  # fairseq dropout_input: after the feature projection, before masking
    feat_quantizer_dropout: float = 0.1  # fairseq dropout_features: on the quantizer input
    layerdrop: float = 0.05
    feature_grad_mult: float = 0.1  # scales the conv encoder's gradient; 0 freezes it

    BASE: ClassVar[Wav2Vec2Config]
    LARGE: ClassVar[Wav2Vec2Config]

    def __post_init__(self) -> None:
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = []
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) > 0):
            problems.append("conv_dim, conv_kernel and conv_stride must be non-empty and of equal length")
        if self.feat_extract_norm not in ("group", "layer"):
            problems.append(f"feat_extract_norm must be 'group' or 'layer', not {self.feat_extract_norm!r}")
        if self.num_heads <= 0 or self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if not self.feature_proj and self.conv_dim and self.conv_dim[-1] != self.hidden_size:
            problems.append(f"feature_proj=False needs conv_dim[-1] == hidden_size, not {self.conv_dim[-1]} "
                            f"and {self.hidden_size}")
        if self.pos_conv_groups <= 0 or self.hidden_size % self.pos_conv_groups:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by "
                            f"pos_conv_groups {self.pos_conv_groups}")
        if self.num_codevector_groups <= 0 or self.codevector_dim % self.num_codevector_groups:
            problems.append(f"codevector_dim {self.codevector_dim} is not divisible by "
                            f"num_codevector_groups {self.num_codevector_groups}")
        if problems:
            raise QuambaEdgeError("invalid wav2vec2 config: " + "; ".join(problems) + ".")

    @classmethod
    def base(cls) -> Wav2Vec2Config:
        return cls()

    @classmethod
    def tiny(cls) -> Wav2Vec2Config:
        """A ~1M-parameter model that pre-trains on a laptop CPU.

        Why these numbers: the conv stack keeps BASE's total stride of 320 samples (50 Hz frames at
        16 kHz) and nearly its receptive field (425 vs 400 samples), so frame counts, masking spans and
        data pipelines are interchangeable with BASE; 4 conv layers of 128 channels instead of 7 of 512
        cut the conv cost (which dominates on CPU) by ~30x. The positional conv spans 32 frames (0.64 s)
        instead of 128 because tiny runs train on short crops. It keeps BASE's group-norm conv and
        post-LN transformer so the activation statistics that int8 quantization cares about (the
        LayerNorm-after-residual outliers) arise the same way. A 2 x 64 codebook suits small datasets.
        """
        return cls(
            conv_dim=(128,) * 4, conv_kernel=(10, 8, 8, 4), conv_stride=(5, 4, 4, 4),
            hidden_size=128, num_layers=4, num_heads=4, ffn_dim=256, pos_conv_kernel=32, pos_conv_groups=8,
            num_codevector_groups=2, num_codevectors_per_group=64, codevector_dim=64, final_dim=64,
        )

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame: also the shortest waveform that yields a frame."""
        field, jump = 1, 1
        for k, s in zip(self.conv_kernel, self.conv_stride):
            field += (k - 1) * jump
            jump *= s
        return field

    @property
    def total_stride(self) -> int:
        out = 1
        for s in self.conv_stride:
            out *= s
        return out

    def frames_for(self, samples: int) -> int:
        """Frames the conv stack makes from `samples` samples (0 when too short for one frame)."""
        n = int(samples)
        for k, s in zip(self.conv_kernel, self.conv_stride):
            if n < k:
                return 0
            n = (n - k) // s + 1
        return n

    def frame_lengths(self, samples: Tensor) -> Tensor:
        """`frames_for` on a tensor of per-example sample counts (padded batches)."""
        n = samples.long()
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n.clamp_min(0)

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, values: dict) -> Wav2Vec2Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise QuambaEdgeError(f"unknown wav2vec2 config keys {unknown}; the file was written by a newer "
                                  "or different tool. Fix: upgrade quamba-edge or remove those keys.")
        return cls(**values)


Wav2Vec2Config.BASE = Wav2Vec2Config()
Wav2Vec2Config.LARGE = Wav2Vec2Config(  # wav2vec2-large-lv60: layer-norm conv with bias, pre-LN transformer
    conv_bias=True, feat_extract_norm="layer", hidden_size=1024, num_layers=24, num_heads=16, ffn_dim=4096,
    layer_norm_first=True, codevector_dim=768, final_dim=768,
)


# ---------------------------------------------------------------------------------------------- encoder


class ConvLayer(nn.Module):
    """Conv1d -> optional norm -> GELU. Norms run in fp32 (as fairseq's Fp32GroupNorm/Fp32LayerNorm):
    the first layer sees raw audio, whose per-channel variance can underflow in fp16."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        if norm == "group":  # one group per channel: normalises each channel over time
            self.norm = nn.GroupNorm(c_out, c_out, affine=True)
        elif norm == "layer":  # normalises each frame over channels
            self.norm = nn.LayerNorm(c_out, elementwise_affine=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm_kind == "group":
            x = F.group_norm(x.float(), self.norm.num_groups, self.norm.weight.float(), self.norm.bias.float(),
                             self.norm.eps).type_as(x)
        elif self.norm_kind == "layer":
            x = F.layer_norm(x.transpose(1, 2).float(), self.norm.normalized_shape, self.norm.weight.float(),
                             self.norm.bias.float(), self.norm.eps).type_as(x).transpose(1, 2)
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        layers = []
        c_in = 1
        for i, (c, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            norm = "layer" if cfg.feat_extract_norm == "layer" else ("group" if i == 0 else None)
            layers.append(ConvLayer(c_in, c, k, s, cfg.conv_bias, norm))
            c_in = c
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, waveform: Tensor) -> Tensor:
        x = waveform.unsqueeze(1)
        for layer in self.conv_layers:
            x = layer(x)
        return x  # (b, c, t)


class PositionalConv(nn.Module):
    """Grouped conv over time whose weight is weight-normalised along the kernel axis (dim=2).

    g and v are kept as separate parameters, as in fairseq and HF, so pre-training can continue with
    the same parametrisation; `weight` gives the effective kernel for export and quantization."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.kernel, self.groups = kernel, groups
        self.weight_v = nn.Parameter(torch.empty(dim, dim // groups, kernel))
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(dim))

    @property
    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv1d(x.transpose(1, 2), self.weight, self.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:  # symmetric padding of an even kernel makes one frame too many
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """key_mask: bool (b, 1, 1, t), True where a key frame is real (padded frames get no attention)."""
        b, t, d = x.shape

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), attn_mask=key_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        d = cfg.hidden_size
        self.pre_ln = cfg.layer_norm_first
        self.dropout, self.activation_dropout = cfg.dropout, cfg.activation_dropout
        self.attn = SelfAttention(d, cfg.num_heads, cfg.attention_dropout)
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(d, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, d)
        self.final_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def _ffn(self, x: Tensor) -> Tensor:
        x = F.dropout(F.gelu(self.fc1(x)), self.activation_dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        if self.pre_ln:
            x = x + F.dropout(self.attn(self.attn_norm(x), key_mask), self.dropout, self.training)
            return x + self._ffn(self.final_norm(x))
        x = self.attn_norm(x + F.dropout(self.attn(x, key_mask), self.dropout, self.training))
        return self.final_norm(x + self._ffn(x))


class Wav2Vec2Output(NamedTuple):
    hidden: Tensor  # (b, t, d) last hidden state
    features: Tensor  # (b, t, c) conv features after the feature LayerNorm, unmasked: the quantizer's input
    frame_mask: Tensor  # (b, t) bool, True for frames computed from real (not padded) samples
    feature_pen: Tensor  # () mean square of the raw conv output: fairseq's feature penalty term


class Wav2Vec2Encoder(nn.Module):
    """The part of wav2vec 2.0 that is deployed: waveform in, contextual frame vectors out."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.cfg = cfg
        c, d = cfg.conv_dim[-1], cfg.hidden_size
        self.feature_encoder = FeatureEncoder(cfg)
        self.feature_norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.feature_proj = nn.Linear(c, d) if cfg.feature_proj else nn.Identity()
        self.mask_emb = nn.Parameter(torch.empty(d))
        self.pos_conv = PositionalConv(d, cfg.pos_conv_kernel, cfg.pos_conv_groups)
        self.encoder_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """fairseq's initialisation, so pre-training from scratch behaves like the reference recipe:
        Kaiming for the conv encoder, N(0, 0.02) for transformer linears, a variance-preserving
        positional conv, and a uniform mask embedding."""
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        d, k = self.cfg.hidden_size, self.cfg.pos_conv_kernel
        nn.init.normal_(self.pos_conv.weight_v, std=(4.0 * (1.0 - self.cfg.dropout) / (k * d)) ** 0.5)
        self.pos_conv.weight_g.copy_(torch.linalg.vector_norm(self.pos_conv.weight_v, dim=(0, 1), keepdim=True))
        nn.init.zeros_(self.pos_conv.bias)
        nn.init.uniform_(self.mask_emb)

    def frames_for(self, samples: int) -> int:
        return self.cfg.frames_for(samples)

    def frame_mask(self, attention_mask: Tensor, frames: int) -> Tensor:
        """Sample-level padding mask (b, s) -> frame-level validity (b, frames)."""
        lengths = self.cfg.frame_lengths(attention_mask.long().sum(-1))
        return torch.arange(frames, device=attention_mask.device)[None, :] < lengths[:, None]

    def conv_features(self, waveform: Tensor) -> Tensor:
        """waveform (b, s) -> raw conv output (b, t, c), before the feature LayerNorm.

        Split from `contextualize` so a frozen conv stack (fine-tuning, calibration) runs once per clip
        and its output can be cached."""
        if waveform.dim() != 2:
            raise ValueError(f"waveform must be (batch, samples), got shape {tuple(waveform.shape)}")
        need = self.cfg.receptive_field
        if waveform.shape[1] < need:
            raise QuambaEdgeError(f"waveform of {waveform.shape[1]} samples is shorter than one frame "
                                  f"({need} samples). Fix: pad or skip clips this short.")
        return self.feature_encoder(waveform).transpose(1, 2)

    def contextualize(self, conv: Tensor, frame_mask: Tensor | None = None,
                      mask: Tensor | None = None) -> Wav2Vec2Output:
        """Everything after the conv stack: conv (b, t, c) from `conv_features`; frame_mask (b, t) bool,
        True on real frames of a padded batch (None: all real); mask (b, t) bool, frames to replace by
        `mask_emb` (pre-training's time masking)."""
        feature_pen = conv.float().pow(2).mean()
        m = self.cfg.feature_grad_mult
        if self.training and m != 1.0:  # same value, gradient into the conv stack scaled by m
            conv = conv.detach() + (conv - conv.detach()) * m
        b, t, _ = conv.shape
        features = self.feature_norm(conv)
        h = F.dropout(self.feature_proj(features), self.cfg.feat_proj_dropout, self.training)
        if mask is not None:
            if mask.shape != (b, t):
                raise ValueError(f"mask must be (batch, frames) = {(b, t)}, got {tuple(mask.shape)}")
            h = torch.where(mask.bool().unsqueeze(-1), self.mask_emb.to(h.dtype), h)
        key_mask = None
        if frame_mask is not None:
            if frame_mask.shape != (b, t):
                raise ValueError(f"frame_mask must be (batch, frames) = {(b, t)}, got {tuple(frame_mask.shape)}")
            frame_mask = frame_mask.bool()
            h = h.masked_fill(~frame_mask.unsqueeze(-1), 0.0)  # padding must not leak through the pos conv
            key_mask = frame_mask[:, None, None, :]
        else:
            frame_mask = torch.ones(b, t, dtype=torch.bool, device=h.device)
        h = h + self.pos_conv(h)
        if not self.cfg.layer_norm_first:
            h = self.encoder_norm(h)
        h = F.dropout(h, self.cfg.dropout, self.training)
        for layer in self.layers:
            if self.training and self.cfg.layerdrop > 0 and torch.rand(()) < self.cfg.layerdrop:
                continue
            h = layer(h, key_mask)
        if self.cfg.layer_norm_first:
            h = self.encoder_norm(h)
        return Wav2Vec2Output(hidden=h, features=features, frame_mask=frame_mask, feature_pen=feature_pen)

    def forward(self, waveform: Tensor, attention_mask: Tensor | None = None,
                mask: Tensor | None = None) -> Wav2Vec2Output:
        """waveform (b, s) float; attention_mask (b, s), nonzero on real samples of a padded batch;
        mask (b, t) bool, frames to replace by `mask_emb` (pre-training's time masking)."""
        conv = self.conv_features(waveform)
        frame_mask = None
        if attention_mask is not None:
            frame_mask = self.frame_mask(attention_mask, conv.shape[1])
            if not frame_mask[:, 0].all():
                raise QuambaEdgeError(f"a padded example has fewer than {self.cfg.receptive_field} real samples, "
                                      "so no frames. Fix: drop or pad clips this short before batching.")
        return self.contextualize(conv, frame_mask, mask)


# ------------------------------------------------------------------------------------ pre-training heads


class QuantizerOutput(NamedTuple):
    quantized: Tensor  # (b, t, codevector_dim)
    indices: Tensor  # (b, t, groups) long: chosen entry per group
    prob_perplexity: Tensor  # () perplexity of the mean softmax distribution, summed over groups
    code_perplexity: Tensor  # () perplexity of the argmax code usage, summed over groups (monitoring)
    diversity_loss: Tensor  # () (G*V - prob_perplexity) / (G*V): 0 when every entry is used equally


def _perplexity(probs: Tensor, valid: Tensor | None) -> Tensor:
    """probs (n, G, V) -> sum over groups of exp(entropy of the mean distribution over valid rows)."""
    if valid is not None:
        probs = probs[valid]
    marginal = probs.mean(dim=0)
    return torch.exp(-torch.xlogy(marginal, marginal).sum(-1)).sum()


class GumbelQuantizer(nn.Module):
    """Product quantizer with G groups of V learned entries, chosen by Gumbel-softmax.

    Training samples a hard one-hot with a straight-through gradient (temperature annealed by the
    caller via `temperature`); eval takes the argmax, so targets are deterministic."""

    def __init__(self, in_dim: int, groups: int = 2, entries: int = 320, codevector_dim: int = 256,
                 temperature: float = 2.0):
        super().__init__()
        if codevector_dim % groups:
            raise QuambaEdgeError(f"codevector_dim {codevector_dim} is not divisible by {groups} groups")
        self.groups, self.entries, self.temperature = groups, entries, temperature
        # (1, G*V, dim/G): the layout of fairseq's `quantizer.vars` and HF's `quantizer.codevectors`
        self.codevectors = nn.Parameter(torch.empty(1, groups * entries, codevector_dim // groups).uniform_())
        self.weight_proj = nn.Linear(in_dim, groups * entries)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)

    @classmethod
    def from_config(cls, cfg: Wav2Vec2Config) -> GumbelQuantizer:
        return cls(cfg.conv_dim[-1], cfg.num_codevector_groups, cfg.num_codevectors_per_group, cfg.codevector_dim)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """features (b, t, in_dim); mask (b, t) bool: frames that count for the perplexities (e.g. the
        masked frames whose targets are scored); None counts all."""
        b, t, _ = features.shape
        g, v = self.groups, self.entries
        logits = self.weight_proj(features).view(b * t, g, v).float()
        argmax = logits.argmax(-1)
        hard = F.one_hot(argmax, v).to(logits.dtype)
        if self.training:
            onehot = F.gumbel_softmax(logits, tau=self.temperature, hard=True, dim=-1)
            indices = onehot.argmax(-1)
        else:
            onehot, indices = hard, argmax
        valid = mask.reshape(-1).bool() if mask is not None else None
        prob_ppl = _perplexity(logits.softmax(-1), valid)
        code_ppl = _perplexity(hard, valid)
        book = self.codevectors.view(g, v, -1)
        quantized = torch.einsum("ngv,gvk->ngk", onehot.to(book.dtype), book).reshape(b, t, -1)
        return QuantizerOutput(quantized, indices.view(b, t, g), prob_ppl, code_ppl, (g * v - prob_ppl) / (g * v))


class PretrainHeads(nn.Module):
    """Project the context vectors (final_proj) and the quantized targets (project_q) into the shared
    space where the contrastive loss compares them."""

    def __init__(self, hidden_size: int, codevector_dim: int, final_dim: int):
        super().__init__()
        self.project_q = nn.Linear(codevector_dim, final_dim)
        self.final_proj = nn.Linear(hidden_size, final_dim)

    @classmethod
    def from_config(cls, cfg: Wav2Vec2Config) -> PretrainHeads:
        return cls(cfg.hidden_size, cfg.codevector_dim, cfg.final_dim)

    def forward(self, hidden: Tensor, quantized: Tensor) -> tuple[Tensor, Tensor]:
        """-> (predictions from context, targets from codevectors), both (b, t, final_dim)."""
        return self.final_proj(hidden), self.project_q(quantized)


# ------------------------------------------------------------------------------------ checkpoint formats

_LAYER = r"encoder\.layers\.(\d+)\."
_POS_G = "pos_conv.weight_g"
_POS_V = "pos_conv.weight_v"
_POS_W = "pos_conv.weight"  # an effective (already normalised) kernel; converted to g, v on load

# (pattern, replacement) in our names; `heads.` / `quantizer.` targets belong to the pre-training heads.
_HF_RULES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_encoder.conv_layers.\1.conv."),
    (r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_encoder.conv_layers.\1.norm."),
    (r"feature_projection\.layer_norm\.", "feature_norm."),
    (r"feature_projection\.projection\.", "feature_proj."),
    (r"masked_spec_embed$", "mask_emb"),
    (r"encoder\.pos_conv_embed\.conv\.(weight_g|parametrizations\.weight\.original0)$", _POS_G),
    (r"encoder\.pos_conv_embed\.conv\.(weight_v|parametrizations\.weight\.original1)$", _POS_V),
    (r"encoder\.pos_conv_embed\.conv\.weight$", _POS_W),
    (r"encoder\.pos_conv_embed\.conv\.bias$", "pos_conv.bias"),
    (r"encoder\.layer_norm\.", "encoder_norm."),
    (_LAYER + r"attention\.(q|k|v|out)_proj\.", r"layers.\1.attn.\2_proj."),
    (_LAYER + r"layer_norm\.", r"layers.\1.attn_norm."),
    (_LAYER + r"feed_forward\.intermediate_dense\.", r"layers.\1.fc1."),
    (_LAYER + r"feed_forward\.output_dense\.", r"layers.\1.fc2."),
    (_LAYER + r"final_layer_norm\.", r"layers.\1.final_norm."),
    (r"quantizer\.codevectors$", "quantizer.codevectors"),
    (r"quantizer\.weight_proj\.", "quantizer.weight_proj."),
    (r"project_q\.", "heads.project_q."),
    (r"project_hid\.", "heads.final_proj."),
]
# Task heads of Wav2Vec2ForCTC / ForSequenceClassification etc.: not part of the encoder.
_HF_IGNORED = (r"lm_head\.", r"classifier\.", r"projector\.", r"layer_weights$")

_FAIRSEQ_RULES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_encoder.conv_layers.\1.conv."),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.(1\.)?", r"feature_encoder.conv_layers.\1.norm."),
    (r"layer_norm\.", "feature_norm."),
    (r"post_extract_proj\.", "feature_proj."),
    (r"mask_emb$", "mask_emb"),
    (r"encoder\.pos_conv\.0\.(weight_g|parametrizations\.weight\.original0)$", _POS_G),
    (r"encoder\.pos_conv\.0\.(weight_v|parametrizations\.weight\.original1)$", _POS_V),
    (r"encoder\.pos_conv\.0\.weight$", _POS_W),
    (r"encoder\.pos_conv\.0\.bias$", "pos_conv.bias"),
    (r"encoder\.layer_norm\.", "encoder_norm."),
    (_LAYER + r"self_attn\.(q|k|v|out)_proj\.", r"layers.\1.attn.\2_proj."),
    (_LAYER + r"self_attn_layer_norm\.", r"layers.\1.attn_norm."),
    (_LAYER + r"fc1\.", r"layers.\1.fc1."),
    (_LAYER + r"fc2\.", r"layers.\1.fc2."),
    (_LAYER + r"final_layer_norm\.", r"layers.\1.final_norm."),
    (r"quantizer\.vars$", "quantizer.codevectors"),
    (r"quantizer\.weight_proj\.", "quantizer.weight_proj."),
    (r"project_q\.", "heads.project_q."),
    (r"final_proj\.", "heads.final_proj."),
]
# Fine-tuning output layers and the fairseq version marker; the encoder does not use them.
_FAIRSEQ_IGNORED = (r"w2v_encoder\.proj\.", r"encoder\.version$", r"target_glu\.")


@dataclass
class _Checkpoint:
    cfg: Wav2Vec2Config
    encoder: dict[str, Tensor]  # our encoder names
    heads: dict[str, Tensor]  # "quantizer.*" and "heads.*" (pre-training checkpoints only)
    where: str  # for error messages
    heads_refused: tuple[str, ...] = ()  # settings whose pre-training heads we do not implement


def _rename(state: dict[str, Tensor], rules: list, ignored: tuple, where: str) -> tuple[dict, dict]:
    compiled = [(re.compile(p), r) for p, r in rules]
    skip = [re.compile(p) for p in ignored]
    encoder: dict[str, Tensor] = {}
    heads: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        for pattern, repl in compiled:
            if pattern.match(key):
                new = pattern.sub(repl, key, count=1)
                (heads if new.startswith(("quantizer.", "heads.")) else encoder)[new] = value
                break
        else:
            if not any(p.match(key) for p in skip):
                unknown.append(key)
    if unknown:
        raise QuambaEdgeError(
            f"{where} holds weights that are not part of a wav2vec2 model ({_few(unknown)}); it may be a "
            "different architecture (HuBERT, WavLM, data2vec, conformer) or a newer layout. "
            "Fix: pass a plain wav2vec2 checkpoint."
        )
    _effective_to_g_v(encoder)
    return encoder, heads


def _effective_to_g_v(state: dict[str, Tensor]) -> None:
    """A plain positional-conv kernel w is the weight-normalised kernel with v = w, g = ||w||."""
    if _POS_W in state and _POS_G not in state and _POS_V not in state:
        w = state.pop(_POS_W)
        state[_POS_V] = w
        state[_POS_G] = torch.linalg.vector_norm(w.float(), dim=(0, 1), keepdim=True).to(w.dtype)
    else:
        state.pop(_POS_W, None)


def _few(keys: list[str]) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


# --- what each checkpoint setting does here
#
# Every setting of transformers' Wav2Vec2Config (configuration_wav2vec2.py) and of fairseq's wav2vec 2.0
# model config (fairseq/models/wav2vec/wav2vec2.py: the Wav2Vec2Config dataclass, or the older `args`),
# and what the loaders do with it, decided on how each library's encoder forward uses it. "honoured": the
# value shapes our encoder (or the pre-training heads) the same way; "refused": a value other than the one
# named makes the loader raise a QuambaEdgeError naming the setting and its value; "ignored": no effect on
# the encoder's inference output (training-time dropout/masking/losses, task heads, metadata).
# tests/test_wav2vec2_config.py checks this table against the installed transformers and each refusal.

HF_CONFIG_FIELDS: dict[str, str] = {
    "hidden_size": "honoured", "num_hidden_layers": "honoured", "num_attention_heads": "honoured",
    "intermediate_size": "honoured",
    "hidden_act": "honoured if 'gelu' or 'gelu_python' (both the exact erf GELU), else refused",
    "feat_extract_activation": "honoured if 'gelu' or 'gelu_python' (every conv layer and the positional conv), "
                               "else refused",
    "layer_norm_eps": "honoured (feature LayerNorm and every transformer LayerNorm; the conv norms use a fixed "
                      "1e-5 in transformers, as here)",
    "feat_extract_norm": "honoured ('group' or 'layer'), else refused",
    "conv_dim": "honoured", "conv_stride": "honoured", "conv_kernel": "honoured", "conv_bias": "honoured",
    "num_conv_pos_embeddings": "honoured (an even kernel drops the last output frame, Wav2Vec2SamePadLayer)",
    "num_conv_pos_embedding_groups": "honoured",
    "do_stable_layer_norm": "honoured (pre-LN layers + final LayerNorm; independent of feat_extract_norm)",
    "num_feat_extract_layers": "ignored: transformers derives it from len(conv_dim)",
    "add_adapter": "refused if true (an adapter after the encoder changes the output)",
    "adapter_attn_dim": "refused if set (attention adapters in every layer)",
    "adapter_kernel_size": "ignored: only read by the add_adapter adapter (refused)",
    "adapter_stride": "ignored: only read by the add_adapter adapter (refused)",
    "num_adapter_layers": "ignored: only read by the add_adapter adapter (refused)",
    "output_hidden_size": "ignored: only read by the add_adapter adapter (refused) and the CTC head",
    "num_codevectors_per_group": "honoured (pre-training quantizer shape)",
    "num_codevector_groups": "honoured (pre-training quantizer shape)",
    "codevector_dim": "honoured (pre-training quantizer shape)",
    "proj_codevector_dim": "honoured (pre-training heads' shape)",
    "hidden_dropout": "ignored: training only (kept as dropout)",
    "activation_dropout": "ignored: training only (kept)", "attention_dropout": "ignored: training only (kept)",
    "feat_proj_dropout": "ignored: training only (kept)", "feat_quantizer_dropout": "ignored: training only (kept)",
    "layerdrop": "ignored: training only (kept)", "final_dropout": "ignored: training only, CTC head",
    "apply_spec_augment": "ignored: training-time masking", "mask_time_prob": "ignored: training-time masking",
    "mask_time_length": "ignored: training-time masking", "mask_time_min_masks": "ignored: training-time masking",
    "mask_feature_prob": "ignored: training-time masking", "mask_feature_length": "ignored: training-time masking",
    "mask_feature_min_masks": "ignored: training-time masking",
    "contrastive_logits_temperature": "ignored: pre-training loss", "num_negatives": "ignored: pre-training loss",
    "diversity_loss_weight": "ignored: pre-training loss", "initializer_range": "ignored: initialisation only",
    "vocab_size": "ignored: CTC head", "ctc_loss_reduction": "ignored: CTC loss",
    "ctc_zero_infinity": "ignored: CTC loss", "pad_token_id": "ignored: tokenizer",
    "bos_token_id": "ignored: tokenizer", "eos_token_id": "ignored: tokenizer",
    "use_weighted_layer_sum": "ignored: classification heads only (their `layer_weights`)",
    "classifier_proj_size": "ignored: classification head", "tdnn_dim": "ignored: x-vector head",
    "tdnn_kernel": "ignored: x-vector head", "tdnn_dilation": "ignored: x-vector head",
    "xvector_output_dim": "ignored: x-vector head",
    "(PreTrainedConfig keys)": "ignored: metadata (architectures, dtype, ...); the attention implementation "
                               "(eager/sdpa) does not change the math",
}

FAIRSEQ_CONFIG_FIELDS: dict[str, str] = {
    "_name / arch": "refused unless 'wav2vec2' (fine-tuned wav2vec_ctc: the nested w2v_args model is read)",
    "extractor_mode": "honoured ('default': GroupNorm on conv 0; 'layer_norm': LayerNorm on every conv), "
                      "else refused",
    "conv_feature_layers": "honoured", "conv_bias": "honoured",
    "encoder_layers": "honoured", "encoder_embed_dim": "honoured (equal to the last conv dim: no "
                                                       "post_extract_proj, feature_proj=False)",
    "encoder_ffn_embed_dim": "honoured", "encoder_attention_heads": "honoured",
    "activation_fn": "honoured if 'gelu' (fairseq's erf GELU), else refused; the conv and positional-conv "
                     "activations are a fixed nn.GELU",
    "layer_type": "honoured if 'transformer', else refused (conformer, trf_adp); a fine-tuning config's value "
                  "overrides the pre-training one, as in fairseq",
    "layer_norm_first": "honoured",
    "(layer norm eps)": "honoured: not a setting; fairseq's LayerNorm, Fp32GroupNorm and Fp32LayerNorm use 1e-5",
    "conv_pos": "honoured (SamePad: an even kernel drops the last output frame)", "conv_pos_groups": "honoured",
    "pos_conv_depth": "refused unless 1 (a stack of plain convs with LayerNorms)",
    "conv_pos_batch_norm": "refused if true (read with hasattr by TransformerEncoder; HuBERT configs carry it)",
    "quantize_input": "refused if true (Gumbel-quantized encoder input + project_inp)",
    "same_quantizer": "ignored: only with quantize_input (refused)",
    "crop_seq_to_multiple": "refused unless 1 (drops trailing frames before the transformer)",
    "required_seq_len_multiple": "ignored: pads with frames that attention masks out and crops them again, so "
                                 "the real frames' output is unchanged",
    "dropout": "ignored: training only (kept)", "attention_dropout": "ignored: training only (kept)",
    "activation_dropout": "ignored: training only (kept)", "encoder_layerdrop": "ignored: training only (kept)",
    "dropout_input": "ignored: training only (kept)", "dropout_features": "ignored: training only (kept)",
    "feature_grad_mult": "ignored: training only (kept: scales the conv stack's gradient)",
    "final_dim": "honoured (pre-training heads' shape)", "latent_vars": "honoured (quantizer shape)",
    "latent_groups": "honoured (quantizer shape)", "latent_dim": "honoured (quantizer shape)",
    "quantize_targets": "refused by load_pretrain_heads if false (no quantizer); the encoder loads",
    "target_glu": "refused by load_pretrain_heads if true (a GLU on the targets); the encoder loads",
    "quantizer_depth": "refused by load_pretrain_heads unless 1 (an MLP weight_proj); the encoder loads",
    "quantizer_factor": "ignored: only with quantizer_depth > 1 (refused for the heads)",
    "latent_temp": "ignored: training-time Gumbel temperature", "logit_temp": "ignored: pre-training loss",
    "num_negatives": "ignored: pre-training loss", "negatives_from_everywhere": "ignored: pre-training loss",
    "cross_sample_negatives": "ignored: pre-training loss", "codebook_negatives": "ignored: pre-training loss",
    "mask_length": "ignored: training-time masking", "mask_prob": "ignored: training-time masking",
    "mask_selection": "ignored: training-time masking", "mask_other": "ignored: training-time masking",
    "no_mask_overlap": "ignored: training-time masking", "mask_min_space": "ignored: training-time masking",
    "require_same_masks": "ignored: training-time masking", "mask_dropout": "ignored: training-time masking",
    "mask_channel_length": "ignored: training-time masking", "mask_channel_prob": "ignored: training-time masking",
    "mask_channel_before": "ignored: training-time masking",
    "mask_channel_selection": "ignored: training-time masking",
    "mask_channel_other": "ignored: training-time masking",
    "no_mask_channel_overlap": "ignored: training-time masking",
    "mask_channel_min_space": "ignored: training-time masking",
    "max_positions": "ignored: reported by max_positions(), never used in forward",
    "checkpoint_activations": "ignored: training memory", "fp16": "ignored: conformer only (refused)",
    "depthwise_conv_kernel_size": "ignored: conformer only (refused)",
    "attn_type": "ignored: conformer only (refused)", "pos_enc_type": "ignored: conformer only (refused)",
    "adp_num": "ignored: trf_adp only (refused)", "adp_dim": "ignored: trf_adp only (refused)",
    "adp_act_fn": "ignored: trf_adp only (refused)", "adp_trf_idx": "ignored: trf_adp only (refused)",
    "normalize (task)": "ignored: input preprocessing (zero mean, unit variance per clip) is the caller's",
    "(wav2vec_ctc settings)": "ignored: dropouts, masking, layerdrop, final_dropout, freeze_finetune_updates and "
                              "the CTC `proj` are training or head only; layer_type and adp_* are applied (above)",
}

_EXACT_GELU = ("gelu", "gelu_python")  # transformers' names for F.gelu (erf); gelu_new, gelu_fast... are tanh


def _setting(name: str, value: object) -> str:
    return f"`{name}: {value!r}`"


def _refuse(where: str, settings: list[str], fix: str, what: str = "the wav2vec2 encoder") -> None:
    """Raise if any setting was refused: every one named with its value, so the user sees them all at once."""
    if settings:
        raise QuambaEdgeError(f"{where} sets {', '.join(settings)}: {what} it describes computes something "
                              f"quamba-edge does not implement, so loading it would give wrong outputs. Fix: {fix}")


def _build_config(where: str, **values: object) -> Wav2Vec2Config:
    try:
        return Wav2Vec2Config(**values)
    except (TypeError, ValueError) as exc:
        raise QuambaEdgeError(f"{where} has a malformed wav2vec2 config ({exc}). Fix: re-export it from the "
                              "original model.") from exc
    except QuambaEdgeError as exc:
        raise QuambaEdgeError(f"{where}: {exc} Fix: re-export it from the original model.") from exc


# --- Hugging Face


def _hf_config(raw: dict, where: str) -> Wav2Vec2Config:
    refused = [_setting(name, raw.get(name)) for name in ("hidden_act", "feat_extract_activation")
               if raw.get(name, "gelu") not in _EXACT_GELU]
    if raw.get("feat_extract_norm", "group") not in ("group", "layer"):
        refused.append(_setting("feat_extract_norm", raw.get("feat_extract_norm")))
    if raw.get("add_adapter"):
        refused.append(_setting("add_adapter", raw.get("add_adapter")))
    if raw.get("adapter_attn_dim") is not None:
        refused.append(_setting("adapter_attn_dim", raw.get("adapter_attn_dim")))
    _refuse(where, refused, "use a plain wav2vec2 checkpoint (exact GELU activations, no adapters).")
    try:
        values = dict(
            conv_dim=tuple(raw.get("conv_dim", (512,) * 7)),
            conv_kernel=tuple(raw.get("conv_kernel", (10, 3, 3, 3, 3, 2, 2))),
            conv_stride=tuple(raw.get("conv_stride", (5, 2, 2, 2, 2, 2, 2))),
            conv_bias=bool(raw.get("conv_bias", False)),
            feat_extract_norm=raw.get("feat_extract_norm", "group"),
            hidden_size=int(raw.get("hidden_size", 768)),
            num_layers=int(raw.get("num_hidden_layers", 12)),
            num_heads=int(raw.get("num_attention_heads", 12)),
            ffn_dim=int(raw.get("intermediate_size", 3072)),
            pos_conv_kernel=int(raw.get("num_conv_pos_embeddings", 128)),
            pos_conv_groups=int(raw.get("num_conv_pos_embedding_groups", 16)),
            layer_norm_first=bool(raw.get("do_stable_layer_norm", False)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-5)),
            feature_proj=True,  # transformers always builds feature_projection.projection
            num_codevector_groups=int(raw.get("num_codevector_groups", 2)),
            num_codevectors_per_group=int(raw.get("num_codevectors_per_group", 320)),
            codevector_dim=int(raw.get("codevector_dim", 256)),
            final_dim=int(raw.get("proj_codevector_dim", 256)),
            dropout=float(raw.get("hidden_dropout", 0.1)),
            attention_dropout=float(raw.get("attention_dropout", 0.1)),
            activation_dropout=float(raw.get("activation_dropout", 0.1)),
            feat_proj_dropout=float(raw.get("feat_proj_dropout", 0.0)),
            feat_quantizer_dropout=float(raw.get("feat_quantizer_dropout", 0.0)),
            layerdrop=float(raw.get("layerdrop", 0.1)),
            feature_grad_mult=1.0,  # HF trains the conv encoder at full gradient (or freezes it outright)
        )
    except (TypeError, ValueError) as exc:
        raise QuambaEdgeError(f"{where} has a malformed wav2vec2 config ({exc}). Fix: re-export it.") from exc
    return _build_config(where, **values)


def _read_hf(model_dir: Path, raw: dict) -> _Checkpoint:
    from quamba_edge.checkpoints import load_state_dict  # generic HF weight-file reader (safetensors/bin/shards)

    where = str(model_dir)
    cfg = _hf_config(raw, where)
    state = load_state_dict(model_dir)
    if any(k.startswith("wav2vec2.") for k in state):  # Wav2Vec2ForPreTraining / ForCTC / ...
        state = {k.removeprefix("wav2vec2."): v for k, v in state.items()}
    encoder, heads = _rename(state, _HF_RULES, _HF_IGNORED, where)
    return _Checkpoint(cfg, encoder, heads, where)


# --- fairseq

_FAIRSEQ_CONV = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"


def _eval_conv_spec(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's `conv_feature_layers` string (list/tuple literals joined by + and *)
    without eval(): only integer literals, lists, tuples, + and * are accepted."""

    def value(node: ast.AST):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported syntax {ast.dump(node)[:60]}")

    layers = value(ast.parse(spec, mode="eval"))
    if not isinstance(layers, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
        raise ValueError("expected a list of (dim, kernel, stride) tuples")
    return layers


def _as_dict(obj: object) -> dict:
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    if isinstance(obj, dict):
        return obj
    raise TypeError(f"expected a dict or argparse.Namespace, got {type(obj).__name__}")


# fairseq's wav2vec_ctc copies these from the fine-tuning config into the pre-training one it builds
# (Wav2VecEncoder in wav2vec2_asr.py), so they decide the encoder's layers when set there.
_FAIRSEQ_FINETUNE_OVERRIDES = ("layer_type", "adp_num", "adp_dim", "adp_act_fn", "adp_trf_idx")


def _fairseq_model_cfg(ckpt: dict, where: str) -> tuple[dict, str]:
    """-> (the wav2vec2 model's settings, the state-dict prefix of its weights). Fine-tuned (CTC)
    checkpoints nest the pre-training settings in `w2v_args` and the weights under `w2v_encoder.w2v_model.`."""
    if ckpt.get("cfg") is not None:
        model = _as_dict(_as_dict(ckpt["cfg"]).get("model") or {})
    elif ckpt.get("args") is not None:
        model = _as_dict(ckpt["args"])
    else:
        raise QuambaEdgeError(f"{where} has neither `cfg` nor `args`, so the model's shape is unknown. "
                              "Fix: pass the original fairseq checkpoint or a Hugging Face directory.")
    if model.get("w2v_args") is not None:
        inner = _as_dict(model["w2v_args"])
        inner = dict(_as_dict(inner.get("model", inner)))
        inner.update({k: model[k] for k in _FAIRSEQ_FINETUNE_OVERRIDES if model.get(k) is not None})
        return inner, "w2v_encoder.w2v_model."
    return model, ""


def _opt(m: dict, key: str, default: object) -> object:
    """m[key], or `default` when absent or null (fairseq's dataclass default)."""
    value = m.get(key)
    return default if value is None else value


def _fairseq_config(m: dict, where: str) -> Wav2Vec2Config:
    """The encoder's config from fairseq's model settings; FAIRSEQ_CONFIG_FIELDS says what each one does."""
    refused = []
    name_key = "_name" if m.get("_name") is not None else "arch"
    if _opt(m, name_key, "wav2vec2") != "wav2vec2":
        refused.append(_setting(name_key, m[name_key]))
    for key, allowed in (("activation_fn", ("gelu",)), ("layer_type", ("transformer",)),
                         ("extractor_mode", ("default", "layer_norm")), ("pos_conv_depth", (1,)),
                         ("crop_seq_to_multiple", (1,)), ("conv_pos_batch_norm", (False,)),
                         ("quantize_input", (False,))):
        value = _opt(m, key, allowed[0])
        if value not in allowed:
            refused.append(_setting(key, value))
    _refuse(where, refused, "use a wav2vec 2.0 checkpoint with the standard transformer encoder "
                            "(gelu, layer_type 'transformer', one positional conv, no input quantizer).")
    try:
        conv = _eval_conv_spec(_opt(m, "conv_feature_layers", _FAIRSEQ_CONV))
        hidden = int(_opt(m, "encoder_embed_dim", 768))
        final_dim = int(_opt(m, "final_dim", 0)) or hidden
        values = dict(
            conv_dim=tuple(c[0] for c in conv), conv_kernel=tuple(c[1] for c in conv),
            conv_stride=tuple(c[2] for c in conv), conv_bias=bool(_opt(m, "conv_bias", False)),
            feat_extract_norm="group" if _opt(m, "extractor_mode", "default") == "default" else "layer",
            hidden_size=hidden, num_layers=int(_opt(m, "encoder_layers", 12)),
            num_heads=int(_opt(m, "encoder_attention_heads", 12)),
            ffn_dim=int(_opt(m, "encoder_ffn_embed_dim", 3072)),
            pos_conv_kernel=int(_opt(m, "conv_pos", 128)), pos_conv_groups=int(_opt(m, "conv_pos_groups", 16)),
            layer_norm_first=bool(_opt(m, "layer_norm_first", False)),
            layer_norm_eps=1e-5,  # fairseq's LayerNorm default; no setting changes it
            feature_proj=int(conv[-1][0]) != hidden,  # fairseq: post_extract_proj only when the dims differ
            num_codevector_groups=int(_opt(m, "latent_groups", 2)),
            num_codevectors_per_group=int(_opt(m, "latent_vars", 320)),
            codevector_dim=int(_opt(m, "latent_dim", 0)) or final_dim, final_dim=final_dim,
            dropout=float(_opt(m, "dropout", 0.1)), attention_dropout=float(_opt(m, "attention_dropout", 0.1)),
            activation_dropout=float(_opt(m, "activation_dropout", 0.0)),
            feat_proj_dropout=float(_opt(m, "dropout_input", 0.0)),
            feat_quantizer_dropout=float(_opt(m, "dropout_features", 0.0)),
            layerdrop=float(_opt(m, "encoder_layerdrop", 0.0)),
            feature_grad_mult=float(_opt(m, "feature_grad_mult", 1.0)),
        )
    except (TypeError, ValueError, SyntaxError, IndexError) as exc:
        raise QuambaEdgeError(f"{where} has a malformed wav2vec2 config ({exc}). "
                              "Fix: pass the original fairseq checkpoint or a Hugging Face directory.") from exc
    return _build_config(where, **values)


def _fairseq_heads_refused(m: dict) -> tuple[str, ...]:
    """Settings under which fairseq's pre-training heads differ from GumbelQuantizer + PretrainHeads."""
    refused = []
    if not _opt(m, "quantize_targets", False):
        refused.append(_setting("quantize_targets", _opt(m, "quantize_targets", False)))
    if _opt(m, "target_glu", False):
        refused.append(_setting("target_glu", m["target_glu"]))
    if int(_opt(m, "quantizer_depth", 1)) != 1:
        refused.append(_setting("quantizer_depth", m["quantizer_depth"]))
    return tuple(refused)


_RESAVE_HINT = (
    "Fix: convert it to a Hugging Face directory (transformers' wav2vec2 conversion script), or, on a machine "
    "where you trust the file, keep only plain data: python -c \"import torch; from omegaconf import OmegaConf; "
    "c = torch.load('IN.pt', weights_only=False); cfg = c.get('cfg'); "
    "cfg = OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {'model': vars(c['args'])}; "
    "torch.save({'cfg': cfg, 'model': c['model']}, 'OUT.pt')\" and pass OUT.pt."
)


def _torch_load_plain(path: Path) -> dict:
    """torch.load with weights_only=True, allowing only argparse.Namespace (fairseq's old `args`),
    a plain attribute bag; anything else that the file pickles is refused with the way out."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # refused globals, truncated zip, not a zip, permissions
        try:
            blocked = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                       if g != "argparse.Namespace"]
        except Exception:  # not a readable zip: then the file itself is the problem
            blocked = []
        if blocked:
            raise QuambaEdgeError(
                f"{path} pickles Python objects beyond tensors and plain data ({', '.join(blocked[:6])}), which "
                f"quamba-edge will not unpickle (loading them could run code from the file). {_RESAVE_HINT}"
            ) from exc
        raise QuambaEdgeError(f"{path} could not be read as a torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:200]}). Fix: copy or download it again.") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise QuambaEdgeError(f"{path} is not a fairseq checkpoint (no `model` state dict). "
                              "Fix: pass a fairseq wav2vec2 .pt, a Hugging Face directory, or our own directory.")
    return ckpt


def _read_fairseq(path: Path) -> _Checkpoint:
    where = str(path)
    ckpt = _torch_load_plain(path)
    try:
        model_cfg, prefix = _fairseq_model_cfg(ckpt, where)
    except TypeError as exc:
        raise QuambaEdgeError(f"{where} has an unreadable cfg ({exc}). {_RESAVE_HINT}") from exc
    cfg = _fairseq_config(model_cfg, where)
    state = ckpt["model"]
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    encoder, heads = _rename(state, _FAIRSEQ_RULES, _FAIRSEQ_IGNORED, where)
    return _Checkpoint(cfg, encoder, heads, where, _fairseq_heads_refused(model_cfg))


# --- ours


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise QuambaEdgeError(f"{path} is corrupt or truncated ({exc}). Fix: copy or write it again.") from exc


def _read_ours(model_dir: Path, raw: dict) -> _Checkpoint:
    where = str(model_dir)
    if raw.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise QuambaEdgeError(f"{where} was written by a newer quamba-edge (format {raw['format_version']}). "
                              "Fix: upgrade quamba-edge.")
    if not isinstance(raw.get("config"), dict):
        raise QuambaEdgeError(f"{where}/config.json has no `config` object. Fix: write it again with save_wav2vec2.")
    try:
        cfg = Wav2Vec2Config.from_dict(raw["config"])
    except (TypeError, ValueError) as exc:
        raise QuambaEdgeError(f"{where}/config.json is malformed ({exc}). Fix: write it again.") from exc
    except QuambaEdgeError as exc:  # an invalid combination of values, or keys from a newer tool
        raise QuambaEdgeError(f"{where}/config.json: {exc}") from exc
    if not (model_dir / WEIGHTS_FILE).exists():
        raise QuambaEdgeError(f"{where} has config.json but no {WEIGHTS_FILE}. Fix: write it again with "
                              "save_wav2vec2.")
    encoder = _read_safetensors(model_dir / WEIGHTS_FILE)
    heads = _read_safetensors(model_dir / HEADS_FILE) if (model_dir / HEADS_FILE).exists() else {}
    return _Checkpoint(cfg, encoder, heads, where)


def _read_any(path: str | Path) -> _Checkpoint:
    path = Path(path).expanduser()
    fix = ("Fix: pass a Hugging Face wav2vec2 directory, a fairseq wav2vec2 .pt file, or a directory "
           "written by save_wav2vec2.")
    if not path.exists():
        raise QuambaEdgeError(f"no such wav2vec2 checkpoint: {path}. {fix}")
    if path.is_file():
        if path.suffix in (".safetensors", ".json", ".bin"):
            raise QuambaEdgeError(f"{path} is one file of a checkpoint directory. Fix: pass {path.parent}.")
        return _read_fairseq(path)
    config = path / "config.json"
    if not config.exists():
        raise QuambaEdgeError(f"{path} has no config.json. {fix}")
    try:
        raw = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuambaEdgeError(f"{config} is not valid JSON ({exc}). Fix: restore the file.") from exc
    if not isinstance(raw, dict):
        raise QuambaEdgeError(f"{config} is not a JSON object. Fix: restore the file.")
    if raw.get("family") == FAMILY:
        return _read_ours(path, raw)
    if raw.get("model_type") == "wav2vec2":
        return _read_hf(path, raw)
    kind = raw.get("family") or raw.get("model_type") or "unknown"
    raise QuambaEdgeError(f"{path} holds a {kind!r} model, not wav2vec2. {fix}")


def _check_and_load(module: nn.Module, state: dict[str, Tensor], where: str, what: str,
                    optional: tuple[str, ...] = ()) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label}: {_few(keys) if label != 'wrong shape' else ', '.join(keys[:3])}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("wrong shape", wrong)) if keys)
        raise QuambaEdgeError(f"the {what} weights in {where} do not match its config ({detail}). "
                              "Fix: the checkpoint is incomplete or its config belongs to another model; "
                              "re-export both together.")
    with torch.no_grad():
        for key, value in state.items():
            target = expected[key]
            if not torch.is_floating_point(value):
                raise QuambaEdgeError(f"{where}: {key} is {value.dtype}, expected floating point weights.")
            target.copy_(value.to(target.dtype))


def load_wav2vec2(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Wav2Vec2Encoder, Wav2Vec2Config]:
    """Load the encoder from whichever layout the user has (HF directory, fairseq .pt, our directory),
    checking every tensor so a mismatched config fails here instead of producing silent garbage.

    A checkpoint without a mask embedding (HF models saved with masking disabled) keeps a fresh random
    one: it only matters when the caller masks frames."""
    ckpt = _read_any(path)
    with torch.device("meta"):  # skip the random init that the checkpoint overwrites (~1 s for BASE)
        model = Wav2Vec2Encoder(ckpt.cfg)
    model = model.to_empty(device="cpu")
    if "mask_emb" not in ckpt.encoder:
        nn.init.uniform_(model.mask_emb)
    _check_and_load(model, ckpt.encoder, ckpt.where, "encoder", optional=("mask_emb",))
    return model.to(dtype).eval(), ckpt.cfg


def load_pretrain_heads(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[GumbelQuantizer, PretrainHeads]:
    """The quantizer and contrastive projections of a pre-training checkpoint, to continue
    pre-training from them rather than from random heads."""
    ckpt = _read_any(path)
    if not ckpt.heads:
        raise QuambaEdgeError(f"{ckpt.where} has no quantizer (it is an encoder-only or fine-tuned checkpoint). "
                              "Fix: start fresh heads with GumbelQuantizer.from_config(cfg) and "
                              "PretrainHeads.from_config(cfg), or pass a pre-training checkpoint.")
    _refuse(ckpt.where, list(ckpt.heads_refused), "start fresh heads with GumbelQuantizer.from_config(cfg) and "
            "PretrainHeads.from_config(cfg); the encoder itself loads with load_wav2vec2.", "the pre-training head")
    quantizer, heads = GumbelQuantizer.from_config(ckpt.cfg), PretrainHeads.from_config(ckpt.cfg)
    _check_and_load(quantizer, {k.removeprefix("quantizer."): v for k, v in ckpt.heads.items()
                                if k.startswith("quantizer.")}, ckpt.where, "quantizer")
    _check_and_load(heads, {k.removeprefix("heads."): v for k, v in ckpt.heads.items()
                            if k.startswith("heads.")}, ckpt.where, "pre-training head")
    return quantizer.to(dtype).eval(), heads.to(dtype).eval()


def _is_ours(out_dir: Path) -> bool:
    try:
        return json.loads((out_dir / "config.json").read_text()).get("family") == FAMILY
    except (OSError, ValueError, AttributeError):
        return False


def save_wav2vec2(model: Wav2Vec2Encoder, cfg: Wav2Vec2Config, out_dir: str | Path,
                  quantizer: GumbelQuantizer | None = None, heads: PretrainHeads | None = None) -> None:
    """Write config.json + model.safetensors (+ pretrain_heads.safetensors when heads are given).

    The directory is built under a temporary name and swapped in whole, so a crash leaves either the
    old checkpoint or the new one, never a config that disagrees with its weights."""
    from quamba_edge.io import staged_dir

    if model.cfg != cfg:
        raise QuambaEdgeError("save_wav2vec2: cfg differs from the model's own config; pass model.cfg.")
    if (quantizer is None) != (heads is None):
        raise QuambaEdgeError("save_wav2vec2: pass both quantizer and heads, or neither.")
    encoder_state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    head_state = {}
    if quantizer is not None and heads is not None:
        head_state.update({f"quantizer.{k}": v for k, v in quantizer.state_dict().items()})
        head_state.update({f"heads.{k}": v for k, v in heads.state_dict().items()})
        head_state = {k: v.detach().float().contiguous().cpu() for k, v in head_state.items()}
    payload = {"family": FAMILY, "format_version": FORMAT_VERSION, "config": cfg.to_dict()}
    with staged_dir(Path(out_dir), ours=_is_ours, what="a quamba-edge wav2vec2 checkpoint") as tmp:
        save_file(encoder_state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if head_state:
            save_file(head_state, str(tmp / HEADS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(payload, indent=2) + "\n")
