"""Train a bundled default model: a byte-level Mamba-1 (or, with --arch mamba2, Mamba-2) on the Austen
training novels.

Reproducible: the seed, step count, batch shape and the sha256 of the training text are written to
`training.json` beside the weights. The held-out novel is only used to report bits/byte.

    QUAMBA_EDGE_CACHE=.cache python calib/train_default.py --steps 1500 --out quamba_edge/assets/default
    QUAMBA_EDGE_CACHE=.cache python calib/train_default.py --arch mamba2 --steps 1000 --batch 16 --seq-len 256 \
        --lr 0.002 --seed 0 --d-model 384 --n-layer 6 --d-state 64 --headdim 64 --ngroups 2 --threads 1 \
        --eval-every 50 --out quamba_edge/assets/default-mamba2 --state .cache/train-mamba2-1000.pt

A long run can span sessions: with `--state FILE` the optimizer moments, the batch sampler's generator, the step
and the history are written to FILE (with the weights) at every evaluation, and a later run with the same options
continues from it, step for step as if never stopped; `--stop-after N` ends a session's share after N steps in all.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from quamba_edge.checkpoints import mamba as mamba_ckpt
from quamba_edge.checkpoints import mamba2 as mamba2_ckpt
from quamba_edge.data.austen import heldout_text_file, train_text_files
from quamba_edge.io import atomic_write
from quamba_edge.models import mamba, mamba2


def load_bytes(paths: list[Path]) -> tuple[torch.Tensor, str]:
    raw = b"".join(p.read_bytes() for p in paths)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).long(), hashlib.sha256(raw).hexdigest()


@torch.no_grad()
def heldout_bits_per_byte(model: torch.nn.Module, data: torch.Tensor, seq_len: int, max_windows: int) -> float:
    train_scan = getattr(model, "set_train_scan", lambda enabled: None)  # Mamba-1's hand-differentiated scan
    train_scan(False)
    model.eval()
    windows = data[: (len(data) - 1) // seq_len * seq_len + 1]
    nll, count = 0.0, 0
    for i in range(min(max_windows, (len(windows) - 1) // seq_len)):
        chunk = windows[i * seq_len : (i + 1) * seq_len + 1]
        logits = model(chunk[None, :-1])
        nll += F.cross_entropy(logits[0], chunk[1:], reduction="sum").item()
        count += seq_len
    model.train()
    train_scan(True)
    return nll / count / math.log(2)


RESUME_KEYS = ("arch", "seed", "steps", "batch", "seq_len", "lr", "d_model", "n_layer", "d_state", "headdim",
               "ngroups")  # what a resumed run must share with the run it continues


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--arch", choices=("mamba", "mamba2"), default="mamba")
    ap.add_argument("--d-state", type=int, default=None, help="default: 16 (Mamba-1), 64 (Mamba-2)")
    ap.add_argument("--headdim", type=int, default=64, help="Mamba-2 head dimension")
    ap.add_argument("--ngroups", type=int, default=1, help="Mamba-2 groups of B and C")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--out", type=Path, default=Path("quamba_edge/assets/default"))
    ap.add_argument("--state", type=Path, default=None,
                    help="training state file (git-ignored, e.g. .cache/train-mamba2.pt): saved at every evaluation, "
                         "continued from when it exists")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop once this many of --steps are done (a later run with --state continues)")
    return ap


def main() -> None:
    args = parser().parse_args()
    torch.set_num_threads(args.threads)
    train, train_sha = load_bytes(train_text_files())
    heldout, heldout_sha = load_bytes([heldout_text_file()])
    train_model(args, train, train_sha, heldout, heldout_sha)


def train_model(args: argparse.Namespace, train: torch.Tensor, train_sha: str, heldout: torch.Tensor,
                heldout_sha: str) -> torch.nn.Module:
    """Train (or continue, from args.state) the model the options describe on `train` (bytes as int64); write its
    checkpoint and training.json to args.out at every evaluation (bits/byte on `heldout`). Returns the model.
    Raises SystemExit naming the option when args.state was written by a run with other options."""
    torch.manual_seed(args.seed)
    if args.arch == "mamba2":
        cfg = mamba2.Mamba2Config(d_model=args.d_model, n_layer=args.n_layer, vocab_size=256,
                                  d_state=args.d_state or 64, headdim=args.headdim, ngroups=args.ngroups)
        model, save_checkpoint = mamba2.Mamba2LM(cfg), mamba2_ckpt.save_checkpoint
        mamba2.init_weights(model, args.seed)
    else:
        cfg = mamba.MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=256, d_state=args.d_state or 16)
        model, save_checkpoint = mamba.MambaLM(cfg), mamba_ckpt.save_checkpoint
        mamba.init_weights(model, args.seed)
        model.set_train_scan(True)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "A_log" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "A_log" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )
    warmup = min(100, args.steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    gen = torch.Generator().manual_seed(args.seed)
    history: list[dict] = []
    first, spent = 0, 0.0
    options = {k: getattr(args, k) for k in RESUME_KEYS}
    if args.state is not None and args.state.exists():
        state = torch.load(args.state, weights_only=True)
        if state["options"] != options:
            changed = sorted(k for k in options if state["options"].get(k) != options[k])
            raise SystemExit(f"{args.state} continues a run with other options ({', '.join(changed)}: "
                             f"{[state['options'].get(k) for k in changed]}). Fix: pass that run's options, or "
                             "another --state file to start afresh.")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        first, history, spent = state["step"], state["history"], state["seconds"]
        print(f"continuing from step {first} ({args.state})", flush=True)
    last = min(args.steps, args.stop_after) if args.stop_after is not None else args.steps
    start = time.time() - spent
    for step in range(first, last):
        starts = torch.randint(0, len(train) - args.seq_len - 1, (args.batch,), generator=gen)
        batch = torch.stack([train[s : s + args.seq_len + 1] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bpb = loss.item() / math.log(2)
        if step % 10 == 0:
            print(f"step {step:5d}  train {bpb:.3f} bits/byte  lr {lr_at(step):.2e}  {time.time() - start:7.0f} s",
                  flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            held = heldout_bits_per_byte(model, heldout, 512, max_windows=32)
            history.append({"step": step + 1, "train_bpb": round(bpb, 4), "heldout_bpb": round(held, 4),
                            "seconds": round(time.time() - start)})
            print(f"step {step + 1:5d}  held-out {held:.3f} bits/byte (first 16 KiB of persuasion)", flush=True)
            info = {
                "seed": args.seed, "steps": args.steps, "steps_done": step + 1, "batch": args.batch,
                "seq_len": args.seq_len, "lr": args.lr, "threads": args.threads,
                "train_text_sha256": train_sha, "train_bytes": len(train),
                "heldout_text_sha256": heldout_sha, "history": history,
                "command": "python calib/train_default.py " + " ".join(
                    f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                    if v is not None and k not in ("state", "stop_after")),
            }
            save_checkpoint(model, args.out, extra={"training": info})
            if args.state is not None:
                payload = {"options": options, "step": step + 1, "history": history, "seconds": time.time() - start,
                           "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state()}
                atomic_write(args.state, lambda tmp, payload=payload: torch.save(payload, tmp))
    return model


if __name__ == "__main__":
    main()
