"""Roofline estimate of Mamba-1 generation on a device profile: bytes and FLOPs per token ÷ peaks.

An estimate, labelled as one wherever it is printed or stored: it assumes every weight is read once
per decode step (decode is memory-bound at batch 1) and the peaks of the profile are reached. The
precision decides bytes per weight: fp16 2 bytes; int8 (Quamba W8A8) 1 byte for the five int8
layers (in_proj, conv1d, x_proj, dt_proj, out_proj), with the embedding / tied lm_head, norms and
the SSM parameters kept in fp16 (DESIGN.md). States are read and written once per step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from quamba_edge.bench.devices import DeviceProfile
from quamba_edge.models.mamba import MambaConfig, public_shape

# The one Jetson measurement the Quamba paper gives: Mamba-2.8B generation on an Orin Nano 8G, fp16
# against Quamba W8A8. The seconds are read off the paper's Figure 1 bars, so they are approximate; the
# text states the ratio. The figure does not restate its workload; the authors' profiling script
# (enyac-group/Quamba, profile_mamba.py --ttlt) defaults to a 512-token prompt and 512 generated tokens,
# which is what `paper_comparison` assumes for the absolute seconds.
QUAMBA_FIGURE_1 = {
    "model": "mamba-2.8b", "device": "orin-nano-8gb", "fp16_s": 50.0, "int8_s": 30.5, "speedup": 1.72,
    "assumed_prompt_len": 512, "assumed_gen_len": 512,
    "source": "Chiang et al., Quamba: A Post-Training Quantization Recipe for Selective State Space Models, "
              "ICLR 2025 (arXiv:2410.13229), Figure 1 and abstract (1.72x lower generation latency)",
}


@dataclass
class Estimate:
    device: str
    precision: str
    batch: int
    prompt_len: int
    gen_len: int
    weight_bytes: float
    decode_bytes_per_step: float
    decode_flops_per_step: float
    prefill_ms: float
    tpot_ms: float
    total_s: float
    decode_bound: str
    memory_fraction: float  # weights / device memory (Jetson memory is shared with the OS and CUDA)
    weight_source: str = "shape"  # "shape": counted from the config; "engine files": the built engine's bytes
    kind: str = "roofline estimate (not a measurement)"

    def to_dict(self) -> dict:
        return asdict(self)


def parameter_counts(cfg: MambaConfig) -> tuple[int, int]:
    """(parameters of the int8-able layers, all other parameters incl. the embedding), whole model: the
    config's own count (Mamba-1 or Mamba-2)."""
    return cfg.parameter_counts()


def estimate(cfg: MambaConfig, precision: str, profile: DeviceProfile, *, batch: int = 1, prompt_len: int = 1024,
             gen_len: int = 128, weight_bytes: int | None = None) -> Estimate:
    """`weight_bytes`: what one decode step reads, when known from a built engine (bench --estimate on an
    engine directory); otherwise counted from `cfg` at `precision`."""
    if precision not in ("fp16", "int8"):
        raise ValueError("the roofline estimate covers fp16 and int8")
    big, other = parameter_counts(cfg)
    source = "engine files" if weight_bytes else "shape"
    weight_bytes = weight_bytes or big * (1 if precision == "int8" else 2) + other * 2
    conv_bytes = 1 if precision == "int8" else 2
    state_bytes = cfg.n_layer * (cfg.conv_state_channels * (cfg.d_conv - 1) * conv_bytes
                                 + cfg.d_inner * cfg.d_state * 2)  # Mamba-2: h * p * n = d_inner * n
    per_token_flops = 2 * (big + cfg.vocab_size * cfg.d_model) + cfg.n_layer * cfg.d_inner * cfg.d_state * 7
    peak = (profile.int8_tops if precision == "int8" else profile.fp16_tflops) * 1e12
    bandwidth = profile.bandwidth_gbs * 1e9
    step_bytes = weight_bytes + 2 * batch * state_bytes
    step_flops = batch * per_token_flops
    t_mem, t_compute = step_bytes / bandwidth, step_flops / peak
    tpot = max(t_mem, t_compute)
    # Prefill reads the weights once and computes every prompt token (the scan is not tensor-core work,
    # but its FLOPs are small next to the projections).
    prefill = max(weight_bytes / bandwidth, batch * prompt_len * per_token_flops / peak)
    return Estimate(
        device=profile.name, precision=precision, batch=batch, prompt_len=prompt_len, gen_len=gen_len,
        weight_bytes=weight_bytes, decode_bytes_per_step=step_bytes, decode_flops_per_step=step_flops,
        prefill_ms=prefill * 1e3, tpot_ms=tpot * 1e3, total_s=prefill + (gen_len - 1) * tpot,
        decode_bound="memory" if t_mem >= t_compute else "compute",
        memory_fraction=weight_bytes / (profile.memory_gb * 1e9), weight_source=source,
    )


def paper_comparison(profile: DeviceProfile) -> dict:
    """Our fp16 and int8 estimates for Mamba-2.8B on `profile`, next to Quamba's Figure 1 (Orin Nano 8G). The
    roofline is a lower bound on time: how far above it the measured seconds sit says what fraction of peak
    bandwidth each precision's kernels reached on the device."""
    paper = QUAMBA_FIGURE_1
    cfg = public_shape(paper["model"])
    fp16, int8 = (estimate(cfg, p, profile, prompt_len=paper["assumed_prompt_len"],
                           gen_len=paper["assumed_gen_len"]) for p in ("fp16", "int8"))
    return {
        "model": paper["model"], "device": profile.name, "paper_device": paper["device"],
        "estimate_fp16_s": fp16.total_s, "estimate_int8_s": int8.total_s,
        "estimate_speedup": fp16.total_s / int8.total_s,
        "paper_fp16_s": paper["fp16_s"], "paper_int8_s": paper["int8_s"], "paper_speedup": paper["speedup"],
        "paper_fp16_over_estimate": paper["fp16_s"] / fp16.total_s,
        "paper_int8_over_estimate": paper["int8_s"] / int8.total_s,
        "prompt_len": paper["assumed_prompt_len"], "gen_len": paper["assumed_gen_len"],
        "source": paper["source"], "kind": "roofline estimate next to a published measurement",
    }
