"""The quantized Mamba LM run through the kernel ops: the same weights and numbers as `QuantizedMambaLM`,
with RMSNorm+quantize, conv1d+SiLU, the scan and Hadamard+quantize each one fused op.

On a GPU with the extension built these are the CUDA kernels; on a CPU the twins; the linear layers
stay `QLinear` (cuBLASLt int8 on CUDA, the exact float GEMM on CPU). Decode steps update the states
passed in, in place (no per-token copy of the state), and return them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from quamba_edge.kernels import ops, scan_scales
from quamba_edge.models.mamba import StepLoop
from quamba_edge.quant.hadamard import factor, small_hadamard
from quamba_edge.quant.int8 import quantize
from quamba_edge.quant.quamba import QMambaMixer, QResidualBlock, QuantizedMambaLM


class _LayerArgs:
    """The constant arguments of one layer's ops, packed once (scales as device tensors)."""

    def __init__(self, block: QResidualBlock):
        m: QMambaMixer = block.mixer
        conv, scan = m.conv1d, m.scan
        self.norm_weight = block.norm.norm.weight.detach().float().contiguous()
        self.norm_eps = float(block.norm.norm.eps)
        self.norm_scale = block.norm.out_scale.reshape(1).contiguous()
        self.conv = (conv.weight.contiguous(), conv.bias.contiguous(), conv.weight_scale.reshape(-1).contiguous(),
                     torch.stack([conv.in_scale, conv.bias_scale, conv.out_scale]).contiguous())
        dbc = m.x_proj.out_scale
        self.scan = (scan.A_log.contiguous(), scan.D.contiguous(), scan.delta_bias.contiguous(),
                     scan_scales(conv.out_scale, m.dt_proj.out_scale, dbc, dbc, m.in_proj.out_scale,
                                 scan.A_log_scale, scan.D_scale, scan.delta_bias_scale).to(scan.A_log.device))
        self.rotate = m.rotate.rotate_output
        self.y_scale = m.rotate.out_scale.reshape(1).contiguous()
        d = m.cfg.d_inner
        self.hadamard_K = small_hadamard(factor(d)[0]).to(torch.int8) if self.rotate else None


class KernelMambaLM(StepLoop, nn.Module):
    """Wraps a `QuantizedMambaLM` (shares its modules and buffers); the interface is the same. A step of one
    token runs the decode kernels and updates the states passed in, in place."""

    in_place_decode = True

    def __init__(self, quantized: QuantizedMambaLM):
        super().__init__()
        self.q = quantized
        self.cfg, self.recipe = quantized.cfg, quantized.recipe
        device = quantized.embedding.weight.device
        self._args = [_LayerArgs(layer) for layer in quantized.layers]
        for a in self._args:
            if a.hadamard_K is not None:
                a.hadamard_K = a.hadamard_K.to(device)

    def empty_state(self, batch: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        return self.q.empty_state(batch, dtype)

    def logits(self, h: Tensor) -> Tensor:
        return self.q.logits(h)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.q.embedding(input_ids).float()

    def blocks(self):
        return [self._block(layer.mixer, args) for layer, args in zip(self.q.layers, self._args)]

    def _block(self, mixer: QMambaMixer, args: _LayerArgs):
        def block(h: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            out, conv, ssm = self._mixer(mixer, args, h, conv_state, ssm_state, decode=h.shape[1] == 1)
            return h + out, conv, ssm

        return block

    def _mixer(self, m: QMambaMixer, a: _LayerArgs, h: Tensor, conv_state: Tensor, ssm_state: Tensor,
               decode: bool) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cfg
        x_q = ops.rmsnorm_quantize(h.contiguous(), a.norm_weight, a.norm_eps, a.norm_scale)
        xz_q = m.in_proj(x_q)
        x_q, z_q = (t.contiguous() for t in xz_q.chunk(2, dim=-1))
        if decode:
            u_q = ops.conv1d_silu_step(x_q[:, 0], conv_state, *a.conv)[:, None]
        else:
            u_q, conv_state = ops.conv1d_silu(x_q, conv_state.contiguous(), *a.conv)
        dt_q, B_q, C_q = (t.contiguous() for t in m.x_proj(u_q).split([cfg.rank, cfg.d_state, cfg.d_state], -1))
        delta_q = m.dt_proj(dt_q)
        if decode:
            y = ops.selective_scan_step(u_q[:, 0], delta_q[:, 0], B_q[:, 0], C_q[:, 0], z_q[:, 0], *a.scan,
                                        ssm_state)[:, None]
        else:
            y, ssm_state = ops.selective_scan(u_q, delta_q, B_q, C_q, z_q, *a.scan, ssm_state.contiguous())
        y_q = (ops.hadamard_quantize(y, a.hadamard_K, a.y_scale) if a.rotate
               else quantize(y, a.y_scale.reshape(())))
        return m.out_proj(y_q), conv_state, ssm_state
