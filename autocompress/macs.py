"""Multiply-accumulates of one forward pass, counted by torch's own FLOP counter.

:class:`torch.utils.flop_counter.FlopCounterMode` counts at the level of torch's operators,
so every matrix product counts, whichever module or function made it: linear and
convolution layers (grouped and depthwise included, transformers' ``Conv1D`` too), and
attention's query-key and attention-value products (``scaled_dot_product_attention``,
``torch.matmul``, ``@``, ``bmm``, ``einsum``). Element-wise work (biases, norms,
activations, softmax) is not counted. Causal attention counts its whole score matrix, as
torch's counter does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autocompress.data import Inputs, call_model

_aten = torch.ops.aten


def _sdpa_flops(
    query: tuple[int, ...], key: tuple[int, ...], value: tuple[int, ...], *_: Any, **__: Any
) -> int:
    """FLOPs of a fused attention kernel's two products, ``query·keyᵀ`` and ``scores·value``
    (key and value may have fewer heads than the query: grouped-query attention)."""
    batch, heads, length, width = query
    return 2 * batch * heads * length * key[-2] * (width + value[-1])


# Fused attention kernels torch's counter has no formula for: on CPU (and on backends that
# bring their own kernel) ``scaled_dot_product_attention`` would count nothing.
_ATTENTION_KERNELS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    _aten._scaled_dot_product_fused_attention_overrideable: _sdpa_flops,
}


@contextlib.contextmanager
def _eval_without_fast_path(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode, and ``nn.MultiheadAttention`` / ``nn.TransformerEncoder`` off
    their fused inference kernels (one operator each, which the counter cannot see into);
    every module's mode and the fast-path switch restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    fast_path = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
        for module, training in modes:
            module.training = training


def count_macs(model: nn.Module, example_input: Inputs) -> int:
    """Multiply-accumulates of one forward pass of ``example_input`` (half the FLOPs torch's
    :class:`~torch.utils.flop_counter.FlopCounterMode` counts): every matrix product and
    convolution, attention's functional products included, in eval mode under
    ``torch.inference_mode()``. The model's modes are left as they were.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_ATTENTION_KERNELS)
    with _eval_without_fast_path(model), torch.inference_mode(), counter:
        call_model(model, example_input)
    return counter.get_total_flops() // 2
