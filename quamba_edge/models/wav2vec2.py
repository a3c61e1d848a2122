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
one final LayerNorm). Both, and both conv-norm modes, load from Hugging Face and fairseq checkpoints
(quamba_edge/checkpoints/wav2vec2.py reads and writes them). The pre-training quantizer and contrastive
projections are the separate modules `GumbelQuantizer` and `PretrainHeads`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quamba_edge.errors import QuambaEdgeError

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
        for total, parts in (("hidden_size", "num_heads"), ("hidden_size", "pos_conv_groups"),
                             ("codevector_dim", "num_codevector_groups")):
            a, b = getattr(self, total), getattr(self, parts)
            if b <= 0 or a % b:
                problems.append(f"{total} {a} is not divisible by {parts} {b}")
        if not self.feature_proj and self.conv_dim and self.conv_dim[-1] != self.hidden_size:
            problems.append(f"feature_proj=False needs conv_dim[-1] == hidden_size, not {self.conv_dim[-1]} "
                            f"and {self.hidden_size}")
        if problems:
            raise QuambaEdgeError("invalid wav2vec2 config: " + "; ".join(problems) + ".")

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
        return math.prod(self.conv_stride)

    def frame_lengths(self, samples: Tensor) -> Tensor:
        """Frames the conv stack makes from each of `samples` (long, per-example sample counts of a padded
        batch); 0 when too short for one frame."""
        n = samples.long()
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n.clamp_min(0)

    def frames_for(self, samples: int) -> int:
        return int(self.frame_lengths(torch.tensor(int(samples))))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

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
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

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
                      mask: Tensor | None = None, channel_mask: Tensor | None = None) -> Wav2Vec2Output:
        """Everything after the conv stack: conv (b, t, c) from `conv_features`; frame_mask (b, t) bool,
        True on real frames of a padded batch (None: all real); mask (b, t) bool, frames to replace by
        `mask_emb` (pre-training's and fine-tuning's time masking); channel_mask (b, hidden_size) bool,
        projected feature channels set to zero (fine-tuning's channel masking, fairseq `mask_channel_prob`,
        after the feature projection as in fairseq, but before the time mask, so `mask_emb` frames keep every
        channel)."""
        feature_pen = conv.float().pow(2).mean()
        m = self.cfg.feature_grad_mult
        if self.training and m != 1.0:  # same value, gradient into the conv stack scaled by m
            conv = conv.detach() + (conv - conv.detach()) * m
        b, t, _ = conv.shape
        for name, given in (("mask", mask), ("frame_mask", frame_mask)):
            if given is not None and given.shape != (b, t):
                raise ValueError(f"{name} must be (batch, frames) = {(b, t)}, got {tuple(given.shape)}")
        if channel_mask is not None and channel_mask.shape != (b, self.cfg.hidden_size):
            raise ValueError(f"channel_mask must be (batch, hidden_size) = {(b, self.cfg.hidden_size)}, "
                             f"got {tuple(channel_mask.shape)}")
        features = self.feature_norm(conv)
        h = F.dropout(self.feature_proj(features), self.cfg.feat_proj_dropout, self.training)
        if channel_mask is not None:
            h = h.masked_fill(channel_mask.bool().unsqueeze(1), 0.0)
        if mask is not None:
            h = torch.where(mask.bool().unsqueeze(-1), self.mask_emb.to(h.dtype), h)
        key_mask = None
        if frame_mask is not None:
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
