"""The native CPU backend as Runners: decode on csrc/cpu/native (kernels/native.py's NativeDecoder, one C++
call a token on the fastest exact int8 path of this CPU), prefill on the PyTorch quantized model.

The decode runner keeps the states in the decoder: fed the states it returned last, it steps them in place
(no copy per token); fed any other states (a prefill's, a parity case's) it copies them in first.
"""

from __future__ import annotations

from typing import Any

import torch

from quamba_edge.backends.base import Feeds, Runner
from quamba_edge.kernels.native import NativeDecoder


class NativeDecodeRunner(Runner):
    """The `decode` graph: feeds input_ids (b, 1) int64, conv_state_in (n_layer, b, d_inner, d_conv - 1) int8,
    ssm_state_in (n_layer, b, d_inner, d_state) fp32 -> logits (b, vocab) fp32 and the states after the step."""

    backend = "native"

    def __init__(self, decoder: NativeDecoder):
        super().__init__("decode")
        self.decoder = decoder

    def _infer(self, feeds: Feeds) -> dict[str, Any]:
        dec = self.decoder
        conv, ssm = feeds["conv_state_in"], feeds["ssm_state_in"]
        if conv is not dec.conv_state or ssm is not dec.ssm_state:
            dec.load_state(torch.as_tensor(conv), torch.as_tensor(ssm))
        dec.step(torch.as_tensor(feeds["input_ids"]).reshape(-1))
        return {"logits": dec.logits.numpy().copy(), "conv_state": dec.conv_state, "ssm_state": dec.ssm_state}
