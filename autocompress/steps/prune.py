"""Pruning: unstructured global magnitude (masks) or structured channels (torch-pruning).

Structured pruning physically removes channels, so the model gets smaller and faster on dense
kernels. Unstructured pruning only zeroes weights: the packed artifact stores them sparsely (so
size falls) but dense kernels run just as long, and the trial records that it gave no speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from autocompress.errors import TrialFailure

PRUNE_METHODS = ("none", "unstructured", "structured")
_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class PruneConfig:
    """Which pruning, how much.

    Attributes:
        method: ``none``, ``unstructured`` (global magnitude over all conv/linear weights) or
            ``structured`` (output channels by L2 magnitude, removed with torch-pruning).
        amount: Share of weights (unstructured) or of channels per layer (structured) removed.
        layer_amounts: Per-layer amounts by module name, overriding ``amount`` for those
            layers (unstructured pruning then prunes each layer by its own magnitude).
    """

    method: str = "none"
    amount: float = 0.0
    layer_amounts: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise ValueError(f"unknown pruning method {self.method!r}; use one of {PRUNE_METHODS}")
        for name, value in {"": self.amount, **self.layer_amounts}.items():
            if not 0.0 <= value <= 0.95:
                where = f" of layer {name!r}" if name else ""
                raise ValueError(f"pruning amount{where} must be in [0, 0.95], got {value}")


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv and linear layers, in definition order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _PRUNABLE)]


def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """Layers whose output width is the model's output width (kept whole: the classes)."""
    with torch.inference_mode():
        n_out = model.eval()(example_input).shape[-1]
    layers = prunable_layers(model)
    last = layers[-1][1] if layers else None
    return [m for _, m in layers if m is last and _out_features(m) == n_out]


def _out_features(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def prune_model(
    model: nn.Module, config: PruneConfig, example_input: torch.Tensor
) -> dict[str, Any]:
    """Prune ``model`` in place.

    Unstructured pruning leaves ``torch.nn.utils.prune`` masks on the weights so fine-tuning
    keeps pruned weights at zero; call :func:`finalize_pruning` after fine-tuning.

    Returns:
        A report: parameter counts before/after and, for structured pruning, the kept
        output channels per layer and torch-pruning's history (to replay it exactly).

    Raises:
        TrialFailure: torch-pruning could not trace or prune the model.
    """
    before = sum(p.numel() for p in model.parameters())
    report: dict[str, Any] = {
        "method": config.method,
        "amount": config.amount,
        "params_before": before,
    }
    if config.method == "none" or (config.amount == 0.0 and not config.layer_amounts):
        report["params_after"] = before
        return report
    layers = dict(prunable_layers(model))
    unknown = set(config.layer_amounts) - set(layers)
    if unknown:
        raise TrialFailure(f"per-layer pruning names unknown layers: {sorted(unknown)}")
    if config.method == "unstructured":
        if config.layer_amounts:
            for name, module in layers.items():
                amount = config.layer_amounts.get(name, config.amount)
                if amount > 0:
                    torch_prune.l1_unstructured(module, "weight", amount=amount)
        else:
            torch_prune.global_unstructured(
                [(m, "weight") for m in layers.values()],
                pruning_method=torch_prune.L1Unstructured,
                amount=config.amount,
            )
        report["params_after"] = before
        return report
    try:
        pruner = tp.pruner.MagnitudePruner(
            model,
            example_inputs=example_input,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=config.amount,
            pruning_ratio_dict={layers[n]: a for n, a in config.layer_amounts.items()} or None,
            ignored_layers=output_layers(model, example_input),
            global_pruning=False,
        )
        pruner.step()
    except Exception as e:  # noqa: BLE001 - torch-pruning raises many kinds; the trial reports it
        raise TrialFailure(
            f"structured pruning failed (torch-pruning could not trace or prune this model): "
            f"{type(e).__name__}: {e}"
        ) from e
    report["params_after"] = sum(p.numel() for p in model.parameters())
    report["channels"] = {n: _out_features(m) for n, m in prunable_layers(model)}
    report["history"] = [
        [str(name), bool(is_out), [int(i) for i in idx]]
        for name, is_out, idx in pruner.pruning_history()
    ]
    return report


def finalize_pruning(model: nn.Module) -> None:
    """Make unstructured masks permanent (zeros stay in the weight tensor, hooks go)."""
    for _, m in prunable_layers(model):
        if torch_prune.is_pruned(m) and hasattr(m, "weight_mask"):
            torch_prune.remove(m, "weight")


def sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights over all conv/linear weights."""
    total = zeros = 0
    for _, m in prunable_layers(model):
        w = m.weight.detach()
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0
