"""Per-layer pruning amounts, shared by structured, unstructured, head and MLP pruning.

Each method searches one global ``amount`` and, with ``per_layer``, either allocates each
layer's share from the study's sensitivity profile within that budget or samples a multiplier
of it per layer. Only the layers (channels, weights, attention modules, MLPs), the profile
part they read, the largest share and the grid of shares differ.
"""

from __future__ import annotations

from collections.abc import Mapping

from autocompress.allocation import PRUNE_STEP, allocate_ratios, profile_sizes
from autocompress.methods._base import Param, Suggester, allocation_param, fraction, profile_part


def layer_amount_params(
    what: str, high: float = 0.95, default: tuple[float, float] = (0.1, 0.9)
) -> dict[str, Param]:
    """The searchable parameters of a pruning method with per-layer amounts.

    Args:
        what: What ``amount`` removes, in words (its help text).
        high: The largest share the method removes.
        default: The range of ``amount`` a space that omits it searches.
    """
    low, top = default
    return {
        "amount": Param(float, {"low": low, "high": top}, what, bounds=(0.0, high)),
        "per_layer": Param(bool, False, "one amount per layer"),
        "allocation": allocation_param("amounts pruning `amount` of the parameters"),
        "layer_scale": Param(float, {"low": 0.5, "high": 1.5},
                             "sampled: range of the per-layer multipliers of the amount",
                             bounds=(0.0, 4.0)),
    }  # fmt: skip


def check_layer_amounts(
    label: str,
    amount: float,
    layer_amounts: Mapping[str, float],
    allocated: object,
    high: float = 0.95,
) -> None:
    """Raise ``ValueError`` unless every amount is a share in [0, ``high``] and ``allocated`` a
    bool."""
    fraction(amount, f"{label} amount", high=high)
    for name, value in layer_amounts.items():
        fraction(value, f"{label} amount of {name!r}", high=high)
    if not isinstance(allocated, bool):
        raise ValueError(f"allocated must be true or false, got {allocated!r}")


def suggest_layer_amounts(
    s: Suggester,
    names: list[str],
    profile_key: str,
    method: str,
    step: float | None = PRUNE_STEP,
    high: float = 0.95,
) -> tuple[dict[str, float], bool]:
    """Each layer's amount for this trial, and whether it was allocated from the profile.

    Args:
        s: The trial's suggester; ``s("amount")`` is the global amount.
        names: The layers (baseline names) that may get their own amount.
        profile_key: The sensitivity profile's part for this method.
        method: The method's name, for errors.
        step: The grid of allocated shares (``None``: the measured shares only).
        high: The largest sampled share.

    Returns:
        ``({}, False)`` without per-layer search; else the amounts by layer name.
    """
    amount = s("amount")
    if not s("per_layer"):
        return {}, False
    if s("allocation") == "sensitivity":
        curves = profile_part(s, profile_key, method)
        chosen = [n for n in names if n in curves]
        sizes = profile_sizes(s.profile or {}, s.facts)
        found = allocate_ratios({n: curves[n] for n in chosen}, sizes, amount, step)
        return dict(found.choice), True
    return {n: round(min(high, amount * s.per_layer("layer_scale", n)), 4) for n in names}, False


def describe_amounts(
    label: str, amount: float, layer_amounts: Mapping[str, float], allocated: bool
) -> str:
    """``label 50%``, or the per-layer range (and the budget, when allocated)."""
    if not layer_amounts:
        return f"{label} {amount:.0%}"
    lo, hi = min(layer_amounts.values()), max(layer_amounts.values())
    span = f"{lo:.0%}" if lo == hi else f"{lo:.0%}-{hi:.0%}"
    if allocated:
        return f"{label} {amount:.0%} by sensitivity, {span} per layer"
    return f"{label} {span} per layer"
