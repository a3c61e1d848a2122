"""Mamba-1 language models: text calibration and the Quamba recipes, the prefill/decode graphs and their
parity cases, the TensorRT profile, the generation workload (TTFT, TPOT) and bits per byte."""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from quamba_edge import kernels as kernel_ops
from quamba_edge.backends.base import System
from quamba_edge.backends.compare import LAYER_TOLERANCE, TOLERANCE, Case, compare
from quamba_edge.backends.native import NativeDecodeRunner, NativePrefillRunner
from quamba_edge.checkpoints.common import checkpoint_family
from quamba_edge.checkpoints.mamba import load_mamba
from quamba_edge.data.text import load_windows, read_text, take_windows
from quamba_edge.data.tokenizers import Tokenizer, tokenizer_file, tokenizer_for
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.evaluate import evaluate_lm
from quamba_edge.export.graph import WeightFile
from quamba_edge.export.mamba import export_mamba
from quamba_edge.export.plugins import rewrite
from quamba_edge.families.base import Calibration, Column, Compute, Loaded, Progress, median_range
from quamba_edge.kernels.mamba import KernelMambaLM
from quamba_edge.kernels.native import HEADS as NATIVE_HEADS
from quamba_edge.kernels.native import NativeDecoder
from quamba_edge.models.mamba import PUBLIC_SHAPES, MambaConfig, MambaLM, public_shape
from quamba_edge.quant.quamba import QuantizedMambaLM
from quamba_edge.quant.quantize import quantize
from quamba_edge.quant.recipes import Fp, Quamba, Recipe, make_recipe

name = "mamba"
graphs = ("prefill", "decode")
precisions = ("fp32", "fp16")  # what an fp model builds in; a quantized one is int8
backends = ("ort", "tensorrt", "native")
generates = True  # the roofline estimate and --plot apply
public_shapes = {size: public_shape(size) for size in PUBLIC_SHAPES}  # state-spaces/mamba-*
scales_title = "activation scales; int8 step = scale"
plugin_pass = rewrite  # TensorRT: conv and scan regions -> csrc/ plugin nodes


def detect(directory: Path) -> bool:
    """Mamba checkpoints (mamba-ssm or Hugging Face layout) carry no `family` key in config.json."""
    return (Path(directory) / "config.json").exists() and checkpoint_family(directory) is None


load_checkpoint, config = load_mamba, MambaConfig.from_dict


def structure(cfg: MambaConfig, recipe: Recipe, manifest: dict) -> nn.Module:
    return QuantizedMambaLM(cfg, recipe) if recipe.quantize else MambaLM(cfg)


def quant_config(recipe: str | Recipe, **switches) -> Fp | Quamba:
    if isinstance(recipe, str):
        return make_recipe(recipe, **switches)
    if not isinstance(recipe, (Fp, Quamba)):
        raise QuambaEdgeError(f"a {recipe.kind} recipe does not apply to Mamba; use --recipe naive or quamba.")
    return recipe


def tag(cfg: MambaConfig, recipe_label: str, precision: str) -> str | None:
    return recipe_label if precision == "int8" else None


def tokenizer(loaded: Loaded) -> Tokenizer:
    return tokenizer_for(loaded.directory, loaded.cfg.vocab_size, loaded.tokenizer)


def extra_files(loaded: Loaded) -> dict[str, Path]:
    """The tokenizer travels with the artifact (the one --tokenizer named, else the checkpoint's own)."""
    if loaded.tokenizer is not None:
        return {"tokenizer.json": tokenizer_file(loaded.tokenizer)}
    own = Path(loaded.directory) / "tokenizer.json"
    return {"tokenizer.json": own} if own.exists() else {}


def calibrate(loaded: Loaded, recipe: Recipe, data: str, samples: int, seq_len: int, batch_size: int,
              on_batch: Progress | None, compute: Compute) -> Calibration:
    """The first `samples` windows of `seq_len` tokens of `data`, in file order (DESIGN.md). The forward passes
    run on `compute`'s copy of the model; the int8 weights come from the loaded model's own."""
    start = time.perf_counter()
    windows = load_windows(data, tokenizer(loaded), samples, seq_len)
    batches = (batch.to(compute.device) for batch in windows.tokens.split(batch_size))
    qmodel, scales = quantize(loaded.model, recipe, batches, on_batch, observe_on=compute.twin(loaded.model))
    seconds = time.perf_counter() - start
    record = {"data": str(data), "samples": samples, "seq_len": seq_len, "digest": windows.digest,
              "seconds": round(seconds, 2), "tokens_per_s": round(windows.tokens.numel() / seconds, 1)}
    return Calibration(qmodel, record, scales)


def export(model: nn.Module, graph: str, precision: str, activations: str, probes: bool = False,
           weights: WeightFile | None = None) -> onnx.ModelProto:
    dtype = torch.float16 if precision == "fp16" else torch.float32
    return export_mamba(model, graph, dtype, probes=probes, activations=activations, weights=weights)


def limits(cfg: MambaConfig, *, max_batch: int = 8, max_prompt: int = 2048, opt_prompt: int = 512, **_) -> dict:
    return {"max_batch": max_batch, "max_prompt": max_prompt, "opt_prompt": opt_prompt}


def state_bytes(cfg: MambaConfig, limits: dict, precision: str) -> int:
    """Conv and SSM states in and out of a decode step at the profile's largest batch (conv int8 for int8
    engines, fp16 for fp16; SSM state fp32)."""
    conv = {"int8": 1, "fp16": 2}.get(precision, 4)
    per_layer = cfg.conv_state_channels * (cfg.d_conv - 1) * conv + math.prod(cfg.ssm_state_shape) * 4
    per_sequence = cfg.n_layer * per_layer
    return 2 * limits["max_batch"] * per_sequence


def profile(graph: str, cfg: MambaConfig, limits: dict) -> dict[str, tuple]:
    """TensorRT's min / opt / max shapes of every dynamic input of `prefill` or `decode`."""
    b, p, opt = limits["max_batch"], limits["max_prompt"], limits["opt_prompt"]
    if graph == "prefill":
        return {"input_ids": ((1, 1), (1, opt), (b, p))}
    conv = lambda n: (cfg.n_layer, n, cfg.conv_state_channels, cfg.d_conv - 1)  # noqa: E731
    ssm = lambda n: (cfg.n_layer, n, *cfg.ssm_state_shape)  # noqa: E731
    return {"input_ids": ((1, 1), (1, 1), (b, 1)), "conv_state_in": (conv(1), conv(1), conv(b)),
            "ssm_state_in": (ssm(1), ssm(1), ssm(b))}


def reference(model: nn.Module, device: str = "cpu") -> dict:
    """The PyTorch model behind the graph names: numpy logits out, states kept as torch tensors (so a
    decode loop never copies them), numpy or torch in."""
    dev = torch.device(device)

    @torch.no_grad()
    def step(feeds, inputs=("input_ids",)):
        logits, conv, ssm = model.step(*(torch.as_tensor(feeds[n]).to(dev) for n in inputs))
        return {"logits": logits[:, -1].float().cpu().numpy(), "conv_state": conv, "ssm_state": ssm}

    return {"prefill": step, "decode": lambda feeds: step(feeds, ("input_ids", "conv_state_in", "ssm_state_in"))}


def kernels(model: nn.Module, device: str) -> tuple[nn.Module, str]:
    """The quantized model on the csrc/ ops (CUDA kernels, else the CPU twins)."""
    if not isinstance(model, QuantizedMambaLM):
        raise QuambaEdgeError("--kernels runs quantized models; this one is fp32. Fix: bench an artifact made by "
                              "`quamba-edge calibrate`.")
    kernel_ops.load()
    return KernelMambaLM(model), f"kernels-{kernel_ops.backend(device)}"


def native(model: nn.Module, head: str | None = None) -> tuple[dict, int, str]:
    """The native CPU backend's runners (prefill and decode on csrc/cpu/native, sharing one decoder and its
    states), the bytes one decode step reads (packed weights, and the fp32 embedding when the head reads it) and a
    label. `head`: fp32 | fp16 | bf16 | int8 (None: int8 if the artifact has one, else fp32)."""
    if not isinstance(model, QuantizedMambaLM):
        raise QuambaEdgeError("--backend native runs int8 artifacts; this model is fp32. Fix: `quamba-edge "
                              "calibrate` first, then build from its --out directory.")
    check_native_head(model, head, NATIVE_HEADS)
    return native_runners(NativeDecoder(model, head=head), model)


def check_native_head(model: nn.Module, head: str | None, known: tuple[str, ...]) -> None:
    """--head against a quantized model's own head (Mamba and Mamba-2): an int8-head artifact runs its int8 head;
    --head int8 needs one; anything else must be in `known`. Raises QuambaEdgeError naming the fix."""
    if model.head is not None and head not in (None, "int8"):
        raise QuambaEdgeError(f"this artifact was calibrated with an int8 lm_head (--int8-head); --head {head} "
                              "would run another head than the calibrated one. Fix: drop --head (or --head int8), "
                              "or calibrate with --fp-head for a 16-bit head.")
    if head is not None and head not in known:
        raise QuambaEdgeError(f"unknown --head {head!r}; known: {', '.join(known)}.")
    if head == "int8" and model.head is None:
        raise QuambaEdgeError("--head int8 needs an artifact calibrated with --int8-head. Fix: calibrate with "
                              "--int8-head, or choose --head fp16 (the paper's 16-bit head).")


def native_runners(decoder, model: nn.Module) -> tuple[dict, int, str]:
    """Prefill and decode runners sharing `decoder` (a NativeDecoder or NativeMamba2Decoder), the bytes one decode
    step reads (its packed weights, and the fp32 embedding when its head reads it) and a label."""
    step_bytes = decoder.packed_bytes + (model.embedding.weight.nbytes if decoder.head_kind == "fp32" else 0)
    runners = {"prefill": NativePrefillRunner(decoder), "decode": NativeDecodeRunner(decoder)}
    return runners, step_bytes, f"{decoder.isa}, {decoder.head_kind} head"


def parity(model: nn.Module, precision: str, limits: dict | None = None, *, seed: int = 0, batch: int = 2,
           lengths: tuple[int, ...] = (7, 33), decode_steps: int = 2, tolerance: float | None = None
           ) -> Iterator[Case]:
    """Prefill on fresh random prompts, then decode steps that start from the reference state, so each
    step is compared on equal inputs. fp16 graphs are compared with the model's weights rounded to fp16
    and run in fp32 (PyTorch's fp16 CPU kernels are slower and less exact than that). int8 is recorded, not
    judged (graphs are judged layer by layer instead), unless `tolerance` is given (the native backend, end to
    end: int8 states by rel. error too, since a rounding tie in one layer moves the later layers' int8 values)."""
    gen = torch.Generator().manual_seed(seed)
    ref_model = copy.deepcopy(model).half().float() if precision == "fp16" else model
    tol = tolerance if tolerance is not None else None if precision == "int8" else TOLERANCE[precision]
    as_float = precision == "int8" and tolerance is not None  # end to end: int8 states by rel. error too

    def judge(case: str, refs: tuple):
        return lambda out: [compare(case, n, out[n], r.float() if as_float else r, tol)
                            for n, r in zip(("logits", "conv_state", "ssm_state"), refs)]

    with torch.no_grad():
        for length in lengths:
            ids = torch.randint(0, model.cfg.vocab_size, (batch, length), generator=gen)
            logits, conv, ssm = ref_model.step(ids)
            case = f"prefill b={batch} l={length}"
            yield Case(case, "prefill", {"input_ids": ids.numpy()}, judge(case, (logits[:, -1], conv, ssm)))
            for step in range(decode_steps):
                nxt = torch.randint(0, model.cfg.vocab_size, (batch, 1), generator=gen)
                conv_in = conv.numpy().astype(np.float16) if precision == "fp16" else conv.numpy()
                feeds = {"input_ids": nxt.numpy(), "conv_state_in": conv_in, "ssm_state_in": ssm.numpy()}
                logits, conv, ssm = ref_model.step(nxt, conv, ssm)
                case = f"decode after l={length}, step {step + 1}"
                yield Case(case, "decode", feeds, judge(case, (logits[:, -1], conv, ssm)))


def layer_parity(model: nn.Module, *, seed: int = 1, batch: int = 2, length: int = 33) -> Iterator[Case]:
    """Every layer, then the head, on equal inputs (for the probe graphs of an int8 engine): the graph's own
    residual entering layer i goes into reference layer i, its final residual into the reference norm +
    head, on `parity`'s inputs for one prompt of `length` tokens and one decode step from its state.

    Judged (backends/compare.py says why): int8 conv state equal except one step in at most 2% of places;
    layer outputs, SSM states and logits within 1e-2 (a tie in a layer's delta moves that channel's SSM state
    for the rest of the prompt: 1.3e-3 seen at the mamba-130m shape). End to end: recorded only (5% on the
    logits of a 24-layer model after 33 tokens is normal). A wrong scale, rotation or layout fails by one to
    three orders of magnitude more (tests/test_export.py checks that it does)."""

    @torch.no_grad()
    def judge(out: dict, label: str, conv_in: torch.Tensor, ssm_in: torch.Tensor) -> list[dict]:
        found = []
        for i, layer in enumerate(model.layers):
            h_out, conv, ssm = layer(torch.from_numpy(out[f"probe_h{i}"]), conv_in[i], ssm_in[i])
            case = f"layer {i} on the graph's own input, {label}"
            found += [compare(case, "layer_output", out[f"probe_h{i + 1}"], h_out, LAYER_TOLERANCE),
                      compare(case, "conv_state", out["conv_state"][i], conv, LAYER_TOLERANCE),
                      compare(case, "ssm_state", out["ssm_state"][i], ssm, LAYER_TOLERANCE)]
        logits = model.logits(torch.from_numpy(out[f"probe_h{len(model.layers)}"])[:, -1:])[:, -1]
        found.append(compare(f"norm + head on the graph's own input, {label}", "logits", out["logits"], logits,
                             LAYER_TOLERANCE))
        return found

    prefill, decode = parity(model, "int8", seed=seed, batch=batch, lengths=(length,), decode_steps=1)
    state = [torch.from_numpy(decode.feeds[k]) for k in ("conv_state_in", "ssm_state_in")]  # after the prefill
    yield Case(f"prefill l={length}", "prefill", prefill.feeds,
               lambda out: judge(out, f"prefill l={length}", *model.empty_state(batch)))
    yield Case(f"decode after l={length}", "decode", decode.feeds,
               lambda out: judge(out, f"decode after l={length}", *state))


class Generation:
    """A prompt of `prompt_len` random tokens, then `gen_len` greedy tokens, `batch` sequences at once:
    time to first token (TTFT), time per output token (TPOT, median over the steps of a run)."""

    def __init__(self, cfg: MambaConfig, *, batch: int, prompt_len: int, gen_len: int, seed: int = 0, **_):
        if gen_len < 2:
            raise QuambaEdgeError("--gen-len must be at least 2 (the first token comes from the prompt).")
        self.batch, self.prompt_len, self.gen_len = batch, prompt_len, gen_len
        self.prompt = np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(batch, prompt_len),
                                                           dtype=np.int64)
        self.title = f"measured: batch {batch}, prompt {prompt_len}, generate {gen_len}"
        self.sizes = {"batch": batch, "prompt_len": prompt_len, "gen_len": gen_len}

    def check(self, system: System) -> None:
        lim = system.limits
        if lim and (self.prompt_len > lim["max_prompt"] or self.batch > lim["max_batch"]):
            raise QuambaEdgeError(
                f"{system.label} was built for prompts up to {lim['max_prompt']} tokens and batch up to "
                f"{lim['max_batch']}; asked for {self.prompt_len} x {self.batch}. Fix: rebuild with "
                f"`quamba-edge build-engine ... --max-prompt {self.prompt_len} --max-batch {self.batch}`.")

    def warmup(self, system: System) -> None:
        self._run(system, self.prompt[:, : min(self.prompt_len, 64)], 4)

    def once(self, system: System) -> dict:
        return self._run(system, self.prompt, self.gen_len)

    @staticmethod
    def _run(system: System, prompt: np.ndarray, gen_len: int) -> dict:
        prefill, decode = system["prefill"], system["decode"]
        seconds, out, token = [], None, None
        for _ in range(gen_len):  # the prefill's greedy token, then gen_len - 1 decode steps
            t = time.perf_counter()
            out = (prefill({"input_ids": prompt}) if out is None else
                   decode({"input_ids": token, "conv_state_in": out["conv_state"], "ssm_state_in": out["ssm_state"]}))
            token = out["logits"].argmax(-1).astype(np.int64)[:, None]
            seconds.append(time.perf_counter() - t)
        return {"ttft": seconds[0], "steps": seconds[1:]}

    def outputs(self, system: System, steps: int = 2) -> dict:
        """Logits of a prefill on the first tokens of the prompt and of `steps` decode steps on fixed tokens
        (the same for every system), and the final states as float (`bench --check`)."""
        prompt = self.prompt[:, : min(self.prompt_len, 32)]
        out = system["prefill"]({"input_ids": prompt})
        found = {"prefill logits": out["logits"]}
        for step in range(steps):
            out = system["decode"]({"input_ids": prompt[:, step : step + 1], "conv_state_in": out["conv_state"],
                                    "ssm_state_in": out["ssm_state"]})
            found[f"decode {step + 1} logits"] = out["logits"]
        return {**found, "ssm_state": np.asarray(out["ssm_state"], np.float32)}

    def summarize(self, runs: list[dict], system: System) -> dict:
        ttft, ttft_range = median_range([r["ttft"] for r in runs], 1e3)
        tpot, tpot_range = median_range([statistics.median(r["steps"]) for r in runs], 1e3)
        curve = [statistics.median(col) * 1e3 for col in zip(*(r["steps"] for r in runs))]
        row = {**self.sizes, "ttft_ms": ttft, "ttft_ms_range": ttft_range, "tpot_ms": tpot,
               "tpot_ms_range": tpot_range, "prompt_tok_s": self.batch * self.prompt_len / (ttft / 1e3),
               "decode_tok_s": self.batch / (tpot / 1e3), "tpot_curve_ms": curve}
        if system.weight_bytes:  # every decode step reads every weight once: a lower bound on traffic
            row["decode_weights_gb_s"] = system.weight_bytes / (tpot / 1e3) / 1e9
        return row

    def energy(self, row: dict, watts: float) -> dict:
        return {"j_per_token": watts * row["tpot_ms"] / 1e3 / self.batch}

    columns = (
        Column("TTFT ms", "ttft_ms", "{:.1f}"),
        Column("TPOT ms (range)", "tpot_ms", lambda r: "{:.2f} ({:.2f}-{:.2f})".format(r["tpot_ms"],
                                                                                       *r["tpot_ms_range"])),
        Column("prompt tok/s", "prompt_tok_s", "{:.0f}"),
        Column("decode tok/s", "decode_tok_s", "{:.1f}"),
        Column("weights GB/s", "decode_weights_gb_s", "{:.1f}"),
    )
    speed_key = "decode_tok_s"  # "vs first" compares this (higher is faster)
    energy_columns = (Column("J/token", "j_per_token", "{:.4f}"),)


workload = Generation


eval_columns = (
    Column("recipe", "recipe"), Column("bits/byte", "bits_per_byte", "{:.4f}"),
    Column("perplexity", "perplexity", "{:.3f}"),
    Column("token acc.", "token_accuracy", lambda r: f"{100 * r['token_accuracy']:.2f}%"),
    Column("tokens", "tokens", "{:,}"), Column("data", "data"),
)


def eval_rows(result: dict) -> list[dict]:
    return [result]


def evaluate(loaded: Loaded, data: str, seq_len: int, max_samples: int | None, batch_size: int,
             on_batch: Progress | None) -> dict:
    """Bits/byte and next-token accuracy on the first `max_samples` windows of `data` (all if None)."""
    tok = tokenizer(loaded)
    ids = tok.encode(read_text(data))
    available = max(len(ids) // seq_len, 1)  # none: take_windows says the data is shorter than one window
    windows = take_windows(ids, min(max_samples or available, available), seq_len, what=f"data at {data}",
                           option="--max-samples")
    result = evaluate_lm(loaded.model, windows.tokens, tok.byte_lengths(), batch_size, on_batch)
    result.update({"recipe": loaded.label, "data": str(data), "seq_len": seq_len,
                   "samples": len(windows.tokens), "data_digest": windows.digest})
    return result
