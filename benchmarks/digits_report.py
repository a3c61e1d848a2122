"""Tables and the plot of the digit-spotter runs (benchmarks/digits.py): merge run files into
benchmarks/results/kws.json, print the leave-one-speaker-out, noise-sweep, pooling, int8 and few-label
tables as markdown, and draw accuracy against SNR.

    python benchmarks/digits.py merge out/digits/*.json --json benchmarks/results/kws.json \
        --plot benchmarks/results/kws.png
    python benchmarks/digits_report.py benchmarks/results/kws.json      # the tables again

Aggregation: an accuracy "over folds" pools the five held-out speakers' trials (each fold's model on its own
unseen speaker); a pooling's figure is the mean over its seeds, its interval the 95% t-interval over seeds
(3 seeds: mean +- 4.30 sd / sqrt 3); a difference between two poolings pairs seed with seed (same data
order, same test trials) and gets the same interval.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from quamba_edge.io import atomic_write, atomic_write_json

ORDER = ["clean", 20.0, 10.0, 5.0, 0.0]
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}


def condition(r: dict) -> str:
    return "clean" if r["snr_db"] == "clean" else f"{r['noise']} {r['snr_db']:g} dB"


def conditions(rows: list[dict]) -> list[str]:
    seen = {condition(r) for r in rows}
    return [c for c in ["clean"] + [f"{n} {s:g} dB" for s in ORDER[1:] for n in ("white", "pink", "babble")]
            if c in seen]


def pooled(rows: list[dict]) -> float:
    """Accuracy over the trials of all `rows` (weights by trials)."""
    n = sum(r["trials"] for r in rows)
    return sum(r["accuracy"] * r["trials"] for r in rows) / n if n else math.nan


def by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] if k != "condition" else condition(r) for k in keys)].append(r)
    return out


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for one value)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), T975.get(len(v) - 1, 1.96) * float(v.std(ddof=1)) / math.sqrt(len(v))


def merge(paths: list[Path], json_path: Path | None, plot_path: Path | None) -> dict:
    runs = [json.loads(p.read_text()) for p in paths]
    rows, seen = [], set()
    for r in (r for run in runs for r in run["rows"]):  # a run repeated in two files (same seed, data, model)
        r.setdefault("recipe", "base")  # the runs before the training recipe and the step count were choices
        r.setdefault("steps", 450)
        key = tuple(str(r[k]) for k in ("pretraining", "recipe", "steps", "protocol", "pooling", "seed", "fold",
                                        "speaker", "precision", "snr_db", "noise", "labels_per_class"))
        if key not in seen:
            seen.add(key)
            rows.append(r)
    result = {"rows": rows, "runs": [{k: v for k, v in run.items() if k != "rows"} for run in runs]}
    if json_path:
        atomic_write_json(json_path, result)
    if plot_path:
        plot(rows, plot_path)
    print(report(rows))
    return result


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def loso_table(rows: list[dict]) -> str:
    """Per held-out speaker (and the Asterisk speaker, scored by each fold's model), clean and the mean over
    noises at 0 dB, fp32 and int8, for the `rows` given (one pooling, one seed)."""
    speakers = sorted({r["fold"] for r in rows})
    out = ["| test speaker | clean fp32 | clean int8 | 0 dB fp32 (mean of 3 noises) | 0 dB int8 | trials/condition |",
           "|---|---:|---:|---:|---:|---:|"]

    def cell(sel: list[dict], snr, precision: str) -> str:
        pick = [r for r in sel if r["snr_db"] == snr and r["precision"] == precision]
        return _pct(pooled(pick)) if pick else "-"

    fsdd = [r for r in rows if r["speaker"] == r["fold"]]
    for s in speakers:
        sel = [r for r in fsdd if r["speaker"] == s]
        n = sel[0]["trials"] if sel else 0
        out.append(f"| {s} | {cell(sel, 'clean', 'fp32')} | {cell(sel, 'clean', 'int8')} | {cell(sel, 0.0, 'fp32')} "
                   f"| {cell(sel, 0.0, 'int8')} | {n} |")
    out.append(f"| **mean of the {len(speakers)} folds** (int8: the folds scored) | **{cell(fsdd, 'clean', 'fp32')}** "
               f"| {cell(fsdd, 'clean', 'int8')} | "
               f"**{cell(fsdd, 0.0, 'fp32')}** | {cell(fsdd, 0.0, 'int8')} | |")
    ast = [r for r in rows if r["speaker"] != r["fold"]]
    if ast:
        out.append(f"| Asterisk English (each fold's model) | {cell(ast, 'clean', 'fp32')} "
                   f"| {cell(ast, 'clean', 'int8')} | {cell(ast, 0.0, 'fp32')} | {cell(ast, 0.0, 'int8')} "
                   f"| {ast[0]['trials']} |")
    return "\n".join(out)


def sweep_table(rows: list[dict], precision: str = "fp32") -> str:
    """Every pooling x condition on the held-out FSDD speakers (pooled over folds): mean over seeds +- 95%."""
    sel = [r for r in rows if r["speaker"] == r["fold"] and r["precision"] == precision]
    pools = [p for p in ("adapool", "avg", "max", "cls") if any(r["pooling"] == p for r in sel)]
    conds = conditions(sel)
    cells = by(sel, "pooling", "condition", "seed")
    out = ["| condition | " + " | ".join(pools) + " |", "|---|" + "---:|" * len(pools)]
    for c in conds:
        line = [c]
        for p in pools:
            seeds = sorted({k[2] for k in cells if k[:2] == (p, c)})
            mean, half = interval([pooled(cells[(p, c, s)]) for s in seeds])
            line.append(f"{_pct(mean)} ± {_pct(half)}" if seeds else "-")
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)


def difference_table(rows: list[dict], base: str = "adapool") -> str:
    """AdaPool minus each other pooling, per condition, seed paired with seed, with the 95% t-interval."""
    sel = [r for r in rows if r["speaker"] == r["fold"] and r["precision"] == "fp32"]
    cells = by(sel, "pooling", "condition", "seed")
    others = [p for p in ("avg", "max", "cls") if any(r["pooling"] == p for r in sel)]
    out = ["| condition | " + " | ".join(f"{base} − {p}" for p in others) + " |", "|---|" + "---:|" * len(others)]
    for c in conditions(sel):
        line = [c]
        for p in others:
            seeds = sorted({k[2] for k in cells if k[:2] == (base, c)} & {k[2] for k in cells if k[:2] == (p, c)})
            diffs = [pooled(cells[(base, c, s)]) - pooled(cells[(p, c, s)]) for s in seeds]
            mean, half = interval(diffs) if diffs else (math.nan, 0.0)
            mark = " ✓" if diffs and mean - half > 0 else " ✗" if diffs and mean + half < 0 else ""
            line.append(f"{100 * mean:+.1f} ± {100 * half:.1f}{mark}" if diffs else "-")
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)


def int8_table(rows: list[dict]) -> str:
    """int8 minus fp32 per pooling and condition (same models, same trials; FSDD folds pooled, seeds pooled)."""
    sel = [r for r in rows if r["speaker"] == r["fold"]]
    scored = {(r["pooling"], r["seed"], r["fold"]) for r in sel if r["precision"] == "int8"}
    sel = [r for r in sel if (r["pooling"], r["seed"], r["fold"]) in scored]  # fp32 of the same models only
    cells = by(sel, "pooling", "condition", "precision")
    pools = [p for p in ("adapool", "avg", "max", "cls") if (p, "clean", "int8") in cells]
    out = ["| condition | " + " | ".join(pools) + " |", "|---|" + "---:|" * len(pools)]
    worst = 0.0
    for c in conditions(sel):
        line = [c]
        for p in pools:
            d = pooled(cells[(p, c, "int8")]) - pooled(cells[(p, c, "fp32")])
            worst = max(worst, abs(d))
            line.append(f"{100 * d:+.2f}")
        out.append("| " + " | ".join(line) + " |")
    out.append(f"\nlargest |int8 − fp32|: {100 * worst:.2f} points")
    return "\n".join(out)


def few_table(rows: list[dict]) -> str:
    """Pre-training x labels per class (AdaPool, seed 0): held-out FSDD speakers pooled, clean and 0 dB."""
    sel = [r for r in rows if r["speaker"] == r["fold"] and r["precision"] == "fp32" and r["pooling"] == "adapool"
           and r["seed"] == 0]  # what every pre-training was run with
    sel = [r for r in sel if r.get("recipe", "base") == "base"]  # the comparison was run on one recipe
    cells = by(sel, "pretraining", "protocol", "labels_per_class")
    out = ["| encoder | protocol | takes per digit per speaker | clean | 0 dB (mean of 3 noises) |",
           "|---|---|---:|---:|---:|"]
    for (pre, protocol, k), rs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        out.append(f"| {pre} | {protocol} | {k} | {_pct(pooled([r for r in rs if r['snr_db'] == 'clean']))} "
                   f"| {_pct(pooled([r for r in rs if r['snr_db'] == 0.0]))} |")
    return "\n".join(out)


def recipe_table(rows: list[dict]) -> str:
    """What each training-recipe ingredient buys, end to end (adapool, seed 0): per recipe (and step count) and
    fold, the held-out FSDD speaker clean and at 0 dB (mean of the three noises) and the Asterisk speaker clean;
    the means pool the folds that recipe ran on."""
    sel = [r for r in rows if r["protocol"] == "end-to-end" and r["pooling"] == "adapool" and r["seed"] == 0
           and r["precision"] == "fp32" and r["labels_per_class"] == 50]
    folds = sorted({r["fold"] for r in sel})
    out = ["| recipe | steps | " + " | ".join(folds) + " | mean (folds run) | Asterisk clean (folds run) |",
           "|---|---:|" + "---|" * len(folds) + "---:|---:|"]
    for (recipe, steps), group in sorted(by(sel, "recipe", "steps").items()):
        cells = []
        for f in folds:
            own = [r for r in group if r["fold"] == f and r["speaker"] == f]
            clean = [r for r in own if r["snr_db"] == "clean"]
            cells.append(f"{_pct(pooled(clean))} / {_pct(pooled([r for r in own if r['snr_db'] == 0.0]))}"
                         if clean else "-")
        fsdd = [r for r in group if r["speaker"] == r["fold"]]
        ast = [r for r in group if r["speaker"] != r["fold"] and r["snr_db"] == "clean"]
        mean = (f"{_pct(pooled([r for r in fsdd if r['snr_db'] == 'clean']))} / "
                f"{_pct(pooled([r for r in fsdd if r['snr_db'] == 0.0]))}")
        out.append(f"| {recipe} | {steps} | " + " | ".join(cells) + f" | {mean} | {_pct(pooled(ast))} |")
    return "\n".join(out)


def seed_table(rows: list[dict]) -> str | None:
    """How far one training seed moves a spotter, end to end (adapool, fp32): for each recipe, step count and fold
    trained with more than one seed, every seed's held-out speaker clean / 0 dB (mean of the three noises) and
    Asterisk clean. None when no fold has a second seed."""
    sel = [r for r in rows if r["protocol"] == "end-to-end" and r["pooling"] == "adapool" and r["precision"] == "fp32"
           and r["labels_per_class"] == 50]
    groups = {k: g for k, g in sorted(by(sel, "recipe", "steps", "fold").items()) if len({r["seed"] for r in g}) > 1}
    if not groups:
        return None
    out = ["| recipe | steps | fold | seed | held-out clean | held-out 0 dB | Asterisk clean |",
           "|---|---:|---|---:|---:|---:|---:|"]
    for (recipe, steps, fold), group in groups.items():
        for seed, g in sorted(by(group, "seed").items()):
            own = [r for r in g if r["speaker"] == fold]
            ast = [r for r in g if r["speaker"] != fold and r["snr_db"] == "clean"]
            clean, noisy = [r for r in own if r["snr_db"] == "clean"], [r for r in own if r["snr_db"] == 0.0]
            out.append(f"| {recipe} | {steps} | {fold} | {seed[0]} | {_pct(pooled(clean))} | {_pct(pooled(noisy))} "
                       f"| {_pct(pooled(ast))} |")
    return "\n".join(out)


def report(rows: list[dict]) -> str:
    parts = []
    if any(r["protocol"] == "end-to-end" for r in rows):
        parts += ["## end to end: what each training-recipe ingredient buys (held-out FSDD speaker clean / 0 dB; "
                  "Asterisk speaker clean; adapool, seed 0, fp32)\n", recipe_table(rows), ""]
        seeds = seed_table(rows)
        if seeds is not None:
            parts += ["## end to end: the spread over training seeds (adapool, fp32)\n", seeds, ""]
    full = [r for r in rows if r["labels_per_class"] == 50]
    for key, group in sorted(by(full, "pretraining", "recipe", "steps", "protocol").items()):
        pools = {r["pooling"] for r in group}
        parts.append(f"## {key[0]} encoder, training recipe {key[1]}, {key[2]} steps, {key[3]}: leave-one-speaker-out "
                     "(adapool, seed 0: one spotter per fold)\n")
        parts.append(loso_table([r for r in group if r["pooling"] == "adapool" and r["seed"] == 0]))
        if len(pools) > 1:  # the folds every pooling was run on, so that each is pooled over the same speakers
            common = set.intersection(*({r["fold"] for r in group if r["pooling"] == p} for p in pools))
            group = [r for r in group if r["fold"] in common]
            folds = ", ".join(sorted(common))
            parts += [f"\n### noise sweep, fp32 (held-out {folds} pooled; mean over seeds ± 95%)\n",
                      sweep_table(group), "\n### noise sweep, int8\n", sweep_table(group, "int8"),
                      "\n### AdaPool minus each pooling (✓: interval above 0, ✗: below)\n", difference_table(group)]
        if any(r["precision"] == "int8" for r in group):
            parts += ["\n### int8 minus fp32 (points; the models scored in both)\n", int8_table(group)]
    parts += ["\n## pre-training and labels\n", few_table(rows)]
    return "\n".join(parts)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["speaker"] == r["fold"] and r["labels_per_class"] == 50]

    def key(r: dict) -> tuple:
        return r["pretraining"], r.get("recipe", "base"), r.get("steps", 450), r["protocol"]

    groups = sorted({key(r) for r in sel})
    fig, axes = plt.subplots(len(groups), 3, figsize=(15, 4.6 * len(groups)), sharey=True, squeeze=False)
    for row_axes, group in zip(axes, groups):
        g = [r for r in sel if key(r) == group]
        pools = {r["pooling"] for r in g}  # the folds every pooling ran on, as in the tables
        common = set.intersection(*({r["fold"] for r in g if r["pooling"] == p} for p in pools))
        # the seeds run on all of those folds, so that a mean over seeds pools the same speakers
        full = {(p, s) for p, s in {(r["pooling"], r["seed"]) for r in g}
                if common <= {r["fold"] for r in g if (r["pooling"], r["seed"]) == (p, s)}}
        g = [r for r in g if r["fold"] in common and (r["pooling"], r["seed"]) in full]
        cells = by(g, "pooling", "precision", "noise", "snr_db", "seed")
        clean = by(g, "pooling", "precision", "snr_db", "seed")
        for ax, noise in zip(row_axes, ("white", "pink", "babble")):
            for colour, pool in enumerate(("adapool", "avg", "max", "cls")):
                for precision, style in (("fp32", "-"), ("int8", "--")):
                    xs, ys, errs = [], [], []
                    for i, snr in enumerate(ORDER):
                        src = clean if snr == "clean" else cells
                        prefix = (pool, precision, snr) if snr == "clean" else (pool, precision, noise, snr)
                        seeds = sorted({k[-1] for k in src if k[:-1] == prefix})
                        if seeds:
                            mean, half = interval([pooled(src[(*prefix, s)]) for s in seeds])
                            xs.append(i)
                            ys.append(100 * mean)
                            errs.append(100 * half)
                    if xs:
                        ax.errorbar(xs, ys, yerr=errs, linestyle=style, marker="o", capsize=3, color=f"C{colour}",
                                    label=f"{pool} ({precision})")
            ax.set_xticks(range(len(ORDER)), ["clean" if s == "clean" else f"{s:g} dB" for s in ORDER])
            folds = f"{len(common)} folds" if len(common) > 1 else f"fold {next(iter(common))}"
            ax.set_title(f"{noise}: {group[0]}, {group[1]}, {group[2]} steps, {group[3]}, {folds}", fontsize=8)
            ax.grid(alpha=0.3)
        row_axes[0].set_ylabel("accuracy on the held-out speaker, % (12 classes)")
        row_axes[0].set_ylim(0, 100)
        row_axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


if __name__ == "__main__":
    print(report(json.loads(Path(sys.argv[1]).read_text())["rows"]))
