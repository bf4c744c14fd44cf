"""What head, MLP-width and depth pruning share: slicing layers, counting, calibration passes.

These methods read the model they change, not the baseline's facts: depth pruning renames
the blocks after it, and head pruning changes head counts, so the parts are found again on
the model at hand (:func:`parts_of`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn

from autocompress.architecture import bias_of, weight_of
from autocompress.data import Inputs, call_model
from autocompress.transformer_parts import HF_CONV1D, TransformerParts, find_transformer_parts


def parts_of(model: nn.Module) -> TransformerParts | None:
    """The transformer parts of ``model`` as it is now."""
    return find_transformer_parts(model)


def share(amount: float, count: int) -> int:
    """``amount`` of ``count`` rounded down (a small tolerance absorbs float error:
    ``0.29 * 100`` is 28.999...)."""
    return int(math.floor(amount * count + 1e-9))


def count_of(amount: float, total: int) -> int:
    """Units (heads, neurons) removed out of ``total`` for a share ``amount``: rounded down,
    one always kept."""
    return min(share(amount, total), total - 1)


def exact_share(count: int, total: int) -> float:
    """The share of ``total`` to 4 decimals that removes exactly ``count`` of them
    (``count_of(exact_share(k, n), n) == k``): ``k / n`` rounded up, so 1 of 3 is 0.3334."""
    return math.ceil(count / total * 1e4 - 1e-6) / 1e4


def least_important(scores: Sequence[float] | torch.Tensor, count: int) -> list[int]:
    """The ``count`` units of lowest score (the lower index first on ties), sorted."""
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[:count])


def is_conv1d(layer: nn.Module | None) -> bool:
    """transformers' ``Conv1D`` (weight stored ``[in, out]``)."""
    return bool(HF_CONV1D) and isinstance(layer, HF_CONV1D)


def rows(layer: nn.Module) -> torch.Tensor:
    """The weight of a linear layer as ``[out, in]`` (a view)."""
    return weight_of(layer).t() if is_conv1d(layer) else weight_of(layer)


def columns(layer: nn.Module) -> torch.Tensor:
    """The weight of a linear layer as ``[in, out]`` (a view)."""
    return weight_of(layer) if is_conv1d(layer) else weight_of(layer).t()


def set_sizes(module: nn.Module, **sizes: int) -> None:
    """Set plain integer attributes of a module (widths, head counts), e.g. ``nf=768``."""
    for name, value in sizes.items():
        setattr(module, name, value)


def keep_outputs(layer: nn.Module, index: torch.Tensor) -> None:
    """Keep the output features ``index`` of a linear or ``Conv1D`` layer, in place."""
    with torch.no_grad():
        if is_conv1d(layer):
            layer.weight = nn.Parameter(weight_of(layer)[:, index].clone())
            set_sizes(layer, nf=len(index))
        else:
            layer.weight = nn.Parameter(weight_of(layer)[index].clone())
            set_sizes(layer, out_features=len(index))
        bias = bias_of(layer)
        if bias is not None:
            layer.bias = nn.Parameter(bias[index].clone())


def keep_inputs(layer: nn.Module, index: torch.Tensor) -> None:
    """Keep the input features ``index`` of a linear or ``Conv1D`` layer, in place."""
    with torch.no_grad():
        if is_conv1d(layer):
            layer.weight = nn.Parameter(weight_of(layer)[index].clone())
            set_sizes(layer, nx=len(index))
        else:
            layer.weight = nn.Parameter(weight_of(layer)[:, index].clone())
            set_sizes(layer, in_features=len(index))


def is_linear(layer: nn.Module | None) -> bool:
    """An ``nn.Linear`` or a ``Conv1D``."""
    return isinstance(layer, nn.Linear) or is_conv1d(layer)


def in_width(layer: nn.Module) -> int:
    """Input features of a linear or ``Conv1D`` layer."""
    shape = weight_of(layer).shape
    return int(shape[0] if is_conv1d(layer) else shape[1])


def out_width(layer: nn.Module) -> int:
    """Output features of a linear or ``Conv1D`` layer."""
    shape = weight_of(layer).shape
    return int(shape[1] if is_conv1d(layer) else shape[0])


@contextlib.contextmanager
def calibrating() -> Iterator[None]:
    """No autograd, and PyTorch's fused attention kernels off, so that hooks see every module
    run (``nn.TransformerEncoder`` may otherwise pack its input into a nested tensor)."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def run_batches(model: nn.Module, batches: list[Inputs]) -> None:
    """Run ``model`` in eval mode over ``batches`` (for the hooks it carries)."""
    was_training = model.training
    model.eval()
    try:
        with calibrating():
            for batch in batches:
                call_model(model, batch)
    finally:
        model.train(was_training)


def hooked_means(
    model: nn.Module,
    batches: list[Inputs],
    handles: list[Any],
    sums: dict[str, torch.Tensor],
    counts: dict[str, int],
    what: str,
) -> dict[str, torch.Tensor]:
    """Run ``model`` over ``batches`` with the forward hooks ``handles`` (removed afterwards),
    which add into ``sums`` and ``counts`` by name; each name's mean (float32).

    Raises:
        ValueError: A name's hook never ran (``what`` names the part in the message).
    """
    try:
        run_batches(model, batches)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, c in counts.items() if c == 0]
    if missing:
        raise ValueError(f"calibration never ran {what} {missing[0]!r}")
    return {n: (sums[n] / counts[n]).float() for n in sums}


def calibration_batches(ctx: Any, method: str) -> list[Inputs]:
    """The context's calibration batches, or a clear error when it has none.

    Raises:
        ValueError: There is no training split to calibrate on.
    """
    if ctx.train is None:
        raise ValueError(f"{method} needs calibration data (the training split)")
    return list(ctx.calibration)


def first_tensor_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """A block's input hidden states: its first positional tensor, else a named one."""
    for value in args:
        if isinstance(value, torch.Tensor):
            return value
    for name in ("hidden_states", "src", "x", "input"):
        if isinstance(kwargs.get(name), torch.Tensor):
            return cast(torch.Tensor | None, kwargs[name])
    return None


def first_tensor_out(output: Any) -> torch.Tensor | None:
    """A block's output hidden states: the output, or its first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        for value in output:
            if isinstance(value, torch.Tensor):
                return value
    return None
