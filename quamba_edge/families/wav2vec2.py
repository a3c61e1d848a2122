"""wav2vec 2.0 keyword spotters (encoder + one transformer layer + pooling + classifier): speech calibration,
static W8A8 of the linear and conv layers, the one-graph export with layer-by-layer int8 parity, the clip
workload (latency per clip, real-time factor) and accuracy on the real recordings."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from quamba_edge.backends.base import System
from quamba_edge.backends.compare import INT8_END_TO_END, LAYER_TOLERANCE, Case, compare
from quamba_edge.checkpoints.wav2vec2 import FAMILY, is_kws_checkpoint, load_kws
from quamba_edge.data import digits
from quamba_edge.data.digits import ASTERISK_SPEAKER
from quamba_edge.data.speech_sets import calibration_windows, real_test_trials, snr_label
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.export.graph import WeightFile
from quamba_edge.export.wav2vec2 import export_keyword_spotter
from quamba_edge.families import onegraph
from quamba_edge.families.base import Calibration, Column, Compute, Loaded, Progress
from quamba_edge.models.kws import KeywordSpotter, KwsConfig, normalize_window
from quamba_edge.models.wav2vec2 import Wav2Vec2Config
from quamba_edge.quant.quantize import quantize
from quamba_edge.quant.recipes import Recipe
from quamba_edge.train.kws import score, wilson_interval

name = FAMILY
detect, structure = onegraph.detector(FAMILY), onegraph.structurer(KeywordSpotter.from_config)
config = KwsConfig.from_dict
graphs, precisions, backends, generates, scales_title, plugin_pass = onegraph.TRAITS
quant_config, tag, extra_files, state_bytes = onegraph.SHARED
public_shapes: dict = {}  # estimates cover language models
reference, _case = onegraph.one_call(("audio",), "logits")


def load_checkpoint(directory: Path) -> nn.Module:
    if not is_kws_checkpoint(directory):
        raise QuambaEdgeError(f"{directory} is a wav2vec2 encoder without a keyword-spotting head; calibrate, "
                              "build-engine and bench take the deployed model. Fix: fine-tune it first "
                              "(`python benchmarks/kws.py --encoder DIR`), and pass the KWS directory.")
    return load_kws(directory)


def calibrate(loaded: Loaded, recipe: Recipe, data: str, samples: int, seq_len: int, batch_size: int,
              on_batch: Progress | None, compute: Compute) -> Calibration:
    """Static W8A8 of a keyword spotter's linear and conv layers. `default` calibration audio: a digit spotter's
    own training speakers (FSDD windows over the training conditions); the 16-keyword spotters' synthetic speech."""
    compute.require_default(name)
    start = time.perf_counter()
    cfg = loaded.cfg
    if tuple(cfg.labels) == digits.LABELS and str(data) == "default":  # the speakers it was trained on, never others
        speakers = (cfg.trained_on or {}).get("speakers") or []
        if not speakers:
            raise QuambaEdgeError("this digit spotter does not record its training speakers, so `default` cannot "
                                  "pick calibration audio it has heard. Fix: pass --data with a folder of WAV files.")
        windows = torch.from_numpy(digits.calibration_windows(speakers, samples, cfg.window_s))
    else:
        windows = torch.from_numpy(calibration_windows(data, samples, cfg.window_s))
    qmodel, scales = quantize(loaded.model, recipe, [(b,) for b in windows.split(batch_size)], on_batch, data="audio")
    record = {"data": str(data), "samples": len(windows), "window_s": loaded.cfg.window_s,
              "digest": hashlib.sha256(windows.numpy().tobytes()).hexdigest(),
              "seconds": round(time.perf_counter() - start, 2)}
    return Calibration(qmodel, record, scales)


def export(model: nn.Module, graph: str, precision: str, activations: str, probes: bool = False,
           weights: WeightFile | None = None) -> onnx.ModelProto:
    return export_keyword_spotter(model, activations, probes=probes, weights=weights)


def limits(cfg: KwsConfig, *, max_batch: int = 8, max_clip_s: float = 2.0, **_) -> dict:
    """The engine's profile: up to `max_batch` clips of up to `max_clip_s` seconds (as samples)."""
    return {"max_batch": max_batch, "max_samples": int(round(max_clip_s * cfg.sample_rate)),
            "sample_rate": cfg.sample_rate}


def profile(graph: str, cfg: KwsConfig, limits: dict) -> dict[str, tuple]:
    """TensorRT's (min, opt, max) shapes of `audio` (batch, samples): batch 1..max_batch (opt 1); samples from
    the encoder's receptive field (the shortest clip that makes one frame) through the model's window (opt: the
    clips it was trained on, which `spot` pads shorter clips to) to max_samples, or the window if that is longer.
    Raises QuambaEdgeError when max_samples is shorter than the receptive field."""
    field = Wav2Vec2Config.from_dict(cfg.encoder).receptive_field
    window = max(int(round(cfg.window_s * cfg.sample_rate)), field)
    if limits["max_samples"] < field:
        raise QuambaEdgeError(f"--max-clip-s {limits['max_samples'] / cfg.sample_rate:g} is shorter than the encoder's "
                              f"receptive field ({field} samples, {field / cfg.sample_rate:g} s): no clip would "
                              f"make a frame. Fix: pass --max-clip-s {cfg.window_s:g} (the model's window).")
    b_min, b_opt, b_max = onegraph.batch_range(limits)
    return {"audio": ((b_min, field), (b_opt, window), (b_max, max(limits["max_samples"], window)))}


def _audio(model: nn.Module, samples: int | None, seed: int, batch: int) -> torch.Tensor:
    """Speech-like audio (batch, samples; default one window), float32: noise with a syllable-rate (4 Hz) envelope."""
    samples = samples or int(round(model.cfg.window_s * model.cfg.sample_rate))
    gen = torch.Generator().manual_seed(seed)
    envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 4.0 * (torch.arange(samples) / 16000.0))
    return (torch.randn(batch, samples, generator=gen) * 0.1 * envelope).float()


def parity(model: nn.Module, precision: str, limits: dict | None = None, *, seed: int = 0, batch: int = 2,
           samples: int | None = None) -> Iterator[Case]:
    """The logits on random speech-like audio (`samples` long, default one window; batch and length held to
    the engine's `limits`). fp32 is judged at 1e-5; int8 end to end at INT8_END_TO_END (a rounding tie
    resolved the other way grows through the layers; ONNX Runtime engines are also judged layer by layer,
    `layer_parity`, and a TensorRT engine, which has no probe graph, is judged here)."""
    limits = limits or {}
    batch = min(batch, limits.get("max_batch", batch))
    samples = samples or int(round(model.cfg.window_s * model.cfg.sample_rate))
    samples = min(samples, limits.get("max_samples", samples))
    feeds = {"audio": _audio(model, samples, seed, batch).numpy()}
    if precision != "int8":
        yield _case(model, f"audio b={batch}", feeds, precision)
        return
    ref = reference(model)["model"](feeds)["logits"]
    yield Case(f"audio b={batch}", "model", feeds,
               lambda out: [compare(f"audio b={batch}", "logits (end to end)", out["logits"], ref, INT8_END_TO_END)])


def layer_parity(model: nn.Module, *, seed: int = 0, batch: int = 2, samples: int | None = None) -> Iterator[Case]:
    """int8, on the probe graph: each probe (every conv layer, the embedding, every transformer layer, the
    head layer) is compared with the PyTorch layer fed the graph's previous probe, so a tie resolved the
    other way is not amplified by the layers after it. End-to-end logits and top-1 agreement are recorded."""
    audio = _audio(model, samples, seed, batch)

    @torch.no_grad()
    def judge(out: dict) -> list[dict]:
        logits = model(audio)
        rows = [{**compare(f"audio b={batch}", "logits (end to end)", out["logits"], logits, None),
                 "top1_agreement": float((out["logits"].argmax(-1) == logits.argmax(-1).numpy()).mean())}]

        def probe(tensor: str, key: str, ref: torch.Tensor) -> torch.Tensor:  # it then feeds the next layer
            rows.append(compare("layer by layer", tensor, out[key], ref, LAYER_TOLERANCE))
            return torch.from_numpy(out[key])

        enc, head = model.encoder, model.head
        x = normalize_window(audio).unsqueeze(1)
        for i, layer in enumerate(enc.feature_encoder.conv_layers):
            x = probe(f"conv{i}", f"probe_conv{i}", layer(x))
        h = enc.feature_proj(enc.feature_norm(x.transpose(1, 2)))
        h = h + enc.pos_conv(h)
        h = probe("embedding", "probe_embed", h if enc.cfg.layer_norm_first else enc.encoder_norm(h))
        for i, layer in enumerate(enc.layers):
            h = probe(f"layer{i}", f"probe_layer{i}", layer(h))
        if enc.cfg.layer_norm_first:
            h = enc.encoder_norm(h)
        if head.cls is not None:
            h = torch.cat([head.cls.expand(h.shape[0], 1, -1), h], 1)
        h = probe("head layer", "probe_head", head.layer(h))
        probe("logits", "logits", head.classifier(head.norm(head.pool(h))))
        return rows

    yield Case(f"audio b={batch}", "model", {"audio": audio.numpy()}, judge)


def workload(cfg: KwsConfig, *, batch: int, clip_s: float = 1.0, seed: int = 0, **_) -> onegraph.OneCall:
    samples = int(round(clip_s * cfg.sample_rate))
    feeds = {"audio": (0.1 * np.random.default_rng(seed).normal(size=(batch, samples))).astype(np.float32)}

    def check(system: System) -> None:
        limit = system.limits.get("max_samples")
        if limit is not None and samples > limit:
            raise QuambaEdgeError(f"{clip_s} s clips are longer than this engine's profile ({limit / cfg.sample_rate:g}"
                                  f" s). Fix: rebuild with `quamba-edge build-engine ... --max-clip-s {clip_s}`, or "
                                  "bench shorter clips.")

    columns = (
        Column("ms / clip (range)", "ms_per_clip",
               lambda r: "{:.2f} ({:.2f}-{:.2f})".format(r["ms_per_clip"], *(v / r["batch"] for v in r["ms_range"]))),
        Column("real-time factor", "rtf", "{:.4f}"),
    )
    return onegraph.OneCall(feeds, f"speech models: batch {batch} clips of {clip_s:g} s",
                            {"batch": batch, "clip_s": clip_s}, "clip", columns,
                            lambda ms: {"rtf": ms / 1e3 / (clip_s * batch)}, check)


eval_columns = (
    Column("recipe", "recipe"), Column("speaker", "speaker"), Column("SNR dB", "snr_db"),
    Column("noise", "noise", lambda r: r["noise"] if r["snr_db"] != "clean" else "-"),
    Column("accuracy", "accuracy", lambda r: f"{100 * r['accuracy']:.1f}%"),
    Column("95% CI", "ci95", lambda r: "{:.1f}-{:.1f}%".format(*(100 * v for v in r["ci95"]))),
    Column("trials", "trials"),
)


def eval_rows(result: dict) -> list[dict]:
    return [{"recipe": result["recipe"], "speaker": result.get("speaker", "asterisk-en"), **c}
            for c in result["conditions"]]


def eval_summary(results: list[dict]) -> tuple[str, list[dict]] | None:
    """Several digit spotters, each scored on the FSDD speakers it never heard (a leave-one-speaker-out set of
    models): per condition, accuracy pooled over the held-out speakers' trials. None when no result has one."""
    held = [c for r in results for c in r["conditions"] if c["speaker"] != ASTERISK_SPEAKER]
    if len(results) < 2 or not held:
        return None
    rows = []
    for key in dict.fromkeys((c["snr_db"], c["noise"]) for c in held):
        sel = [c for c in held if (c["snr_db"], c["noise"]) == key]
        n = sum(c["trials"] for c in sel)
        k = round(sum(c["accuracy"] * c["trials"] for c in sel))
        acc, lo, hi = wilson_interval(k, n)
        rows.append({"recipe": results[0]["recipe"], "speaker": "+".join(sorted({c["speaker"] for c in sel})),
                     "snr_db": key[0], "noise": key[1], "accuracy": acc, "ci95": [lo, hi], "trials": n})
    return "leave-one-speaker-out: the held-out speakers pooled", rows


def _digit_speakers(cfg: KwsConfig, data: str) -> list[str]:
    """Which speakers `data` means for a digit spotter: `default`/`fsdd` = every FSDD speaker it never heard
    plus the Asterisk speaker; `fsdd:NAME` or `asterisk-en` = that one (refused if it was trained on)."""
    heard = set((cfg.trained_on or {}).get("speakers", []))
    if data in ("default", "default-heldout", "fsdd"):
        if cfg.trained_on is None:
            raise QuambaEdgeError("this digit spotter does not record which speakers it was trained on, so no FSDD "
                                  f"speaker is known to be unseen. Fix: pass --data {ASTERISK_SPEAKER}, or "
                                  "--data fsdd:NAME for a speaker you know it never heard.")
        return [s for s in digits.speakers() if s not in heard] + [ASTERISK_SPEAKER]
    speaker = data.removeprefix("fsdd:")
    if speaker in heard:
        raise QuambaEdgeError(f"this model was trained on {speaker}: scoring it there says nothing about unseen "
                              f"speakers. Fix: pass one it never heard ({', '.join(_digit_speakers(cfg, 'fsdd'))}).")
    if speaker not in (*digits.speakers(), ASTERISK_SPEAKER):
        raise QuambaEdgeError(f"no test speaker {speaker!r}. Fix: --data fsdd, fsdd:NAME "
                              f"({', '.join(digits.speakers())}) or {ASTERISK_SPEAKER}.")
    return [speaker]


@torch.no_grad()
def evaluate(loaded: Loaded, data: str, seq_len: int, max_samples: int | None, batch_size: int,
             on_batch: Progress | None) -> dict:
    """Accuracy at every SNR and noise. A digit spotter (the 12 labels of data/digits.py) is scored on real
    speakers it never heard (`default`/`fsdd`, `fsdd:NAME`, `asterisk-en`; --max-samples trials per condition,
    200 by default); the older 16-keyword spotters on the Asterisk recordings (`default`, 500 trials)."""
    model = loaded.model
    if tuple(model.cfg.labels) == digits.LABELS:
        sets = [(speaker, t) for speaker in _digit_speakers(model.cfg, str(data))
                for t in digits.test_sets(speaker, max_samples or 200, window_s=model.cfg.window_s)]
        described = "FSDD speakers it never heard + the Asterisk English speaker"
    elif str(data) in ("default", "default-heldout"):
        sets = [(ASTERISK_SPEAKER, t) for t in real_test_trials(max_samples or 500, window_s=model.cfg.window_s,
                                                                 labels=model.cfg.labels)]
        described = "asterisk-core-sounds-en-wav (real, one speaker)"
    else:
        raise QuambaEdgeError("this keyword spotter is evaluated on the real recordings: pass --data default.")
    rows = []
    for speaker, trials in sets:
        rows.append({"speaker": speaker, "snr_db": snr_label(trials.snr_db), "noise": trials.noise,
                     **score(model, trials)})
        if on_batch:
            on_batch(len(trials.labels))
    return {"recipe": loaded.label, "data": described, "conditions": rows,
            "accuracy": sum(r["accuracy"] for r in rows) / len(rows)}
