"""`quamba-edge`: calibrate, eval, generate, doctor. A thin layer over `quamba_edge.pipeline`."""

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
    help="Quamba W8A8 for Mamba: calibrate a checkpoint to int8, measure its quality, deploy it.",
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
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False,
    )


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


ModelArg = Annotated[
    str, typer.Option("--model", "-m", help="`default` (bundled), a checkpoint directory, or a hub id.")
]
Threads = Annotated[int, typer.Option(help="CPU threads for torch (0: torch's default).")]


@app.command()
def calibrate(
    model: ModelArg = "default",
    recipe: Annotated[str, typer.Option(help="fp | naive | quamba.")] = "quamba",
    data: Annotated[str, typer.Option(help="Calibration text: a file, a directory of *.txt, or `default` "
                                           "(the Austen training novels).")] = "default",
    samples: Annotated[int, typer.Option(help="Calibration sequences, taken in file order.")] = 512,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration sequence.")] = 512,
    percentile: Annotated[float, typer.Option(help="Quantile of |u| for the SSM input scale (quamba).")] = 0.99999,
    hadamard: Annotated[bool, typer.Option("--hadamard/--no-hadamard",
                                           help="Rotate the scan output before out_proj (quamba).")] = True,
    percentile_clip: Annotated[bool, typer.Option("--percentile-clip/--no-percentile",
                                                  help="Clip the SSM input at --percentile (quamba).")] = True,
    weight_granularity: Annotated[str, typer.Option(help="tensor | channel.")] = "tensor",
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")] = Path("out/quamba"),
    threads: Threads = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON instead of tables.")] = False,
):
    """Calibrate a Mamba checkpoint and write an int8 artifact (manifest.json + weights.safetensors)."""
    from quamba_edge.pipeline import run_calibrate
    from quamba_edge.quant.recipes import make_recipe

    _threads(threads)
    with user_errors():
        try:
            rec = make_recipe(recipe, hadamard=hadamard, percentile_clip=percentile_clip, percentile=percentile,
                              weight_granularity=weight_granularity)
        except ValueError as exc:
            raise QuambaEdgeError(str(exc)) from exc
        start = time.perf_counter()
        with _progress() as progress:
            task = progress.add_task(f"calibrating ({rec.label})", total=samples if rec.quantize else 0)
            path, manifest = run_calibrate(model, rec, data, samples, seq_len, out, batch_size,
                                           on_batch=lambda n: progress.advance(task, n))
        seconds = time.perf_counter() - start
    if json_out:
        print(json.dumps(manifest, indent=2))
        return
    if manifest["scales"]:
        table = Table(title=f"activation scales ({rec.label}); int8 step = scale")
        table.add_column("layer", justify="right")
        for point in manifest["scales"][0]:
            table.add_column(point, justify="right")
        for i, row in enumerate(manifest["scales"]):
            table.add_row(str(i), *(f"{v:.3g}" for v in row.values()))
        console.print(table)
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    console.print(f"[green]wrote[/] {path}  ({size:.1f} MiB, recipe {rec.label}, {seconds:.1f} s)")


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="An artifact directory, `default`, a checkpoint dir or a hub id.")],
    data: Annotated[str, typer.Option(help="Evaluation text; `default-heldout` is Persuasion, never used "
                                           "for training or calibration.")] = "default-heldout",
    seq_len: Annotated[int, typer.Option(help="Tokens per evaluation window.")] = 512,
    max_samples: Annotated[int, typer.Option(help="Evaluate at most this many windows (0: all).")] = 0,
    batch_size: int = 8,
    threads: Threads = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
):
    """Measure bits per byte and next-token accuracy on held-out text."""
    from quamba_edge.pipeline import load_any, run_eval

    _threads(threads)
    with user_errors():
        loaded = load_any(model)
        with _progress() as progress:
            task = progress.add_task(f"evaluating ({loaded.label})", total=None)
            result = run_eval(loaded, data, seq_len, max_samples or None, batch_size,
                              on_batch=lambda n: progress.advance(task, n))
    result["model"] = str(model)
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"quality of {model}")
    for col in ("recipe", "bits/byte", "perplexity", "token acc.", "tokens", "data"):
        table.add_column(col)
    table.add_row(result["recipe"], f"{result['bits_per_byte']:.4f}", f"{result['perplexity']:.3f}",
                  f"{100 * result['token_accuracy']:.2f}%", f"{result['tokens']:,}", result["data"])
    console.print(table)


@app.command()
def generate(
    model: Annotated[str, typer.Argument(help="An artifact directory, `default`, a checkpoint dir or a hub id.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "It is a truth universally acknowledged",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 200,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    seed: int = 0,
    threads: Threads = 0,
):
    """Continue a prompt (prefill once, then decode from the explicit state), for a person to read."""
    from quamba_edge.evaluate import generate as generate_tokens
    from quamba_edge.pipeline import load_any

    _threads(threads)
    with user_errors():
        loaded = load_any(model)
        ids = loaded.tokenizer.encode(prompt)
        if len(ids) == 0:
            raise QuambaEdgeError("the prompt is empty; pass some text with --prompt.")
        start = time.perf_counter()
        out = generate_tokens(loaded.model, ids, max_new_tokens, temperature, seed)
        seconds = time.perf_counter() - start
    console.print(f"[bold]{prompt}[/]{loaded.tokenizer.decode(out)}", highlight=False)
    err_console.print(f"[dim]{len(out)} tokens in {seconds:.2f} s ({loaded.label})[/]")


@app.command()
def doctor():
    """Print what this machine has for quamba-edge (versions, threads, the optional pieces)."""
    import torch

    table = Table(title=f"quamba-edge {__version__}")
    table.add_column("component")
    table.add_column("status")
    table.add_row("python", platform.python_version())
    table.add_row("torch", f"{torch.__version__} ({torch.get_num_threads()} threads)")
    table.add_row("CUDA", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available")
    for mod, fix in (("onnxruntime", "pip install onnxruntime"), ("tensorrt", "pip install 'quamba-edge[gpu]'"),
                     ("transformers", "pip install 'quamba-edge[dev]'")):
        try:
            version = __import__(mod).__version__
            table.add_row(mod, version)
        except ImportError:
            table.add_row(mod, f"[yellow]missing[/] ({fix})")
    console.print(table)


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
