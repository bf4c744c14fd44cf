"""Quantization-aware fine-tuning: train through the k-bit weight grid the artifact will store.

Post-training rounding to 3 or 4 bits costs accuracy that fine-tuning never sees. Here every
forward pass during fine-tuning uses the weights rounded to their planned grid (the same
:func:`~autocompress.artifact.fake_quantize` the quantize step and the packed artifact use),
and gradients pass straight through the rounding to the float weights (Bengio et al.'s
straight-through estimator, as in Jacob et al. 2018 and Deep Compression's retraining of
quantized weights). After fine-tuning, rounding the float weights gives exactly the weights
the last forward passes used.

Unstructured masks keep working: the rounding hook runs after ``torch.nn.utils.prune``'s own
hook, and zero stays zero on a symmetric grid.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from autocompress.artifact import fake_quantize
from autocompress.errors import TrialFailure


def _rounding_hook(bits: int, granularity: str, name: str):  # noqa: ANN202 (a hook)
    def hook(module: nn.Module, _args: tuple[torch.Tensor, ...]) -> None:
        weight = module.weight
        try:
            rounded = fake_quantize(weight.detach(), bits, granularity)
        except ValueError:
            raise TrialFailure(
                f"weights of layer {name!r} became non-finite during quantization-aware "
                "fine-tuning (try a lower learning rate)"
            ) from None
        rounded = rounded.to(device=weight.device, dtype=weight.dtype)
        module.weight = weight + (rounded - weight).detach()

    return hook


@contextmanager
def fake_quantized_weights(
    model: nn.Module, plan: dict[str, int], granularity: str
) -> Iterator[nn.Module]:
    """Within the block, ``model``'s planned weights are seen rounded to their k-bit grid.

    Args:
        model: The model about to be fine-tuned (possibly with unstructured pruning masks).
        plan: Bits per weight by state-dict name (``"fc1.weight"``), as from
            :func:`~autocompress.steps.quantize.weight_bit_plan`; 32-bit entries are left alone.
        granularity: ``per_channel`` or ``per_tensor``, as the quantize step will use.

    Yields:
        ``model``; its float parameters (``<layer>.weight_orig`` while the block runs) are what
        the optimiser updates. On exit the hooks are gone and every weight is a float
        parameter again, masked layers still carrying their masks.
    """
    modules = dict(model.named_modules())
    handles = []
    reparametrized = []
    try:
        for key, bits in plan.items():
            if bits >= 32:
                continue
            name = key.rsplit(".", 1)[0] if "." in key else ""
            module = modules[name]
            if not torch_prune.is_pruned(module):
                # A mask of ones gives every layer the same form: a float ``weight_orig``
                # parameter and a ``weight`` attribute recomputed before each forward pass.
                torch_prune.identity(module, "weight")
                reparametrized.append(module)
            handles.append(module.register_forward_pre_hook(_rounding_hook(bits, granularity, key)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for module in reparametrized:
            torch_prune.remove(module, "weight")
