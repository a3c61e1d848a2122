"""The native CPU decoder (csrc/cpu/native, quamba_edge/native.py) against the PyTorch quantized reference.

On every instruction-set path this machine can execute (forced with QUAMBA_EDGE_ISA), on fresh random
inputs, with DESIGN.md's contract: int8 intermediates equal except at rounding ties, fp32 states, residual
stream and logits within 1e-5 relative. The reference is `QuantizedMambaLM` itself: its blocks run one by
one, with `quantize` wrapped to record each int8 tensor's value before rounding (for the tie test).

The standalone C++ test (csrc/cpu/native/test_native.cpp: each path's GEMVs against a 64-bit loop,
including the extremes where a saturating 16-bit multiply-add would be wrong, and the whole decoder on
every path against the scalar one) runs natively here, and cross-compiled for aarch64 under qemu-aarch64
for the NEON dot-product path (correctness, not speed).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import quamba_edge.quant.int8 as int8_mod
import quamba_edge.quant.quamba as quamba_mod
from quamba_edge.kernels import native
from quamba_edge.models.mamba import MambaConfig
from quamba_edge.quant.quamba import calibrate
from quamba_edge.quant.recipes import make_recipe

from .conftest import make_model, rel_close

ALL_ISAS = native.ISAS
CXX_FLAGS = ["-std=c++17", "-O2", "-ffp-contract=off", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
             "-Wall", "-Wextra", "-Werror"]


@pytest.fixture(scope="module")
def supported() -> list[str]:
    return native.supported_isas()  # builds the extension: a compiler error fails here, never skips


def isa_param(isa: str, supported: list[str]) -> None:
    if isa not in supported:
        pytest.skip(f"this CPU cannot run the {isa} path (it runs {', '.join(supported)})")


def quantized(cfg: MambaConfig, recipe, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, cfg.vocab_size, (2, 48), generator=gen) for _ in range(3)]
    qmodel, _ = calibrate(make_model(cfg, seed), batches, recipe)
    return qmodel


CONFIGS = {  # d_inner 128 = 1 * 2^7 and d_state 16 (the specialised scan); d_inner 96 = 12 * 8, generic scan
    "k1-n16": MambaConfig(d_model=64, n_layer=2, vocab_size=256, d_state=16),
    "k12-n8-bias": MambaConfig(d_model=48, n_layer=2, vocab_size=256, d_state=8, proj_bias=True),
}
RECIPES = {
    "quamba": make_recipe("quamba"),
    "no-hadamard": make_recipe("quamba", hadamard=False),
    "naive-channel": make_recipe("naive", weight_granularity="channel"),
    "int8-head": make_recipe("quamba", int8_head=True),
}


class QuantizeRecorder:
    """Wraps the reference's `quantize` (both modules that call it) to record, in call order, x / scale
    before rounding and the int8 result; the wrapped function still computes every value."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        original = int8_mod.quantize

        def recording(x, scale):
            q = original(x, scale)
            self.calls.append((x.float() / torch.as_tensor(scale, dtype=torch.float32), q))
            return q

        monkeypatch.setattr(int8_mod, "quantize", recording)
        monkeypatch.setattr(quamba_mod, "quantize", recording)


def near_tie(pre_round: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """Where a value before rounding (in units of the int8 step) lies within `tol` of x.5."""
    return ((pre_round - pre_round.floor()) - 0.5).abs() < tol


def assert_int8_except_ties(actual: torch.Tensor, expected: torch.Tensor, pre_round: torch.Tensor, what: str,
                            tol: float = 1e-4) -> int:
    """Equal, except off by one where the reference's value before rounding is within `tol` of x.5 (of the
    int8 step); returns how many tie flips there were."""
    actual, expected, pre_round = actual.reshape(expected.shape), expected, pre_round.reshape(expected.shape)
    diff = (actual.int() - expected.int()).abs()
    bad = (diff > 1) | ((diff == 1) & ~near_tie(pre_round, tol))
    assert not bad.any(), f"{what}: {int(bad.sum())} of {bad.numel()} int8 values differ away from a rounding tie"
    return int((diff == 1).sum())


def assert_logits_close(logits: torch.Tensor, ref: torch.Tensor, qmodel, rec: QuantizeRecorder) -> None:
    """Logits (b, vocab) within 1e-5 relative of the reference's. With an int8 head, plus what its input values
    near a rounding tie can move (one int8 step each: |W_q[v, j]| * weight_scale[v] * in_scale for each such j);
    the head's input is the last value `rec` recorded, (b, [l,] d_model), of which the last position counts."""
    if qmodel.head is None:
        rel_close(logits, ref)
        return
    head, pre_round = qmodel.head, rec.calls[-1][0]
    assert pre_round.shape[-1] == head.in_features, "the last value recorded is not the head's input"
    pre_round = pre_round.reshape(logits.shape[0], -1, head.in_features)[:, -1]
    ties = near_tie(pre_round, tol=1e-3).float()  # 1e-3: the native final norm sums in another order
    w = head.weight.float().abs() * head.weight_scale.reshape(-1, 1) * head.in_scale  # (vocab, d_model)
    excess = (logits - ref).abs() - (1e-5 * ref.abs().max() + ties @ w.T)
    assert float(excess.max()) <= 0, f"logits off by {float(excess.max()):.3g} beyond the head-input ties"


def reference_decode_inputs(qmodel, batch: int, prompt: int, gen: torch.Generator):
    """Random prompt through the reference (prefill), then the ids of a few decode steps."""
    ids = torch.randint(0, qmodel.cfg.vocab_size, (batch, prompt + 4), generator=gen)
    with torch.no_grad():
        _, conv, ssm = qmodel.step(ids[:, :prompt])
    return ids[:, prompt:], conv, ssm


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_each_layer_matches_the_reference_on_its_inputs(isa, recipe, config, supported, monkeypatch):
    """Layer by layer on the reference's own inputs and states: every int8 intermediate equal except at ties,
    the residual stream and the SSM state within 1e-5 relative, the conv state equal; then the head."""
    isa_param(isa, supported)
    monkeypatch.setenv("QUAMBA_EDGE_ISA", isa)
    qmodel = quantized(CONFIGS[config], RECIPES[recipe])
    dec = native.NativeDecoder(qmodel, batch=2)
    assert dec.isa == isa and native.isa() == isa
    gen = torch.Generator().manual_seed(random.randrange(2**31))  # fresh inputs every run
    steps, conv, ssm = reference_decode_inputs(qmodel, 2, 24, gen)
    rec = QuantizeRecorder(monkeypatch)
    flips = 0
    with torch.no_grad():
        for t in range(steps.shape[1]):
            h = qmodel.embed(steps[:, t:t + 1])
            for i, block in enumerate(qmodel.layers):
                h_n, conv_n, ssm_n = h[:, 0].clone(), conv[i].clone(), ssm[i].clone()
                trace = dec.trace_buffers()[i]
                dec.layer(i, h_n, conv_n, ssm_n, trace)
                rec.calls.clear()
                h, c, s = block(h, conv[i], ssm[i])
                assert len(rec.calls) == len(native.TRACE_POINTS)
                layer_flips = 0
                for point, got, (pre, q) in zip(native.TRACE_POINTS, trace, rec.calls):
                    layer_flips = assert_int8_except_ties(got, q.reshape(2, -1), pre, f"step {t} layer {i} {point}")
                    if layer_flips:  # a flipped tie moves everything after it in the layer
                        break
                if layer_flips == 0:
                    rel_close(h_n, h[:, 0])
                    rel_close(ssm_n, s)
                    assert torch.equal(conv_n, c)
                flips += layer_flips
                conv[i], ssm[i] = c, s
            rec.calls.clear()
            ref_logits = qmodel.logits(h)[:, 0]
            assert_logits_close(dec.head(h[:, 0].contiguous()), ref_logits, qmodel, rec)
    assert flips <= 2, f"{flips} rounding ties went the other way: more than chance allows"


def traced_step_matches(dec, qmodel, rec: QuantizeRecorder, ids: torch.Tensor, conv, ssm, traces, what: str):
    """One native step (traced) and one reference step of ids (b,) from the reference states conv, ssm. Every int8
    intermediate equal up to the first difference, which must be a rounding tie (asserted); where there is none,
    both states and the logits within DESIGN.md's bounds. Returns (native logits, the reference's states after the
    step, whether it was compared); after a flipped tie the decoder continues from the reference's states."""
    rec.calls.clear()
    with torch.no_grad():
        ref_logits, conv, ssm = qmodel.step(ids[:, None], conv, ssm)
    logits = dec.step(ids, traces)
    points = [x for layer in traces for x in layer]
    assert len(rec.calls) == len(points) + (qmodel.head is not None), what
    for i, (got, (pre, q)) in enumerate(zip(points, rec.calls)):
        if assert_int8_except_ties(got, q.reshape(ids.shape[0], -1), pre, f"{what} layer {i // 6}"):
            dec.load_state(conv, ssm)  # a tie went the other way: what follows it in this step is unbounded
            return logits, conv, ssm, False
    rel_close(dec.ssm_state, ssm)
    assert torch.equal(dec.conv_state, conv), what
    assert_logits_close(logits, ref_logits[:, 0], qmodel, rec)
    return logits, conv, ssm, True


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("recipe", ["quamba", "int8-head"])
def test_fused_decode_steps_match_the_reference(isa, recipe, supported, monkeypatch):
    """The one-call step, token after token from the reference's prefill state: logits and both states
    within 1e-5 relative of `QuantizedMambaLM.step` (states updated in place, the logits buffer reused)."""
    isa_param(isa, supported)
    monkeypatch.setenv("QUAMBA_EDGE_ISA", isa)
    qmodel = quantized(CONFIGS["k1-n16"], RECIPES[recipe], seed=1)
    dec = native.NativeDecoder(qmodel)
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    steps, conv, ssm = reference_decode_inputs(qmodel, 2, 32, gen)
    dec.load_state(conv, ssm)
    conv_ptr, ssm_ptr, logits_ptr = dec.conv_state.data_ptr(), dec.ssm_state.data_ptr(), dec.logits.data_ptr()
    traces = dec.trace_buffers()
    rec = QuantizeRecorder(monkeypatch)
    compared = 0
    for t in range(steps.shape[1]):
        _, conv, ssm, ok = traced_step_matches(dec, qmodel, rec, steps[:, t], conv, ssm, traces, f"step {t}")
        compared += ok
    assert compared >= steps.shape[1] - 1, "rounding ties flipped in most steps: more than chance allows"
    assert (dec.conv_state.data_ptr(), dec.ssm_state.data_ptr(), dec.logits.data_ptr()) == (conv_ptr, ssm_ptr,
                                                                                               logits_ptr)


def test_every_path_gives_the_same_bits(supported):
    """Exact integer products and one copy of the float code: states, int8 intermediates and (int8 head)
    logits identical on every path this CPU runs; fp32-head logits within 1e-5 (summation order)."""
    qmodel = quantized(CONFIGS["k12-n8-bias"], RECIPES["int8-head"], seed=2)
    ids = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(random.randrange(2**31)))
    runs = {}
    for isa in supported:
        for head in ("int8", "fp32"):
            dec = native.NativeDecoder(qmodel, head=head, isa=isa, batch=3)
            traces = dec.trace_buffers()
            for t in range(ids.shape[1]):
                dec.step(ids[:, t], traces)
            runs[isa, head] = (dec.logits.clone(), dec.conv_state.clone(), dec.ssm_state.clone(),
                               torch.cat([x for layer in traces for x in layer], 1))
    for (isa, head), (logits, conv, ssm, trace) in runs.items():
        ref_logits, ref_conv, ref_ssm, ref_trace = runs["scalar", head]
        assert torch.equal(conv, ref_conv) and torch.equal(ssm, ref_ssm) and torch.equal(trace, ref_trace), isa
        if head == "int8":
            assert torch.equal(logits, ref_logits), isa
        else:
            rel_close(logits, ref_logits)


@pytest.mark.parametrize("head,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_16_bit_heads_accumulate_in_fp32(head, dtype, supported):
    """The 16-bit head equals the tied matrix rounded to fp16 / bf16 (round to nearest even) times the final
    norm's output, summed in fp32 (1e-5 relative), on every path."""
    qmodel = quantized(CONFIGS["k1-n16"], RECIPES["quamba"])
    h = torch.randn(3, qmodel.cfg.d_model, generator=torch.Generator().manual_seed(random.randrange(2**31)))
    expected = F.linear(qmodel.norm_f(h), qmodel.embedding.weight.detach().to(dtype).float())
    fp32 = F.linear(qmodel.norm_f(h), qmodel.embedding.weight.detach())
    for isa in supported:
        got = native.NativeDecoder(qmodel, head=head, isa=isa).head(h)
        rel_close(got, expected)
        assert not torch.equal(got, fp32)  # the rounding happened


PREFILL_SHAPES = [(b, length) for b in (1, 2) for length in (1, 7, 33, 70)]  # 70: past one kPrefillChunk (64)


def reference_prefill_traces(qmodel, ids: torch.Tensor, rec: QuantizeRecorder):
    """The reference prefill of ids (b, l) -> (logits (b, vocab) of the last position, conv, ssm, per layer six
    (value before rounding, int8) pairs each (b, l, width)): the conv's u is quantized (b, d, l), transposed."""
    rec.calls.clear()
    with torch.no_grad():
        logits, conv, ssm = qmodel.step(ids)
    n_points = len(native.TRACE_POINTS)
    layers = []
    for i in range(qmodel.cfg.n_layer):
        pairs = rec.calls[i * n_points:(i + 1) * n_points]
        layers.append([(pre.transpose(1, 2), q.transpose(1, 2)) if point == "u" else (pre, q)
                       for point, (pre, q) in zip(native.TRACE_POINTS, pairs)])
    return logits[:, -1], conv, ssm, layers


def first_difference_is_a_tie(traces, ref_layers, what: str) -> bool:
    """False when every int8 intermediate equals the reference's. Else the earliest difference in data-flow
    order (position, then layer, then point: nothing depends on a later one) must be a rounding tie that went the
    other way (asserted); returns True (what follows it may move on, so the caller stops comparing there)."""
    length = traces[0][0].shape[1]
    for t in range(length):
        for i, (layer, ref) in enumerate(zip(traces, ref_layers)):
            for point, got, (pre, q) in zip(native.TRACE_POINTS, layer, ref):
                if not torch.equal(got[:, t], q[:, t]):
                    assert_int8_except_ties(got[:, t], q[:, t], pre[:, t], f"{what}: position {t} layer {i} {point}")
                    return True
    return False


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_prefill_matches_the_reference_prefill(isa, recipe, config, supported, monkeypatch):
    """The one-call, layer-major prefill of fresh random prompts (batch 1 and 2, lengths 1 to past one chunk of
    64 tokens) against `QuantizedMambaLM.step(ids)`: every position's int8 intermediates equal; the last
    position's logits and both states within 1e-5 relative (conv equal). Where a rounding tie went the other way
    (asserted to be one), the rest of that prompt is not compared; that may happen in one prompt of eight."""
    isa_param(isa, supported)
    monkeypatch.setenv("QUAMBA_EDGE_ISA", isa)
    qmodel = quantized(CONFIGS[config], RECIPES[recipe], seed=4)
    dec = native.NativeDecoder(qmodel)
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    rec = QuantizeRecorder(monkeypatch)
    tie_flipped = 0
    for batch, length in PREFILL_SHAPES:
        ids = torch.randint(0, qmodel.cfg.vocab_size, (batch, length), generator=gen)
        dec.reset(batch)
        traces = dec.trace_buffers(length)
        logits = dec.prefill(ids, traces)
        assert dec.isa == isa and logits.data_ptr() == dec.logits.data_ptr()
        ref_logits, ref_conv, ref_ssm, ref_layers = reference_prefill_traces(qmodel, ids, rec)
        if first_difference_is_a_tie(traces, ref_layers, f"b={batch} l={length}"):
            tie_flipped += 1
            continue
        assert_logits_close(logits, ref_logits, qmodel, rec)
        rel_close(dec.ssm_state, ref_ssm)
        assert torch.equal(dec.conv_state, ref_conv), f"b={batch} l={length}: conv state"
    assert tie_flipped <= 1, f"rounding ties flipped in {tie_flipped} of {len(PREFILL_SHAPES)} prompts"


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_prefill_then_decode_matches_the_reference(isa, supported, monkeypatch):
    """Native prefill, then native steps from the states it left (in place), against the reference's prefill and
    steps: logits and states within 1e-5 at every step; the states equal stepping the prompt token by token."""
    isa_param(isa, supported)
    monkeypatch.setenv("QUAMBA_EDGE_ISA", isa)
    qmodel = quantized(CONFIGS["k12-n8-bias"], RECIPES["int8-head"], seed=5)
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    ids = torch.randint(0, qmodel.cfg.vocab_size, (2, 40 + 6), generator=gen)
    prompt, steps = ids[:, :40], ids[:, 40:]
    dec = native.NativeDecoder(qmodel, batch=2)
    rec = QuantizeRecorder(monkeypatch)
    traces = dec.trace_buffers(prompt.shape[1])
    dec.prefill(prompt, traces)
    ref_logits, conv, ssm, ref_layers = reference_prefill_traces(qmodel, prompt, rec)
    if first_difference_is_a_tie(traces, ref_layers, "prompt"):
        pytest.skip("a rounding tie went the other way in this prompt (asserted); rerun draws another")
    assert_logits_close(dec.logits, ref_logits, qmodel, rec)
    by_steps = native.NativeDecoder(qmodel, batch=2)
    for t in range(prompt.shape[1]):
        by_steps.step(prompt[:, t])
    assert torch.equal(dec.conv_state, by_steps.conv_state) and torch.equal(dec.ssm_state, by_steps.ssm_state)
    assert torch.equal(dec.logits, by_steps.logits)
    traces, compared = dec.trace_buffers(), 0
    for t in range(steps.shape[1]):
        _, conv, ssm, ok = traced_step_matches(dec, qmodel, rec, steps[:, t], conv, ssm, traces, f"step {t}")
        compared += ok
    assert compared >= steps.shape[1] - 1, "rounding ties flipped in most steps: more than chance allows"


def test_native_runners_share_the_decoder_states(supported):
    """families.mamba.native(): the prefill runner is native and leaves its states in the decoder, which the
    decode runner, fed them back, steps in place (no copy); both agree with the PyTorch reference."""
    from quamba_edge.backends.native import NativeDecodeRunner, NativePrefillRunner
    from quamba_edge.families.mamba import native as native_runners

    qmodel = quantized(CONFIGS["k1-n16"], RECIPES["quamba"], seed=6)
    runners, _, _ = native_runners(qmodel)
    assert isinstance(runners["prefill"], NativePrefillRunner) and isinstance(runners["decode"], NativeDecodeRunner)
    dec = runners["decode"].decoder
    assert runners["prefill"].decoder is dec
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    ids = torch.randint(0, qmodel.cfg.vocab_size, (2, 20), generator=gen)
    out = runners["prefill"].infer({"input_ids": ids[:, :17].numpy()})
    assert out["conv_state"] is dec.conv_state and out["ssm_state"] is dec.ssm_state
    assert out["logits"].shape == (2, qmodel.cfg.vocab_size) and out["logits"].dtype == np.float32
    with torch.no_grad():
        ref_logits, conv, ssm = qmodel.step(ids[:, :17])
    rel_close(torch.from_numpy(out["logits"]), ref_logits[:, -1], rtol=1e-4)  # 1e-4: a tie may flip (see above)
    for t in range(17, 20):
        conv_ptr = dec.conv_state.data_ptr()
        out = runners["decode"].infer({"input_ids": ids[:, t:t + 1].numpy(), "conv_state_in": out["conv_state"],
                                       "ssm_state_in": out["ssm_state"]})
        assert dec.conv_state.data_ptr() == conv_ptr  # stepped in place
        with torch.no_grad():
            ref_logits, conv, ssm = qmodel.step(ids[:, t:t + 1], conv, ssm)
        rel_close(torch.from_numpy(out["logits"]), ref_logits[:, -1], rtol=1e-4)


def test_bad_choices_are_refused_with_the_fix(supported, monkeypatch):
    qmodel = quantized(CONFIGS["k1-n16"], RECIPES["quamba"])
    foreign = "neon" if "neon" not in supported else "avx2"
    monkeypatch.setenv("QUAMBA_EDGE_ISA", foreign)
    with pytest.raises(RuntimeError, match=f"QUAMBA_EDGE_ISA={foreign} cannot run on this CPU; it can run: scalar"):
        native.NativeDecoder(qmodel)
    monkeypatch.setenv("QUAMBA_EDGE_ISA", "sse9")
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        native.isa()
    monkeypatch.delenv("QUAMBA_EDGE_ISA")
    with pytest.raises(ValueError, match="needs a model quantized with --int8-head"):
        native.NativeDecoder(qmodel, head="int8")
    dec = native.NativeDecoder(qmodel)
    with pytest.raises(ValueError, match="call reset"):
        dec.step(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        dec.step(torch.tensor([256]))


# ------------------------------------------------------------------------------ standalone C++ test


def _build_and_run(compiler: str, out, extra: list[str], runner: list[str]) -> str:
    sources = [str(native.NATIVE_DIR / "test_native.cpp"), *map(str, native.source_files())]
    build = subprocess.run([compiler, *CXX_FLAGS, *extra, "-I", str(native.CSRC / "include"), *sources, "-o", str(out)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    seed = str(random.randrange(2**31))
    result = subprocess.run([*runner, str(out), seed], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"seed {seed}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
    return result.stdout


def test_standalone_cpp_test_on_every_path_here(tmp_path, supported):
    out = _build_and_run(os.environ.get("CXX", "g++"), tmp_path / "test_native", [], [])
    assert out.split("tested:")[1].split() == supported


AARCH64_CXX = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64")


@pytest.mark.skipif(AARCH64_CXX is None or QEMU is None,
                    reason="needs g++-aarch64-linux-gnu and qemu-user (apt-get install both)")
def test_neon_dotprod_path_under_qemu(tmp_path):
    """The ARM build (the Jetson's CPU path): vdotq_s32 GEMVs exact, decoder bit-identical to scalar."""
    out = _build_and_run(AARCH64_CXX, tmp_path / "test_native_a64", ["-static"], [QEMU, "-cpu", "max"])
    assert out.split("tested:")[1].split() == ["scalar", "neon"]


def test_build_engine_native_runs_in_bench_with_check(tmp_path, supported):
    """`build-engine ART --backend native`: parity judged on every decode step (1e-2 at most; measured far
    below), the engine holds a verified copy of the artifact, and `bench --check` times it with the same loop
    as ONNX Runtime and agrees with the PyTorch reference. An fp model, a CUDA device or an edited artifact copy
    is refused with the fix."""
    import json

    from typer.testing import CliRunner

    from quamba_edge.artifact import save_artifact
    from quamba_edge.checkpoints.mamba import save_checkpoint
    from quamba_edge.cli import app
    from quamba_edge.engine import NATIVE_TOLERANCE, build_engine
    from quamba_edge.errors import QuambaEdgeError

    cfg = CONFIGS["k1-n16"]
    qmodel = quantized(cfg, make_recipe("quamba"))
    art = save_artifact(qmodel, tmp_path / "art", family="mamba", recipe=qmodel.recipe, source={"model": "t"})
    build = build_engine(art, tmp_path / "eng", backend="native", head="fp16")  # the paper's 16-bit head
    parity = build["parity"]
    decode_cases = [c for c in parity["cases"] if c["case"].startswith("decode")]
    assert parity["passed"] and decode_cases and all(c["judged"] for c in decode_cases)
    assert max(c["rel_error"] for c in decode_cases) < NATIVE_TOLERANCE / 100  # 2e-4 seen with the fp16 head
    assert build["native"]["head"] == "fp16" and (tmp_path / "eng" / "artifact" / "manifest.json").exists()

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", str(art), str(tmp_path / "eng"), "--prompt-len", "8", "--gen-len", "4",
                                   "--repeats", "1", "--check", "--json", str(out)])
    assert res.exit_code == 0, res.output
    ref, nat = json.loads(out.read_text())["results"]
    assert nat["system"].startswith("native-int8") and "fp16 head" in nat["system"]
    assert nat["decode_tok_s"] > 0 and nat["check"]["passed"]

    int8_head = quantized(cfg, make_recipe("quamba", int8_head=True))
    art8 = save_artifact(int8_head, tmp_path / "art8", family="mamba", recipe=int8_head.recipe, source={})
    assert build_engine(art8, tmp_path / "eng8", backend="native")["native"]["head"] == "int8"
    with pytest.raises(QuambaEdgeError, match="calibrated with an int8 lm_head"):
        build_engine(art8, tmp_path / "eng8b", backend="native", head="bf16")
    save_checkpoint(make_model(cfg), tmp_path / "fp")
    with pytest.raises(QuambaEdgeError, match="runs int8 artifacts.*calibrate"):
        build_engine(tmp_path / "fp", tmp_path / "eng-fp", backend="native")
    res = CliRunner().invoke(app, ["bench", str(tmp_path / "eng"), "--device", "cuda"])
    assert res.exit_code == 2 and "runs on --device cpu" in res.output
    manifest = tmp_path / "eng" / "artifact" / "manifest.json"
    manifest.unlink()  # a hard link: replace, never edit in place (that would edit the source artifact too)
    manifest.write_text((art / "manifest.json").read_text().replace('"t"', '"u"'))
    res = CliRunner().invoke(app, ["bench", str(tmp_path / "eng")])
    assert res.exit_code == 2 and "not the artifact this engine was built from" in " ".join(res.output.split())


def test_generate_takes_the_native_decoder_and_says_so(tmp_path, supported):
    """`generate` on an int8 artifact decodes natively by default, names the path it took, and gives the
    PyTorch reference's greedy tokens."""
    from typer.testing import CliRunner

    from quamba_edge.artifact import save_artifact
    from quamba_edge.cli import app

    qmodel = quantized(CONFIGS["k1-n16"], make_recipe("quamba"))
    art = save_artifact(qmodel, tmp_path / "art", family="mamba", recipe=qmodel.recipe, source={"model": "t"})
    runs = {b: CliRunner().invoke(app, ["generate", str(art), "--max-new-tokens", "12", "--backend", b])
            for b in ("auto", "pytorch")}
    assert all(r.exit_code == 0 for r in runs.values()), runs
    assert "; native " in runs["auto"].output and "; PyTorch)" in runs["pytorch"].output
    assert runs["auto"].stdout == runs["pytorch"].stdout  # the same tokens
