"""Pre-train the tiny wav2vec 2.0 encoder with plain wav2vec 2.0 and with ccc-wav2vec 2.0, same seed, same
data, same steps, and compare them on held-out speech.

    python calib/build_speech.py --variants 120 --pretrain 2000       # the synthetic speech (espeak-ng, flite)
    python benchmarks/ccc_pretrain.py --objective wav2vec2 --steps 1000 --out out/pretrain &
    python benchmarks/ccc_pretrain.py --objective ccc      --steps 1000 --out out/pretrain &
    python benchmarks/ccc_pretrain.py --summarize out/pretrain --json benchmarks/results/ccc_pretrain.json

One thread per run, so the two runs can share a 2-core machine. The summary adds each encoder's frame
similarity on held-out speech (mean cosine between its output frames): 1.0 means the encoder says the
same vector whatever it hears, the collapse that pins the contrastive loss at ln(1 + negatives).
Each run writes its checkpoint (out/pretrain/<objective>/), its loss history and its held-out figures:
the plain contrastive loss and accuracy of predicting the masked frames' codes among distractors,
measured on the original view only with a fixed mask and fixed negatives. That yardstick is each
model's own task, so it compares how well each learned it; the downstream comparison (keyword
spotting on real recordings) is benchmarks/kws.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from quamba_edge.checkpoints.wav2vec2 import load_wav2vec2
from quamba_edge.data import asterisk
from quamba_edge.data.speech import load_pretrain_clips
from quamba_edge.io import atomic_write_json
from quamba_edge.train.pretrain import PretrainConfig, Pretrainer, frame_similarity


def speech(data: str) -> tuple[list, list]:
    """(held-out, training) clips. `synthetic`: the TTS sentences, the first 100 held out. `asterisk`: the
    real prompts of all five languages (English digits excluded: a test set), every tenth held out; the
    FSDD speakers are not used, so one encoder serves every leave-one-speaker-out fold."""
    if data == "synthetic":
        clips = load_pretrain_clips()
        return clips[:100], clips[100:]
    clips = asterisk.prompts(tuple(asterisk.PACKAGES), min_s=1.0)
    return clips[::10], [c for i, c in enumerate(clips) if i % 10]


def run(objective: str, steps: int, out: Path, seed: int, batch_size: int, max_minutes: float | None,
        data: str = "synthetic") -> dict:
    torch.set_num_threads(1)
    held_out, train = speech(data)
    cfg = PretrainConfig(objective=objective, steps=steps, seed=seed, batch_size=batch_size, max_minutes=max_minutes)
    trainer = Pretrainer(cfg)
    log = out / f"{objective}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        def on_step(step: int, row: dict) -> None:
            if step % 10 == 0 or step == steps - 1:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
        start = time.perf_counter()
        history = trainer.train(train, on_step)
    result = {"objective": objective, "config": cfg.to_dict(), "steps_done": len(history),
              "train_seconds": time.perf_counter() - start, "train_clips": len(train), "held_out_clips": len(held_out),
              "data": data, "final_train": history[-1], **trainer.evaluate(held_out, batches=12),
              "command": "python " + " ".join(sys.argv)}
    trainer.save(out / objective)
    atomic_write_json(out / f"{objective}.json", result)
    return result


def summarize(out: Path, json_path: Path | None) -> list[dict]:
    torch.set_num_threads(1)
    rows = [json.loads((out / f"{o}.json").read_text()) for o in ("wav2vec2", "ccc") if (out / f"{o}.json").exists()]
    held_out = speech(rows[0].get("data", "synthetic") if rows else "synthetic")[0]
    for r in rows:  # how far the encoder's output frames are from one constant vector (1.0 = collapsed)
        r["held_out_frame_similarity"] = frame_similarity(load_wav2vec2(out / r["objective"])[0], held_out)
    torch.manual_seed(0)
    rows.append({"objective": "untrained (same init)", "steps_done": 0, "train_seconds": 0.0,
                 "held_out_frame_similarity": frame_similarity(Pretrainer(PretrainConfig()).encoder, held_out)})
    data = rows[0].get("data", "synthetic") if rows else "no"
    table = Table(title=f"pre-training on {data} speech (tiny encoder, one thread each)")
    for col in ("objective", "steps", "minutes", "train loss", "held-out contrastive", "held-out accuracy",
                "frame similarity"):
        table.add_column(col, justify="left" if col == "objective" else "right")
    for r in rows:
        trained = "final_train" in r
        table.add_row(r["objective"], str(r["steps_done"]), f"{r['train_seconds'] / 60:.1f}",
                      f"{r['final_train']['total']:.3f}" if trained else "-",
                      f"{r['val_contrastive']:.3f}" if trained else "-",
                      f"{r['val_accuracy']:.3f}" if trained else "-", f"{r['held_out_frame_similarity']:.3f}")
    Console().print(table)
    if json_path:
        atomic_write_json(json_path, {"rows": rows, "date": time.strftime("%Y-%m-%d")})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objective", choices=("wav2vec2", "ccc"))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", choices=("synthetic", "asterisk"), default="synthetic",
                    help="synthetic: the TTS sentences; asterisk: real prompts in five languages")
    ap.add_argument("--out", type=Path, default=Path("out/pretrain"))
    ap.add_argument("--summarize", type=Path, default=None, help="print the table of the runs under this directory")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.summarize:
        summarize(args.summarize, args.json)
    elif args.objective:
        print(json.dumps(run(args.objective, args.steps, args.out, args.seed, args.batch_size, args.max_minutes,
                             args.data)))
    else:
        ap.error("give --objective or --summarize")


if __name__ == "__main__":
    main()
