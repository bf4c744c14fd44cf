"""Depth pruning: drop whole transformer blocks, those that change their input least.

A block's importance is measured on calibration data, by activations: its ``influence``, one
minus the mean cosine similarity of its input and output hidden states (ShortGPT, Men et al.
2024; Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"), or its
effect on the ``output``: the task's distillation loss between the model with that block
skipped and the whole model (Minitron's depth importance, Muralidharan et al. 2024), which sees
what the last blocks do to the output that the cosine of one block does not. Either is a
property of the baseline, so it is computed once per study and kept on the baseline's facts.
The kept blocks are renumbered (``layer_idx`` too, for key/value caches) and Hugging Face
configurations say the new depth. Depth pruning runs first in the prune stage, so that head and
MLP pruning work on the kept blocks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data import as_output, call_model
from autocompress.methods._base import Context, Method, Param, fraction
from autocompress.methods._transformer import (
    calibrating,
    calibration_batches,
    first_tensor_arg,
    first_tensor_out,
    parts_of,
    run_batches,
)
from autocompress.transformer_parts import TransformerParts

IMPORTANCE = ("influence", "output")


@dataclass(frozen=True)
class DepthPruning(Method):
    """Remove the transformer blocks of least influence on calibration data.

    Attributes:
        amount: Share of the blocks removed (rounded to the nearest count; one always stays).
        importance: ``influence`` (how much a block changes its input) or ``output`` (how
            much skipping it changes the model's output).
    """

    amount: float = 0.25
    importance: str = "influence"

    stage: ClassVar[str] = "prune"
    SEARCH: ClassVar[dict[str, Param]] = {
        "amount": Param(float, {"low": 0.1, "high": 0.5}, "share of transformer blocks removed",
                        bounds=(0.0, 0.5)),
        "importance": Param(str, "influence", "how blocks are ranked: change of their input, "
                            "or change of the output when skipped", choices=IMPORTANCE),
    }  # fmt: skip

    def __post_init__(self) -> None:
        fraction(self.amount, "depth pruning amount", high=0.5)
        if self.importance not in IMPORTANCE:
            raise ValueError(
                f"depth importance must be one of {', '.join(IMPORTANCE)}, got {self.importance!r}"
            )

    @classmethod
    def unavailable(cls, facts: Any) -> str | None:
        parts = facts.transformer
        if parts is None:
            return "no transformer blocks found"
        if len(parts.blocks) < 2:
            return "a single transformer block"
        return None

    def describe(self) -> str:
        suffix = " by output" if self.importance == "output" else ""
        return f"depth -{self.amount:.0%}{suffix}"

    def count(self, blocks: int) -> int:
        """Blocks removed out of ``blocks``: the share rounded half up, never all."""
        return min(int(math.floor(self.amount * blocks + 0.5 + 1e-9)), blocks - 1)

    def apply(self, model: nn.Module, ctx: Context) -> None:
        parts = parts_of(model)
        if parts is None:
            raise ValueError("depth pruning found no transformer blocks in this model")
        n = len(parts.blocks)
        replay = ctx.replay.get("depth")
        record: dict[str, Any]
        if replay is not None:
            removed = sorted(int(i) for i in replay["removed"])
            if removed and (removed[0] < 0 or removed[-1] >= n or len(removed) >= n):
                raise ValueError(f"cannot remove blocks {removed} of {n}")
            record = {**replay, "removed": removed}
        elif self.count(n) == 0:
            removed, record = [], {"removed": []}
        else:
            influence = (
                output_importance(ctx) if self.importance == "output" else block_influence(ctx)
            )
            if len(influence) != n:
                raise ValueError(
                    f"the baseline has {len(influence)} blocks, the model to prune {n}; depth "
                    "pruning runs on the baseline's blocks"
                )
            order = sorted(range(n), key=lambda i: (influence[i], i))
            removed = sorted(order[: self.count(n)])
            record = {"removed": removed, "influence": [round(x, 6) for x in influence]}
        ctx.renamed.update(drop_blocks(model, parts, removed))
        ctx.records["depth"] = record
        if removed:
            ctx.notes.append(
                f"depth pruning removed blocks {removed} of {n} (least change of their input "
                "on calibration data)"
            )
        else:
            ctx.notes.append(f"depth pruning of {self.amount:.0%} removed no block (rounded)")


def block_influence(ctx: Context) -> list[float]:
    """Each baseline block's influence, computed once per baseline and calibration size."""
    facts = ctx.facts

    def compute() -> list[float]:
        parts = facts.transformer
        if parts is None:
            raise ValueError("depth pruning found no transformer blocks in the baseline")
        return influence(facts.model, parts, calibration_batches(ctx, "depth pruning"))

    return cast(list[float], facts.cached(f"depth.influence.{ctx.calibration_rows}", compute))


def output_importance(ctx: Context) -> list[float]:
    """Each baseline block's effect on the output, computed once per baseline and calibration
    size: the task's distillation loss (temperature 1) from the whole model's outputs to the
    outputs with only that block skipped, over the calibration batches."""
    facts = ctx.facts

    def compute() -> list[float]:
        parts = facts.transformer
        if parts is None:
            raise ValueError("depth pruning found no transformer blocks in the baseline")
        batches = calibration_batches(ctx, "depth pruning by output")
        return list(skip_losses(facts.model, parts, batches, ctx.task))

    return cast(list[float], facts.cached(f"depth.output.{ctx.calibration_rows}", compute))


def skip_losses(
    model: nn.Module, parts: TransformerParts, batches: list[Any], task: Any
) -> list[float]:
    """For each block, the mean of ``task.distillation_loss`` between the model with that
    block skipped (its output replaced by its input) and the whole model, over ``batches``."""
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        with calibrating():
            whole = [as_output(call_model(model, b)).float() for b in batches]
            losses = []
            for name in parts.blocks:
                with skipping(modules[name]):
                    total = 0.0
                    for b, target in zip(batches, whole, strict=True):
                        out = as_output(call_model(model, b)).float()
                        total += float(task.distillation_loss(out, target, b, 1.0))
                losses.append(total / len(batches))
    finally:
        model.train(was_training)
    return losses


@contextlib.contextmanager
def skipping(block: nn.Module) -> Iterator[None]:
    """Within the block, ``block`` passes its input through unchanged (as if removed)."""
    handle = block.register_forward_hook(_skip, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _skip(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    """A forward hook that makes a block pass its input through unchanged."""
    x = first_tensor_arg(args, kwargs)
    if x is None:
        return output
    if isinstance(output, torch.Tensor):
        return x
    if isinstance(output, tuple):
        return (x, *output[1:])
    return output


def influence(model: nn.Module, parts: TransformerParts, batches: list[Any]) -> list[float]:
    """One minus the mean cosine similarity of each block's input and output hidden states,
    over every position of ``batches``."""
    modules = dict(model.named_modules())
    sums = [0.0] * len(parts.blocks)
    counts = [0] * len(parts.blocks)

    def hook(
        _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, i: int
    ) -> None:
        x, y = first_tensor_arg(args, kwargs), first_tensor_out(output)
        if x is None or y is None or x.shape != y.shape:
            return
        cos = F.cosine_similarity(x.flatten(0, -2).double(), y.flatten(0, -2).double(), dim=-1)
        sums[i] += float(cos.sum())
        counts[i] += cos.numel()

    handles = [
        modules[name].register_forward_hook(
            lambda m, a, k, o, i=i: hook(m, a, k, o, i), with_kwargs=True
        )
        for i, name in enumerate(parts.blocks)
    ]
    try:
        run_batches(model, batches)
    finally:
        for h in handles:
            h.remove()
    if not all(counts):
        block = parts.blocks[counts.index(0)]
        raise ValueError(f"could not read the hidden states of block {block!r} on calibration")
    return [1.0 - s / c for s, c in zip(sums, counts, strict=True)]


def drop_blocks(
    model: nn.Module, parts: TransformerParts, removed: list[int]
) -> dict[str, str | None]:
    """Remove the blocks ``removed`` (indices) in place; return the blocks renamed or removed
    (``None``), by old name.

    Raises:
        ValueError: The blocks are the model itself (nothing to put a shorter list in).
    """
    if not removed:
        return {}
    path = parts.blocks_path
    if not path:
        raise ValueError("the model is its own list of blocks; depth pruning needs a parent")
    holder_name, _, attr = path.rpartition(".")
    holder = model.get_submodule(holder_name) if holder_name else model
    old = getattr(holder, attr)
    n = len(old)
    kept = [i for i in range(n) if i not in set(removed)]
    setattr(holder, attr, nn.ModuleList([old[i] for i in kept]))
    for new, i in enumerate(kept):
        for module in old[i].modules():
            # Hugging Face attention finds its key/value cache slot by layer_idx.
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new
    if isinstance(holder, nn.TransformerEncoder):
        holder.num_layers = len(kept)
    _update_configs(model, n, kept)
    renamed: dict[str, str | None] = {f"{path}.{i}": None for i in removed}
    renamed.update({f"{path}.{i}": f"{path}.{new}" for new, i in enumerate(kept) if new != i})
    return renamed


def _update_configs(model: nn.Module, n: int, kept: list[int]) -> None:
    """Hugging Face configurations: the new depth, and per-layer settings of the kept blocks."""
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or id(config) in seen:
            continue
        seen.add(id(config))
        if getattr(config, "num_hidden_layers", None) == n:
            config.num_hidden_layers = len(kept)
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == n:
            config.layer_types = [layer_types[i] for i in kept]
