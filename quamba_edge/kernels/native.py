"""The native CPU decode path (issue 17): a Quamba W8A8 Mamba-1 LM's whole decode step as one C++ call.

`NativeDecoder(qmodel)` packs a `QuantizedMambaLM`'s weights once into the kernels' layout (int8 rows
zero-padded to 64 bytes, per-row scales, A = -exp(A_log) precomputed) and then runs one token of every
sequence per `step(token_ids)`: embedding row, every layer (RMSNorm + quantize, in_proj, conv step + SiLU +
requantize, x_proj, dt_proj, scan step, gate, Hadamard + quantize, out_proj, residual), final RMSNorm and
head, with the states updated in place and no allocation per token; `prefill(input_ids)` runs a whole
(batch, length) prompt in one call, layer-major (each projection an int8 GEMM over the prompt's tokens, the
conv and the scan along time, the head on the last position). The C++ is csrc/cpu/native/ (plain
C++, shares csrc/include/quamba_edge/kernel_math.h with the CUDA kernels and the CPU twins).

The int8 x int8 -> int32 products run on the fastest exact path the CPU has, chosen at run time:
avx512vnni, avxvnni, avx2 (int8 widened to int16, never the saturating vpmaddubsw), neon (ARMv8.2 sdot)
or scalar. `QUAMBA_EDGE_ISA=scalar|avx2|avxvnni|avx512vnni|neon` forces one (unset or `auto`: the best).
Every path gives the same int8 intermediates, states and residual stream bit for bit (the integer products
are exact and the float code is shared), so agreement with the PyTorch reference is DESIGN.md's: int8 equal
except at rounding ties, fp32 within 1e-5 relative.

Heads (`head=`): `fp32` (the tied embedding read in place: the reference's numbers), `fp16` / `bf16` (the
tied matrix converted once, round to nearest even, fp32 accumulation: the paper keeps the head 16-bit; half
the bytes of fp32), `int8` (the recipe's `--int8-head` per-channel int8 head). Default: `int8` when the
model has one, else `fp32`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from quamba_edge.kernels.build import CSRC, compile_extension
from quamba_edge.mapped import release_pages
from quamba_edge.quant.hadamard import factor, small_hadamard
from quamba_edge.quant.int8 import QLinear, dequantize
from quamba_edge.quant.quamba import QResidualBlock, QuantizedMambaLM
from quamba_edge.quant.quamba2 import QuantizedMamba2LM

NATIVE_DIR = CSRC / "cpu" / "native"
# The torch module (bindings.cpp) and the plain C++ it drives; test_native.cpp is the standalone test's main.
SOURCES = ("bindings.cpp", "decoder.cpp", "mamba2.cpp", "dispatch.cpp", "dot_scalar.cpp", "dot_avx2.cpp",
           "dot_vnni.cpp", "dot_neon.cpp")
CORE_SOURCES = SOURCES[1:]
# No -march: the baseline ISA for the shared float code, target attributes for each path's kernels.
# -ffp-contract=off: a * b + c rounds twice, as the PyTorch reference's separate ops do (no FMA contraction);
# no -ffast-math: the int8 rounding must match the reference.
CXX_FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
HEADS = ("fp32", "fp16", "bf16", "int8")
ISAS = ("scalar", "avx2", "avxvnni", "avx512vnni", "neon")
# Per-layer tensors handed to the C++ constructor, in bindings.cpp's LayerTensor order.
LAYER_TENSORS = ("norm_weight", "in_weight", "in_scale", "in_bias", "x_weight", "x_scale", "dt_weight", "dt_scale",
                 "out_weight", "out_scale", "out_bias", "conv_weight", "conv_scale", "conv_bias", "A_log", "D",
                 "delta_bias", "scan_scales", "hadamard_K")
LAYER_FLOATS = ("norm_eps", "norm_scale", "in_out_scale", "x_out_scale", "dt_out_scale", "u_scale", "y_scale")
# The Mamba-2 decoder's per-layer tensors and floats (bindings.cpp's Mamba2Tensor order).
MAMBA2_LAYER_TENSORS = ("norm_weight", "in_weight", "in_scale", "in_bias", "proj_scale", "conv_weight", "conv_scale",
                        "conv_bias", "xbc_scale", "dt_bias", "A", "D", "hadamard_K", "out_weight", "out_scale",
                        "out_bias")
MAMBA2_LAYER_FLOATS = ("norm_eps", "norm_scale", "y_scale")
# One layer's int8 intermediates, as a traced step returns them (each (batch, width)).
TRACE_POINTS = ("xn", "xz", "u", "dbc", "delta", "y")

_MODULE = None


def load(verbose: bool = False):
    """Build (once per source digest, cached under the quamba-edge cache; ~1 min on 2 cores) and import the
    extension module. Raises on a compiler error: there is no silent fallback for a native decoder."""
    global _MODULE
    if _MODULE is None:
        _MODULE = compile_extension("quamba_edge_native", [NATIVE_DIR / s for s in SOURCES], CXX_FLAGS,
                                    python_module=True, verbose=verbose)[1]
    return _MODULE


def supported_isas() -> list[str]:
    """The paths this CPU can run (scalar first), e.g. ['scalar', 'avx2']."""
    return list(load().supported_isas())


def isa() -> str:
    """The path a new decoder uses: QUAMBA_EDGE_ISA if set (raises if this CPU cannot run it), else the best."""
    return load().select_isa()


def _linear_scale(lin: QLinear) -> Tensor:
    """(n,) fp32: in_scale * weight_scale, the same fp32 product QLinear.forward multiplies the int32 by."""
    s = (lin.in_scale * lin.weight_scale.reshape(-1)).float()
    return s.expand(lin.out_features).contiguous()


def _empty(dtype: torch.dtype) -> Tensor:
    return torch.empty(0, dtype=dtype)


def _head_tensors(qmodel, head: str | None, isa: str | None) -> tuple[str, Tensor, Tensor, float]:
    """The head a decoder of `qmodel` (QuantizedMambaLM or QuantizedMamba2LM) runs and its int8 weight, scales and
    input scale (empty for a 16/32-bit head). Raises ValueError for an unknown head or ISA, or head='int8' on a model
    without an int8 head."""
    head = head or ("int8" if qmodel.head is not None else "fp32")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, not {head!r}")
    if head == "int8" and qmodel.head is None:
        raise ValueError("head='int8' needs a model quantized with --int8-head (recipe int8_head=True)")
    if isa is not None and isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS} or None, not {isa!r}")
    if head == "int8":
        h = qmodel.head
        return head, h.weight.contiguous(), _linear_scale(h), float(h.in_scale)
    return head, _empty(torch.int8), _empty(torch.float32), 1.0


def pack_layer(block: QResidualBlock) -> tuple[list[Tensor], list[float]]:
    """One block's tensors (LAYER_TENSORS) and floats (LAYER_FLOATS), computed with the reference's own
    torch expressions so every scale product is the same fp32 number."""
    m = block.mixer
    conv, scan, d = m.conv1d, m.scan, m.cfg.d_inner
    conv_scale = (conv.in_scale * conv.weight_scale).reshape(-1).float().expand(d).contiguous()
    conv_bias = dequantize(conv.bias, conv.bias_scale).contiguous()
    scan_scales = torch.stack([s.reshape(()).float() for s in (
        scan.u_scale, scan.delta_scale, scan.dbc_scale, scan.dbc_scale, scan.z_scale, scan.A_log_scale,
        scan.D_scale, scan.delta_bias_scale)]).contiguous()
    H = (small_hadamard(factor(d)[0]).to(torch.int8).contiguous() if m.rotate.rotate_output
         else _empty(torch.int8))

    def bias(lin: QLinear) -> Tensor:
        return lin.bias.detach().float().contiguous() if lin.bias is not None else _empty(torch.float32)

    tensors = [
        block.norm.norm.weight.detach().float().contiguous(),
        m.in_proj.weight.contiguous(), _linear_scale(m.in_proj), bias(m.in_proj),
        m.x_proj.weight.contiguous(), _linear_scale(m.x_proj),
        m.dt_proj.weight.contiguous(), _linear_scale(m.dt_proj),
        m.out_proj.weight.contiguous(), _linear_scale(m.out_proj), bias(m.out_proj),
        conv.weight.contiguous(), conv_scale, conv_bias,
        scan.A_log.contiguous(), scan.D.contiguous(), scan.delta_bias.contiguous(), scan_scales, H,
    ]
    floats = [float(block.norm.norm.eps), float(block.norm.out_scale), float(m.in_proj.out_scale),
              float(m.x_proj.out_scale), float(m.dt_proj.out_scale), float(conv.out_scale),
              float(m.rotate.out_scale)]
    return tensors, floats


class NativeDecoder:
    """Prefill and decode runner of a `QuantizedMambaLM` (CPU, any batch). Owns the states: conv_state
    (n_layer, batch, d_inner, d_conv - 1) int8 and ssm_state (n_layer, batch, d_inner, d_state) fp32, the
    layout `QuantizedMambaLM.empty_state` uses, updated in place by every step.

        dec = NativeDecoder(qmodel)                    # packs once (seconds at mamba-130m)
        logits = dec.prefill(prompt_ids)               # (batch, length) -> (batch, vocab): one layer-major call
        logits = dec.step(next_ids)                    # (batch,) int64 -> (batch, vocab) fp32

    `step` returns the decoder's own logits buffer (overwritten by the next step: clone to keep it).
    `isa=None` takes QUAMBA_EDGE_ISA or the best path; `head=None` the model's (module docstring).
    """

    def __init__(self, qmodel: QuantizedMambaLM, head: str | None = None, isa: str | None = None,
                 batch: int = 1):
        """Packs qmodel's weights (a model loaded from an artifact is memory-mapped: quamba_edge.mapped; its
        pages are released as they are packed and fault back in if the model is used again)."""
        if not isinstance(qmodel, QuantizedMambaLM):
            raise TypeError(f"NativeDecoder runs a QuantizedMambaLM (a quantized model), not {type(qmodel).__name__}")
        head, head_w, head_s, head_in = _head_tensors(qmodel, head, isa)
        cfg = self.cfg = qmodel.cfg
        self.head_kind = head
        mod = load()
        # read in place: the rows a step looks up, and the whole matrix by the fp32 head
        self._embedding = qmodel.embedding.weight.detach().float().contiguous()
        dims = [cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.rank, cfg.vocab_size]
        self._dec = mod.Decoder(dims, self._embedding, qmodel.norm_f.weight.detach().float().contiguous(),
                                float(qmodel.norm_f.eps), head, head_w, head_s, head_in, isa or "")
        if head != "fp32":  # packed (int8) or converted (fp16, bf16): the source pages can go
            release_pages([self._embedding, head_w])
        # One layer at a time, its memory-mapped source pages released once packed (quamba_edge.mapped): the peak
        # holds the packed weights and one layer, not the packed weights and the whole artifact.
        for block in qmodel.layers:
            self._dec.add_layer(*pack_layer(block))
            release_pages([*block.parameters(), *block.buffers()])
        self.reset(batch)

    @property
    def isa(self) -> str:
        """The path this decoder runs: scalar, avx2, avxvnni, avx512vnni or neon."""
        return self._dec.isa

    @property
    def packed_bytes(self) -> int:
        """Bytes of weights the decoder holds besides the model's fp32 embedding (packed int8, 16-bit head)."""
        return self._dec.packed_bytes

    def reset(self, batch: int = 1) -> None:
        """Zero states for `batch` sequences (allocates; a step never does)."""
        cfg = self.cfg
        self.batch = batch
        self.conv_state = torch.zeros(cfg.n_layer, batch, cfg.conv_state_channels, cfg.d_conv - 1, dtype=torch.int8)
        self.ssm_state = torch.zeros(cfg.n_layer, batch, *cfg.ssm_state_shape, dtype=torch.float32)
        self.logits = torch.zeros(batch, cfg.vocab_size, dtype=torch.float32)
        self._ids = torch.zeros(batch, dtype=torch.int64)

    def load_state(self, conv_state: Tensor, ssm_state: Tensor) -> None:
        """Continue from states a prefill elsewhere produced (e.g. `QuantizedMambaLM.step` on the prompt)."""
        if conv_state.shape[1] != self.batch:
            self.reset(conv_state.shape[1])
        self.conv_state.copy_(conv_state)
        self.ssm_state.copy_(ssm_state)

    def step(self, token_ids: Tensor, traces: list[list[Tensor]] | None = None) -> Tensor:
        """token_ids (batch,) or (batch, 1) int -> logits (batch, vocab) fp32; the states advance one token.

        traces: per layer six int8 tensors (TRACE_POINTS, each (batch, width)) that receive the layer's
        int8 intermediates (the tests compare them with the reference's)."""
        ids = token_ids.reshape(-1)
        if ids.numel() != self.batch:
            raise ValueError(f"{ids.numel()} token ids for a decoder of batch {self.batch}: call reset(batch)")
        self._ids.copy_(ids)
        self._dec.step(self._ids, self.conv_state, self.ssm_state, self.logits, *self._trace_args(traces))
        return self.logits

    def prefill(self, input_ids: Tensor, traces: list[list[Tensor]] | None = None) -> Tensor:
        """input_ids (batch, length) int from zero states -> logits of the last position (batch, vocab) fp32 (the
        decoder's own buffer, as `step`'s); conv_state / ssm_state then hold the states after the prompt, from
        which `step` continues. One C++ call, layer-major over the prompt (int8 GEMMs over the tokens, the conv
        and scan along time, the head on the last position only): the same states as stepping token by token.

        traces: per layer six int8 tensors (TRACE_POINTS, each (batch, length, width); `trace_buffers(length)`)
        that receive every position's int8 intermediates."""
        ids = torch.as_tensor(input_ids)
        if ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ValueError(f"prefill takes token ids (batch, length) with both >= 1, got shape {tuple(ids.shape)}")
        self.reset(ids.shape[0])
        self._dec.prefill(ids.to(torch.int64).contiguous(), self.conv_state, self.ssm_state, self.logits,
                          *self._trace_args(traces))
        return self.logits

    def _trace_args(self, traces: list[list[Tensor]] | None) -> list:
        """The C++ step's and prefill's trailing argument: the trace tensors (none: an empty list)."""
        return [traces or []]

    def trace_buffers(self, length: int | None = None) -> list[list[Tensor]]:
        """Fresh int8 tensors for `step(traces=...)`: per layer xn (b, d_model), xz (b, 2d), u (b, d),
        dbc (b, r + 2n), delta (b, d), y (b, d); with `length`, for `prefill(traces=...)`: each (b, length, width)."""
        cfg, b = self.cfg, self.batch
        widths = (cfg.d_model, 2 * cfg.d_inner, cfg.d_inner, cfg.rank + 2 * cfg.d_state, cfg.d_inner, cfg.d_inner)
        lead = (b,) if length is None else (b, length)
        return [[torch.zeros(*lead, w, dtype=torch.int8) for w in widths] for _ in range(cfg.n_layer)]

    def layer(self, i: int, h: Tensor, conv_state: Tensor, ssm_state: Tensor,
              trace: list[Tensor] | None = None) -> None:
        """Layer i alone on h (batch, d_model) fp32 and that layer's states (batch, d, k-1), (batch, d, n),
        all updated in place (the tests feed it the reference's inputs, layer by layer)."""
        self._dec.layer(i, h, conv_state, ssm_state, trace or [])

    def head(self, h: Tensor) -> Tensor:
        """Final RMSNorm and head on h (batch, d_model) fp32 -> new logits (batch, vocab) fp32."""
        out = torch.empty(h.shape[0], self.cfg.vocab_size, dtype=torch.float32)
        self._dec.head(h.contiguous(), out)
        return out


def pack_mamba2_layer(block: QResidualBlock) -> tuple[list[Tensor], list[float]]:
    """One Mamba-2 block's tensors (MAMBA2_LAYER_TENSORS) and floats (MAMBA2_LAYER_FLOATS), each scale product
    formed with the reference's own torch expression (quant/quamba2.py: QMamba2Mixer.forward)."""
    m = block.mixer
    cfg = m.cfg
    d, e = cfg.d_inner, cfg.conv_dim
    conv_scale = (m.proj_scale[d : d + e, None] * m.conv_weight_scale).reshape(-1).float().expand(e).contiguous()

    def vector(t: Tensor | None) -> Tensor:
        return _empty(torch.float32) if t is None else t.detach().float().contiguous()

    H = small_hadamard(factor(d)[0]).to(torch.int8).contiguous() if m.hadamard else _empty(torch.int8)
    tensors = [vector(block.norm.norm.weight), m.in_proj.weight.contiguous(), _linear_scale(m.in_proj),
               vector(m.in_proj.bias), vector(m.proj_scale), m.conv_weight.contiguous(), conv_scale,
               vector(m.conv_bias), vector(m.xbc_scale), vector(m.dt_bias), vector(-torch.exp(m.A_log)), vector(m.D), H,
               m.out_proj.weight.contiguous(), _linear_scale(m.out_proj), vector(m.out_proj.bias)]
    return tensors, [float(block.norm.norm.eps), float(block.norm.out_scale), float(m.y_scale)]


class NativeMamba2Decoder(NativeDecoder):
    """Prefill and decode runner of a W8A8 Mamba-2 LM (`QuantizedMamba2LM`, CPU, any batch), with NativeDecoder's
    interface (`prefill`, `step`, `reset`, `load_state`; states conv_state (n_layer, batch, conv_dim, d_conv - 1)
    int8 and ssm_state (n_layer, batch, nheads, headdim, d_state) fp32, in place). Heads: fp32 (the tied
    embedding read in place), fp16 or bf16 (converted once), int8 (--int8-head); an untied fp head is refused.
    The prefill runs layer-major over 64-token chunks (int8 GEMMs over the chunk's tokens, the conv and the SSD
    recurrence along time): the same states, bit for bit, as stepping token by token."""

    def __init__(self, qmodel: QuantizedMamba2LM, head: str | None = None, isa: str | None = None, batch: int = 1):
        if not isinstance(qmodel, QuantizedMamba2LM):
            raise TypeError(f"NativeMamba2Decoder runs a QuantizedMamba2LM, not {type(qmodel).__name__}")
        head, head_w, head_s, head_in = _head_tensors(qmodel, head, isa)
        cfg = self.cfg = qmodel.cfg
        if not cfg.tie_embeddings and head != "int8":
            raise ValueError("the native Mamba-2 decoder reads its head from the tied embedding; this model's "
                             "lm_head is untied (run it with --backend ort)")
        self.head_kind = head
        self._embedding = qmodel.embedding.weight.detach().float().contiguous()
        dims = [cfg.d_model, cfg.d_inner, cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state, cfg.d_conv,
                cfg.vocab_size]
        floats = [cfg.dt_min, cfg.dt_max or 0.0, cfg.norm_eps]
        self._dec = load().Mamba2Decoder(dims, floats, self._embedding,
                                         qmodel.norm_f.weight.detach().float().contiguous(), float(qmodel.norm_f.eps),
                                         head, head_w, head_s, head_in, isa or "")
        if head != "fp32":  # packed (int8) or converted (fp16, bf16): the source pages can go
            release_pages([self._embedding, head_w])
        for block in qmodel.layers:
            self._dec.add_layer(*pack_mamba2_layer(block))
            release_pages([*block.parameters(), *block.buffers()])
        self.reset(batch)

    def _trace_args(self, traces: list[list[Tensor]] | None) -> list:
        if traces:
            raise ValueError("the native Mamba-2 decoder has no traces")
        return []


def source_files() -> list[Path]:
    """The C++ sources of the native path (for the standalone test's build)."""
    return [NATIVE_DIR / s for s in CORE_SOURCES]
