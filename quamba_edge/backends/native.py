"""The native CPU backend as Runners on csrc/cpu/native (kernels/native.py's NativeDecoder, on the fastest exact
int8 path of this CPU): prefill (one C++ call for the whole prompt, layer-major) and decode (one call a token).

Both runners share one decoder and its states: the prefill leaves them in the decoder and returns them (no copy),
so the decode that follows steps them in place; fed any other states (a parity case's), decode copies them in.
"""

from __future__ import annotations

from typing import Any

import torch

from quamba_edge.backends.base import Feeds, Runner
from quamba_edge.kernels.native import NativeDecoder


class _NativeRunner(Runner):
    """One graph of a NativeDecoder; its outputs are the decoder's logits (a numpy copy) and its own states."""

    backend = "native"

    def __init__(self, name: str, decoder: NativeDecoder):
        super().__init__(name)
        self.decoder = decoder

    def _outputs(self) -> dict[str, Any]:
        dec = self.decoder
        return {"logits": dec.logits.numpy().copy(), "conv_state": dec.conv_state, "ssm_state": dec.ssm_state}


class NativeDecodeRunner(_NativeRunner):
    """The `decode` graph: feeds input_ids (b, 1) int64, conv_state_in (n_layer, b, d_inner, d_conv - 1) int8,
    ssm_state_in (n_layer, b, d_inner, d_state) fp32 -> logits (b, vocab) fp32 and the states after the step."""

    def __init__(self, decoder: NativeDecoder):
        super().__init__("decode", decoder)

    def _infer(self, feeds: Feeds) -> dict[str, Any]:
        dec = self.decoder
        conv, ssm = feeds["conv_state_in"], feeds["ssm_state_in"]
        if conv is not dec.conv_state or ssm is not dec.ssm_state:
            dec.load_state(torch.as_tensor(conv), torch.as_tensor(ssm))
        dec.step(torch.as_tensor(feeds["input_ids"]).reshape(-1))
        return self._outputs()


class NativePrefillRunner(_NativeRunner):
    """The `prefill` graph: feeds input_ids (b, l) int64 -> logits (b, vocab) fp32 of the last position (a numpy
    copy), conv_state (n_layer, b, d_inner, d_conv - 1) int8 and ssm_state (n_layer, b, d_inner, d_state) fp32
    (the decoder's own tensors, which a NativeDecodeRunner on the same decoder continues from in place)."""

    def __init__(self, decoder: NativeDecoder):
        super().__init__("prefill", decoder)

    def _infer(self, feeds: Feeds) -> dict[str, Any]:
        self.decoder.prefill(torch.as_tensor(feeds["input_ids"]))
        return self._outputs()
