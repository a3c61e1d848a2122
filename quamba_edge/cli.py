"""`quamba-edge`: calibrate, eval, generate, build-engine, bench, doctor. A thin layer over the library."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from quamba_edge import __version__
from quamba_edge.errors import QuambaEdgeError

app = typer.Typer(
    help="int8 for Mamba (the Quamba recipe), wav2vec 2.0 keyword spotters and AdaPool set models: calibrate a "
         "checkpoint, measure its quality, build an engine (ONNX Runtime, TensorRT), benchmark it.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def user_errors():
    """A QuambaEdgeError is the user's to fix: print it plainly and exit 2, no traceback."""
    try:
        yield
    except QuambaEdgeError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False,
    )


def _table(title: str, columns: list[str], rows) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


ModelArg = Annotated[
    str, typer.Option("--model", "-m", help="`default` (bundled), a checkpoint directory, or a hub id.")
]
Threads = Annotated[int, typer.Option(min=0, help="CPU threads for torch (0: torch's default).")]
TokenizerOpt = Annotated[str | None, typer.Option(
    "--tokenizer", help="Mamba: a tokenizer.json, a directory holding one, or a hub id (the state-spaces/mamba-* "
                        "checkpoints use EleutherAI/gpt-neox-20b, which their repositories do not carry). "
                        "Default: the checkpoint's or artifact's own tokenizer.json, else bytes.")]


@app.command()
def calibrate(
    model: ModelArg = "default",
    recipe: Annotated[str, typer.Option(help="fp | naive | quamba.")] = "quamba",
    data: Annotated[str, typer.Option(help="Calibration text: a file, a directory of *.txt, or `default` "
                                           "(the Austen training novels). Set models: an .npz of sets.")] = "default",
    samples: Annotated[int, typer.Option(min=1, help="Calibration sequences (or sets), taken in file order.")] = 512,
    seq_len: Annotated[int, typer.Option(min=2, help="Tokens per calibration sequence.")] = 512,
    percentile: Annotated[float, typer.Option(help="Quantile of |u| for the SSM input scale (quamba).")] = 0.99999,
    hadamard: Annotated[bool, typer.Option("--hadamard/--no-hadamard",
                                           help="Rotate the scan output before out_proj (quamba).")] = True,
    percentile_clip: Annotated[bool, typer.Option("--percentile-clip/--no-percentile",
                                                  help="Clip the SSM input at --percentile (quamba).")] = True,
    weight_granularity: Annotated[str, typer.Option(help="tensor | channel.")] = "tensor",
    int8_head: Annotated[bool, typer.Option("--int8-head/--fp-head",
                                            help="Also make the lm_head int8 (per-channel; Mamba and Mamba-2). "
                                                 "Not part of the paper's recipe; faster CPU decode; its quality "
                                                 "is measured by `eval`.")] = False,
    int8_conv_features: Annotated[bool, typer.Option(
        "--int8-conv-features/--float-conv-features",
        help="Speech models: also make the wav2vec 2.0 conv feature encoder int8. Off by default: it cost our "
             "keyword spotters 4-27 points on clean input (see `eval`).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")] = 8,
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")] = Path("out/quamba"),
    threads: Threads = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON instead of tables.")] = False,
    tokenizer: TokenizerOpt = None,
    device: Annotated[str, typer.Option(help="Where the calibration forward passes run: cpu | cuda (Mamba).")] = "cpu",
    dtype: Annotated[str, typer.Option(help="Their compute dtype: fp32 | fp16 | bf16 (Mamba). Scales are computed "
                                            "in fp32 and int8 weights from the checkpoint's own whatever "
                                            "this is.")] = "fp32",
):
    """Calibrate a checkpoint and write an int8 artifact (manifest.json + weights.safetensors).

    The model family comes from the checkpoint: Mamba (text calibration, the recipes below); a keyword
    spotter (--data: a directory of WAV files, or `default`: a digit spotter's own FSDD training speakers,
    the 16-keyword spotters' synthetic keywords; static W8A8 of every linear layer and the positional
    conv); or a set model (--data SETS.npz; static W8A8 of every linear layer).
    For the last two, naive and quamba both mean static W8A8 (Quamba's switches are Mamba's).
    """
    from quamba_edge import pipeline
    from quamba_edge.quant.recipes import check_name

    _threads(threads)
    with user_errors():
        check_name(recipe)
        start = time.perf_counter()
        with _progress() as progress:
            task = progress.add_task(f"calibrating {model}", total=samples if recipe != "fp" else 0)
            path, manifest = pipeline.calibrate(
                model, recipe, data, samples, seq_len, out, batch_size, on_batch=lambda n: progress.advance(task, n),
                hadamard=hadamard, percentile_clip=percentile_clip, percentile=percentile,
                weight_granularity=weight_granularity, int8_head=int8_head, int8_conv_features=int8_conv_features,
                tokenizer=tokenizer, device=device, dtype=dtype)
        seconds = time.perf_counter() - start
    if json_out:
        print(json.dumps(manifest, indent=2))
        return
    if manifest["scales"]:
        from quamba_edge.families.registry import by_name

        console.print(_table(f"{by_name(manifest['family']).scales_title} ({manifest['recipe_label']})",
                             ["#", *manifest["scales"][0]],
                             ([str(i), *(_scale_cell(v) for v in row.values())]
                              for i, row in enumerate(manifest["scales"]))))
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    rate = (manifest.get("calibration") or {}).get("tokens_per_s")
    console.print(f"[green]wrote[/] {path}  ({size:.1f} MiB, recipe {manifest['recipe_label']}, {seconds:.1f} s"
                  + (f", calibration {rate:,.0f} tokens/s on {device} in {dtype}" if rate else "") + ")")


@app.command("eval")
def eval_cmd(
    models: Annotated[list[str], typer.Argument(help="Artifact directories, `default`, checkpoint dirs or hub ids; "
                                                     "several digit spotters (one per held-out speaker) also get "
                                                     "the leave-one-speaker-out table.")],
    data: Annotated[str, typer.Option(help="Evaluation text; `default-heldout` is Persuasion, never used "
                                           "for training or calibration. Digit spotters: `fsdd` (every FSDD "
                                           "speaker the model never heard + the Asterisk speaker), "
                                           "`fsdd:NAME`, `asterisk-en`.")] = "default-heldout",
    seq_len: Annotated[int, typer.Option(min=2, help="Tokens per evaluation window.")] = 512,
    max_samples: Annotated[int, typer.Option(min=0, help="Evaluate at most this many windows (0: all; speech: "
                                                         "trials per condition).")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 8,
    threads: Threads = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    tokenizer: TokenizerOpt = None,
):
    """Measure bits per byte and next-token accuracy on held-out text (set models: MSE on an .npz of sets;
    keyword spotters: accuracy at every SNR and noise on real speakers they never heard)."""
    from quamba_edge import pipeline
    from quamba_edge.families.registry import load

    _threads(threads)
    results, family = [], None
    for model in models:
        with user_errors():
            loaded = load(model)
            loaded.tokenizer = tokenizer
            family = loaded.family
            with _progress() as progress:
                task = progress.add_task(f"evaluating ({loaded.label})", total=None)
                result = pipeline.evaluate(loaded, data, seq_len, max_samples or None,
                                           batch_size, on_batch=lambda n, task=task: progress.advance(task, n))
        result["model"] = str(model)
        results.append(result)
        if not json_out:
            console.print(_table(f"quality of {model}", [col.header for col in family.eval_columns],
                                 ([col.cell(row) for col in family.eval_columns] for row in family.eval_rows(result))))
            if "data" in result and all(col.key != "data" for col in family.eval_columns):
                console.print(f"data: {result['data']}")
    summary = getattr(family, "eval_summary", lambda results: None)(results)
    if json_out:
        payload = results[0] if len(results) == 1 else {"results": results}
        if summary:
            payload = {**payload, "summary": {"title": summary[0], "rows": summary[1]}}
        print(json.dumps(payload, indent=2))
    elif summary:
        title, rows = summary
        console.print(_table(title, [col.header for col in family.eval_columns],
                             ([col.cell(row) for col in family.eval_columns] for row in rows)))


@app.command()
def generate(
    model: Annotated[str, typer.Argument(help="An artifact directory, `default`, a checkpoint dir or a hub id.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "It is a truth universally acknowledged",
    max_new_tokens: Annotated[int, typer.Option(min=0, help="Tokens to generate.")] = 200,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    seed: int = 0,
    threads: Threads = 0,
    tokenizer: TokenizerOpt = None,
    backend: Annotated[str, typer.Option(help="auto (the native CPU decoder for int8 artifacts where it builds, "
                                              "else PyTorch) | native | pytorch. The last line says which ran.")
                       ] = "auto",
):
    """Continue a prompt (prefill once, then decode from the explicit state), for a person to read."""
    from quamba_edge.evaluate import generate as generate_tokens
    from quamba_edge.families.registry import load

    _threads(threads)
    with user_errors():
        loaded = load(model)
        if not loaded.family.generates:
            raise QuambaEdgeError(f"{model} is a {loaded.family.name} model; `generate` continues text with a "
                                  "language model. Fix: pass a Mamba checkpoint or artifact.")
        loaded.tokenizer = tokenizer
        tok = loaded.family.tokenizer(loaded)
        ids = tok.encode(prompt)
        if len(ids) == 0:
            raise QuambaEdgeError("the prompt is empty; pass some text with --prompt.")
        runners, runs_on = _fastest(loaded, backend)
        start = time.perf_counter()
        out = generate_tokens(runners, ids, max_new_tokens, temperature, seed) if max_new_tokens else []
        seconds = time.perf_counter() - start
    console.print(f"[bold]{escape(prompt)}[/]{escape(tok.decode(out))}", highlight=False)
    err_console.print(f"[dim]{len(out)} tokens in {seconds:.2f} s ({loaded.label}; {runs_on})[/]")


def _scale_cell(v) -> str:
    """A scale (float), a range of per-channel scales ([smallest, largest]) or anything else, for a table cell."""
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list) and all(isinstance(x, float) for x in v):
        return "-".join(f"{x:.3g}" for x in v)
    return str(v)


def _fastest(loaded, backend: str) -> tuple[dict, str]:
    """generate's runners: `auto` takes the native CPU decoder for an int8 model whose family has one (falling
    back to PyTorch, with the reason, when it cannot build here), else the PyTorch model."""
    family, reason = loaded.family, None
    if backend in ("auto", "native") and "native" in family.backends and loaded.recipe.quantize:
        try:
            runners, _, detail = family.native(loaded.model, None)
            return runners, f"native {detail}"
        except Exception as exc:  # a compiler problem here: PyTorch gives the same tokens, slower
            if backend == "native":
                raise QuambaEdgeError(f"the native decoder could not be used ({exc}). Fix: install a C++ "
                                      "compiler and ninja, or pass --backend pytorch.") from exc
            reason = f"native decoder unavailable: {str(exc).strip().splitlines()[-1][:120]}"
    elif backend == "native":
        raise QuambaEdgeError("--backend native decodes int8 artifacts of the families that have it. Fix: "
                              "calibrate first, or pass --backend pytorch.")
    return family.reference(loaded.model), "PyTorch" + (f" ({reason})" if reason else "")


def _board_budget(target: str) -> tuple[str, float] | None:
    """A Jetson profile's usable memory (85%: the rest is the OS, CUDA and the runtime), else None."""
    from quamba_edge.bench.devices import PROFILES, USABLE_FRACTION

    profile = PROFILES.get(target)
    return None if profile is None else (target, profile.memory_gb * 1e9 * USABLE_FRACTION)


@app.command("build-engine")
def build_engine_cmd(
    model: Annotated[str, typer.Argument(help="A calibrated artifact (int8), or `default` / a checkpoint (fp).")],
    backend: Annotated[str, typer.Option(help="ort (ONNX Runtime) | tensorrt (TensorRT 10) | native (int8 Mamba "
                                              "decode on csrc/cpu/native: this CPU's exact int8 path, AVX-512 VNNI, "
                                              "AVX-VNNI, AVX2, NEON or scalar; QUAMBA_EDGE_ISA forces one).")] = "ort",
    target: Annotated[str, typer.Option(help="ort: cpu | cuda.  tensorrt: cuda or a Jetson profile "
                                             "(orin-nano-8gb, ...).")] = "cpu",
    precision: Annotated[str | None, typer.Option(help="fp32 | fp16 for fp models; int8 artifacts stay int8.")] = None,
    out: Annotated[Path, typer.Option(help="Engine directory to write.")] = Path("out/engine"),
    max_prompt: Annotated[int, typer.Option(min=1, help="Mamba: longest prompt the engine accepts (its "
                                                        "profile).")] = 2048,
    max_batch: Annotated[int, typer.Option(min=1, help="Largest batch (a TensorRT profile; Mamba engines "
                                                       "hold to it on ONNX Runtime too).")] = 8,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for the parity check.")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print build.json instead of tables.")] = False,
    plugins: Annotated[str, typer.Option(help="TensorRT int8: auto | on | off. On: each layer's conv and scan run "
                                              "as csrc/ plugins (libquamba_edge_trt.so); auto: when it is "
                                              "built.")] = "auto",
    max_clip_s: Annotated[float, typer.Option(min=0.01, help="Speech models: longest clip (seconds) the engine "
                                                             "accepts.")] = 2.0,
    max_set_size: Annotated[int, typer.Option(min=1, help="Set models: largest set the engine accepts (its "
                                                          "TensorRT profile).")] = 512,
    head: Annotated[str | None, typer.Option(help="--backend native: the lm_head's weights, fp32 | fp16 | bf16 | "
                                                  "int8 (default: int8 if the artifact has one, else fp32).")] = None,
):
    """Export the model's graphs, build the engine, and check it against PyTorch.

    Mamba has two graphs (prefill.onnx, decode.onnx), keyword spotters and set models one (model.onnx);
    --backend tensorrt adds TensorRT plans. build.json records versions, checksums and the parity
    figures. A build whose outputs disagree with the PyTorch reference beyond the parity tolerances
    (fp32 1e-5, fp16 1e-3, int8 layer by layer) fails and writes nothing.
    """
    from quamba_edge.engine import build_engine

    _threads(threads)
    with user_errors():
        start = time.perf_counter()
        with err_console.status("building") as status:
            build = build_engine(model, out, backend=backend, target=target, precision=precision, threads=threads,
                                 plugins=plugins, progress=status.update, memory_budget=_board_budget(target),
                                 head=head,
                                 max_batch=max_batch, max_prompt=max_prompt, max_clip_s=max_clip_s,
                                 max_set_size=max_set_size)
        seconds = time.perf_counter() - start
    if json_out:
        print(json.dumps(build, indent=2))
        return
    console.print(_table(f"parity of the {build['precision']} engine vs PyTorch ({backend}, {target})",
                         ["case", "tensor", "error", "judged"],
                         ([c["case"], c["tensor"], f"{c['rel_error']:.2e} rel" if "rel_error" in c else
                           f"{c['mismatch']:.2%} int8 differ, max {c['max_step']} step",
                           "yes" if c["judged"] else "recorded"] for c in build["parity"]["cases"])))
    for graph, info in (build.get("ort_kernels") or {}).items():
        kernels = ", ".join(f"{op} x{n}" for op, n in info["integer_kernels"].items()) or "none"
        floats = info["float_matmuls"]
        console.print(f"{graph}: integer kernels in ONNX Runtime: {kernels}; float MatMul/Gemm: {floats}")
    console.print(f"[green]wrote[/] {out}  ({build['precision']}, parity passed, {seconds:.1f} s)")


@app.command()
def bench(
    systems: Annotated[list[str], typer.Argument(help="Engine directories (from build-engine), artifacts or "
                                                      "`default` (PyTorch eager).")],
    device: Annotated[str, typer.Option(help="cpu | cuda | orin (the Jetson this runs on) | a Jetson "
                                             "profile.")] = "cpu",
    prompt_len: Annotated[int, typer.Option(min=1, help="Prompt tokens.")] = 1024,
    gen_len: Annotated[int, typer.Option(min=2, help="Generated tokens (the first comes from the prompt).")] = 128,
    batch: Annotated[int, typer.Option(min=1, help="Sequences decoded together.")] = 1,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads (one thread for fair CPU comparisons).")] = 1,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs after one warm-up; medians are reported.")] = 3,
    estimate_only: Annotated[bool, typer.Option("--estimate", help="Roofline estimate for a Jetson profile "
                                                                    "instead of a measurement.")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results (with the machine) here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of per-token latency over the generation.")] = None,
    kernels: Annotated[bool, typer.Option("--kernels", help="Run quantized PyTorch models through the csrc/ "
                                                            "kernel ops (CUDA, else the CPU twins).")] = False,
    set_size: Annotated[int, typer.Option(min=1, help="Set models: elements per set (their latency is per batch of "
                                               "--batch sets).")] = 128,
    power: Annotated[bool, typer.Option("--power", help="Sample the Jetson's board power (INA3221) during the run: "
                                                        "average W and J per token.")] = False,
    clip_s: Annotated[float, typer.Option(min=0.01, help="Speech models: seconds of audio per clip (latency per "
                                                         "clip and the real-time factor).")] = 1.0,
    low_memory: Annotated[bool, typer.Option("--low-memory", help="ONNX Runtime engines without pre-packed weight "
                                                                  "copies: resident memory near the weights' size, "
                                                                  "slower matmuls.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Also compare every system's outputs with the first "
                                                        "system's on the same inputs (judged when both compute in "
                                                        "the same float precision); exit 1 on a failure.")] = False,
):
    """Time to first token, time per output token and tokens/s, the same loop for every backend."""
    from quamba_edge.bench import report
    from quamba_edge.bench.devices import PROFILES, resolve_profile
    from quamba_edge.bench.roofline import paper_comparison

    with user_errors():
        if device not in ("cpu", "cuda") and (device in PROFILES or device == "orin"):
            on_jetson = report.on_jetson(device)
            if estimate_only or not on_jetson:
                if not estimate_only:
                    raise QuambaEdgeError(
                        f"--device {device}: this machine is not that Jetson, so nothing can be measured here. "
                        f"Fix: add --estimate for a roofline estimate of {device}, or run bench on the device."
                    )
                profile = resolve_profile(device if device != "orin" or on_jetson else "orin-nano-8gb")
                rows = report.estimates(systems, profile, batch, prompt_len, gen_len)
                paper = paper_comparison(profile) if profile.name.startswith("orin-nano") else None
                report.print_estimates(console, rows, profile, paper)
                report.write_json(json_path, {"estimates": rows, "profile": profile.to_dict(), "paper": paper})
                return
        elif device not in ("cpu", "cuda"):
            raise QuambaEdgeError(f"unknown device {device!r}; known: cpu, cuda, orin, {', '.join(PROFILES)}.")
        elif estimate_only:
            raise QuambaEdgeError("--estimate needs a Jetson profile, e.g. --device orin-nano-8gb.")
        measured, first = [], None
        with _progress() as progress:
            for spec in systems:
                task = progress.add_task(f"bench {spec}", total=repeats)
                row, work, system = report.measure_system(
                    spec, device, threads, repeats, on_repeat=lambda t=task: progress.advance(t), kernels=kernels,
                    power=power, against=first if check else None, prepack=not low_memory, batch=batch,
                    prompt_len=prompt_len,
                    gen_len=gen_len, set_size=set_size, clip_s=clip_s)
                measured.append((row, work))
                if check and first is None:  # what every later system is compared with, computed once
                    first = (system, work, work.outputs(system))
    report.print_measurements(console, measured)
    results = [row for row, _ in measured]
    checks_passed = report.print_checks(console, results)
    if check and len(results) < 2:
        console.print("[yellow]--check compares systems with the first one; pass two or more systems.[/]")
    report.write_json(json_path, {"results": results, "machine": report.machine(device)})
    if json_path:
        console.print(f"wrote {json_path}")
    curves = [r for r in results if "tpot_curve_ms" in r]
    if plot and curves:
        report.plot_tpot(curves, plot)
        console.print(f"wrote {plot}")
    elif plot:
        console.print("[yellow]no plot[/]: --plot draws per-token latency, which only generating (Mamba) models have")
    if not checks_passed:
        raise typer.Exit(1)


@app.command()
def spot(
    model: Annotated[str, typer.Argument(help="A keyword spotter: checkpoint, int8 artifact or engine directory.")],
    files: Annotated[list[Path], typer.Argument(help="Audio files: WAV in any layout libsndfile reads (PCM, float, "
                                                     "extensible), FLAC, OGG; any rate (resampled to the model's); "
                                                     "mono.")],
    mix_to_mono: Annotated[bool, typer.Option("--mix-to-mono", help="Average the channels of stereo files "
                                                                     "instead of refusing them.")] = False,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads.")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
):
    """Say which keyword each WAV file holds. A bad file (corrupt, silent, stereo, too long) gets an error
    row and the rest still run; the exit status is 1 when any file failed."""
    from quamba_edge.spot import open_spotter, spot_files

    _threads(threads)
    with user_errors():
        runner = open_spotter(model, threads)
        results = spot_files(runner, files, mix_to_mono)
    if json_out:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        console.print(_table(f"keywords ({runner.label})", ["file", "keyword", "confidence", "seconds", "error"],
                             ([escape(r.file), r.keyword or "-",
                               f"{r.confidence:.2f}" if r.confidence is not None else "-",
                               f"{r.seconds:.2f}" if r.seconds is not None else "-", escape(r.error or "")]
                              for r in results)))
    if any(r.error for r in results):
        raise typer.Exit(1)


@app.command()
def doctor(
    root: Annotated[Path | None, typer.Option(help="Read /proc, /sys and /etc under this directory (a copy of a "
                                                   "Jetson's, for checking).")] = None,
):
    """Print what this machine has for quamba-edge (versions, threads, kernels, the Jetson, the optional pieces)."""
    import torch

    table = _table(f"quamba-edge {__version__}", ["component", "status"], [])
    table.add_row("python", platform.python_version())
    table.add_row("torch", f"{torch.__version__} ({torch.get_num_threads()} threads)")
    table.add_row("CUDA", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available")
    for mod, fix in (("onnxruntime", "pip install onnxruntime"), ("tensorrt", "pip install 'quamba-edge[gpu]'"),
                     ("transformers", "pip install 'quamba-edge[dev]'")):
        try:
            version = __import__(mod).__version__
            table.add_row(mod, version)
        except ImportError:
            table.add_row(mod, f"[yellow]missing[/] ({escape(fix)})")
    table.add_row("kernels", _kernel_status())
    _jetson_status(table, root)
    console.print(table)


def _jetson_status(table: Table, root: Path | None) -> None:
    """Jetson rows (model, L4T/JetPack, power mode and monitor), TensorRT's plugin library, the GPU."""
    import torch

    from quamba_edge.backends.tensorrt import plugin_library
    from quamba_edge.bench.jetson import jetson_info, jetson_rows
    from quamba_edge.bench.power import system_root

    for component, status in jetson_rows(jetson_info(root or system_root())):
        table.add_row(component, status)
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        table.add_row("compute capability", f"sm_{major}{minor} (CUDA {torch.version.cuda})")
    library = plugin_library()
    table.add_row("TensorRT plugins", str(library) if library else
                  "[yellow]not built[/] (fix: `make trt-plugins` where CUDA and the TensorRT headers are)")


def _kernel_status() -> str:
    """Which code runs the int8 kernel ops here (builds csrc/ on the first call, ~20 s here, then cached)."""
    import torch

    from quamba_edge import kernels

    with console.status("building the csrc/ kernels (first run only) ..."):
        state = kernels.load()
    parts = [f"cpu: {kernels.backend('cpu')}"]
    if torch.cuda.is_available():
        parts.append(f"cuda: {kernels.backend('cuda')}")
    if state.error:
        fix = ("unset QUAMBA_EDGE_KERNELS" if "QUAMBA_EDGE_KERNELS" in state.error
               else "install a C++ compiler and `pip install ninja`, run from a checkout with csrc/")
        parts.append(f"[yellow]compiled kernels not loaded[/] ({state.error}; fix: {fix})")
    elif torch.cuda.is_available() and not state.cuda:
        parts.append("[yellow]CUDA kernels not built[/] (fix: install nvcc matching torch's CUDA)")
    return "; ".join(parts)


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
