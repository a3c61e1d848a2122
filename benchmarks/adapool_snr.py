"""The SNR benchmark of the AdaPool paper (Brothers, ICML 2025), scaled down to a CPU.

Each input is a set of N = 128 vectors of dimension 16 whose features are drawn, per sample, from a
mix of normal, uniform and shifted-exponential distributions with random parameters (6 columns of each
family, divided by sqrt(16), shuffled, 16 kept). Vector 0 is the query; the target is the mean of its k
nearest neighbours (Euclidean, vector 0 excluded), k in {1, 2, ..., 128}, so SNR = k / N: the k
neighbours are the signal, the other vectors distractors. A pre-norm transformer encoder (no input or
output projection: the pooled 16-vector is the prediction, as in the paper) is trained with MSE for
each pooling method from the same encoder initialisation, on the same data in the same order.

    python benchmarks/adapool_snr.py --out benchmarks/results/adapool_snr.json --plot benchmarks/results/adapool_snr.png

Scaled down from the paper (their numbers in brackets): 3 layers [12], 2 heads of 8 dims [8 of 2],
6,000 training sets [720,000 per fold], 4 epochs [100], one seed [5 folds], no checkpoint selection.
Each trained model is also quantized (static per-tensor W8A8 of every linear layer, abs-max scales from
512 training sets) and its test MSE recorded with precision "int8" next to the fp32 row.
Reference lines in the JSON: predicting the mean of all vectors, and predicting vector 0 itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from quamba_edge.checkpoints.adapool import save_set_checkpoint
from quamba_edge.data.sets import save_sets
from quamba_edge.io import atomic_write, atomic_write_json
from quamba_edge.models.adapool import SetModel, SetModelConfig, init_set_model
from quamba_edge.models.pooling import POOLS
from quamba_edge.quant.recipes import StaticW8A8
from quamba_edge.quant.static import quantize_static

KS = (1, 2, 4, 8, 16, 32, 64, 128)
N_VECTORS, DIM = 128, 16


def generate_sets(n_samples: int, rng: np.random.Generator, n: int = N_VECTORS, d: int = DIM) -> np.ndarray:
    """(n_samples, n, d) float32: per sample and feature column, its own distribution and parameters."""
    cols = d // 3 + 1
    shape = (n_samples, 1, cols)
    normal = rng.normal(rng.uniform(-3, 3, shape), rng.uniform(1, 3, shape), (n_samples, n, cols))
    low = rng.uniform(-3, 3, shape)
    uniform = rng.uniform(low, low + rng.uniform(0.2, 3, shape), (n_samples, n, cols))
    sign = rng.choice([-1.0, 1.0], shape)
    expo = rng.exponential(rng.uniform(0.1, 2, shape), (n_samples, n, cols)) * sign - sign * rng.uniform(0, 3, shape)
    features = np.concatenate([normal, uniform, expo], axis=2) / np.sqrt(d)
    keep = np.argsort(rng.random((n_samples, 1, 3 * cols)), axis=2)[..., :d]  # a random 16 of the 18, shuffled
    return np.take_along_axis(features, np.broadcast_to(keep, (n_samples, n, d)), axis=2).astype(np.float32)


def knn_targets(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k nearest neighbours of vector 0 (itself excluded: it sorts first at distance 0)."""
    dist = np.linalg.norm(x - x[:, :1], axis=-1)
    order = np.argsort(dist, axis=1, kind="stable")[:, 1 : k + 1]
    return np.take_along_axis(x, order[..., None], axis=1).mean(1)


def model_config(pool: str, layers: int, heads: int) -> SetModelConfig:
    return SetModelConfig(d_in=DIM, d_model=DIM, d_out=DIM, n_heads=heads, n_layers=layers, d_ff=4 * DIM, pool=pool,
                          pool_query=0 if pool == "adapool" else "mean", project=False, query_flag=True,
                          final_norm=False)


def train_one(pool: str, x_train, y_train, x_test, y_test, args) -> dict:
    model = init_set_model(SetModel(model_config(pool, args.layers, args.heads)), seed=args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    order = torch.Generator().manual_seed(args.seed)
    losses = []
    start = time.perf_counter()
    for _ in range(args.epochs):
        perm = torch.randperm(len(x_train), generator=order)
        for i in range(0, len(perm), args.batch):
            idx = perm[i : i + args.batch]
            loss = torch.nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    # int8: static per-tensor W8A8 of every linear layer, calibrated on 512 training sets
    batches = [(x_train[i : i + 64], None) for i in range(0, min(512, len(x_train)), 64)]
    qmodel, _ = quantize_static(model, batches, StaticW8A8(), data="sets")
    return {"test_mse": test_mse(model, x_test, y_test), "int8_test_mse": test_mse(qmodel, x_test, y_test),
            "final_train_mse": float(np.mean(losses[-20:])), "train_seconds": seconds, "model": model}


@torch.no_grad()
def test_mse(model, x_test, y_test) -> float:
    pred = torch.cat([model(x_test[i : i + 500]) for i in range(0, len(x_test), 500)])
    return torch.nn.functional.mse_loss(pred, y_test).item()


def plot(rows: list[dict], refs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(POOLS):
        for precision, style in (("fp32", "-"), ("int8", ":")):
            pts = sorted((r["snr"], r["test_mse"]) for r in rows
                         if r["method"] == method and r["precision"] == precision)
            if pts:
                ax.plot(*zip(*pts), style, marker="o" if precision == "fp32" else "x", color=f"C{i}",
                        label=f"{method} {precision}")
    for name, style in (("mean of all vectors", ":"), ("vector 0 itself", "--")):
        pts = sorted((r["snr"], r["test_mse"]) for r in refs if r["method"] == name)
        ax.plot(*zip(*pts), style, color="grey", label=f"predict {name}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("SNR = k / N (signal vectors / set size)")
    ax.set_ylabel("test MSE")
    ax.set_title("kNN-centroid regression, N = 128: pooling methods vs SNR")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ks", default=",".join(map(str, KS)))
    ap.add_argument("--methods", default=",".join(POOLS))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--save-dir", type=Path, default=None, help="write each trained model (set checkpoint) and the "
                                                               "test sets (.npz) here, plus calib.npz")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    methods = args.methods.split(",")
    x = generate_sets(args.train + args.test, np.random.default_rng(args.data_seed))
    x_train, x_test = torch.from_numpy(x[: args.train]), torch.from_numpy(x[args.train :])
    rows, refs = [], []
    if args.save_dir:
        save_sets(args.save_dir / "calib.npz", x[:512])
    with Progress() as progress:
        task = progress.add_task("training", total=len(ks) * len(methods))
        for k in ks:
            y = knn_targets(x, k)
            y_train, y_test = torch.from_numpy(y[: args.train]), torch.from_numpy(y[args.train :])
            for name, pred in (("mean of all vectors", x_test.mean(1)), ("vector 0 itself", x_test[:, 0])):
                refs.append({"method": name, "k": k, "snr": k / N_VECTORS,
                             "test_mse": torch.nn.functional.mse_loss(pred, y_test).item()})
            for method in methods:
                progress.update(task, description=f"k={k} {method}")
                result = train_one(method, x_train, y_train, x_test, y_test, args)
                int8_mse = result.pop("int8_test_mse")
                model = result.pop("model")
                if args.save_dir:  # checkpoints and sets for `quamba-edge calibrate / build-engine / bench`
                    save_set_checkpoint(model, args.save_dir / f"{method}-k{k}", extra={"trained_on": f"knn{k}"})
                    save_sets(args.save_dir / f"knn{k}-test.npz", x_test.numpy(), y=y_test.numpy())
                common = {"method": method, "k": k, "snr": k / N_VECTORS}
                rows.append({**common, "precision": "fp32", **result})
                rows.append({**common, "precision": "int8", **result, "test_mse": int8_mse})
                progress.advance(task)
    table = Table(title="test MSE (lower is better): fp32 / int8 W8A8")
    table.add_column("k (SNR)")
    for method in methods + ["mean of all", "vector 0"]:
        table.add_column(method, justify="right")
    for k in ks:
        fp = {r["method"]: r["test_mse"] for r in rows + refs if r["k"] == k and r.get("precision", "fp32") == "fp32"}
        q = {r["method"]: r["test_mse"] for r in rows if r["k"] == k and r["precision"] == "int8"}
        best = min(fp[m] for m in methods)
        cells = [("[bold]" if fp[m] == best else "") + f"{fp[m]:.4f}" + ("[/]" if fp[m] == best else "") +
                 f" / {q[m]:.4f}" for m in methods]
        table.add_row(f"{k} ({k / N_VECTORS:.3f})", *cells, f"{fp['mean of all vectors']:.4f}",
                      f"{fp['vector 0 itself']:.4f}")
    Console().print(table)
    if args.out:
        atomic_write_json(args.out, {"rows": rows, "references": refs, "config": vars(args) | {
            "out": str(args.out), "plot": str(args.plot), "save_dir": str(args.save_dir)},
            "command": " ".join(sys.argv)})
    if args.plot:
        plot(rows, refs, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
