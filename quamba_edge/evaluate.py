"""Language-model quality on held-out text: bits per byte and next-token accuracy.

Bits per byte (total negative log-likelihood in bits / UTF-8 bytes predicted) compares models with
different tokenizers; for the byte-level bundled model it equals bits per token.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def evaluate_lm(
    model: nn.Module, windows: Tensor, byte_lengths: Tensor, batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """windows (samples, seq_len): each window predicts its tokens 1..L-1 from the ones before."""
    nll_bits, bytes_seen, correct, predicted = 0.0, 0.0, 0, 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        logits = model(batch[:, :-1]).float()
        targets = batch[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        nll_bits += nll.item() / math.log(2)
        bytes_seen += float(byte_lengths[targets].sum())
        correct += int((logits.argmax(-1) == targets).sum())
        predicted += targets.numel()
        if on_batch:
            on_batch(len(batch))
    return {
        "bits_per_byte": nll_bits / bytes_seen,
        "perplexity": math.exp(nll_bits * math.log(2) / predicted),
        "token_accuracy": correct / predicted,
        "tokens": predicted,
        "bytes": int(bytes_seen),
    }


@torch.no_grad()
def generate(runners: dict[str, Callable], prompt_ids: Tensor, max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0) -> list[int]:
    """Prefill the prompt (ids (l,) int64) once, then decode token by token from the explicit state.

    runners: a generating family's `prefill` and `decode` (feeds -> outputs, as family.reference(model) or a
    System's runners): logits (1, vocab) of the last position and the states the next step takes."""
    gen = torch.Generator().manual_seed(seed)
    out = runners["prefill"]({"input_ids": prompt_ids[None].numpy()})
    tokens: list[int] = []
    while True:
        last = torch.as_tensor(out["logits"][0]).float()
        if temperature > 0:
            tokens.append(int(torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=gen)))
        else:
            tokens.append(int(last.argmax()))
        if len(tokens) >= max_new_tokens:
            return tokens[:max_new_tokens]
        out = runners["decode"]({"input_ids": np.array([[tokens[-1]]], dtype=np.int64),
                                 "conv_state_in": out["conv_state"], "ssm_state_in": out["ssm_state"]})
