"""The sensitivity profile: how much the task's loss grows when one layer alone is compressed.

Measured once, when a study whose space asks for per-layer allocation is created, on the
first :data:`CALIBRATION_ROWS` examples of the **training** split (never validation or test),
in inference mode and deterministically; stored in the study's record (``sensitivity``, JSON)
and read by every worker and on every resume, never measured again. For each weight the
weights method quantizes and each bit-width the space offers (at most 8): the loss increase
when only that weight is rounded to nearest on the space's grid (the weights method's own
quantizer, :func:`autocompress.methods.weights.round_to_grid`). For each prunable weight and
each ratio of :data:`RATIOS`: the loss increase when only that weight is magnitude-pruned
(unstructured); for each layer structured pruning narrows: when only that layer's
lowest-L2-norm output channels are zeroed (weights and bias; a proxy of their removal that
ignores what follows them). For transformers whose space allocates head or MLP pruning per
block, each block's heads, MLP neurons and the whole block
(:mod:`autocompress.sensitivity_blocks`). :mod:`autocompress.allocation` turns the profile and
one global budget into per-layer settings.

Formats: 1 measured weights and layers only; 2 adds the transformer parts (``heads.*``,
``mlp.*``, ``depth``). The parts of format 1 are unchanged, so both read the same.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from autocompress.allocation import profile_sizes
from autocompress.architecture import ModelFacts, model_facts
from autocompress.data import (
    Batch,
    Inputs,
    Split,
    as_output,
    batch_size_of,
    call_model,
    split_batch,
)
from autocompress.grid import GRANULARITIES, QuantSpec
from autocompress.tasks import Task
from autocompress.transformer_parts import HF_CONV1D

if TYPE_CHECKING:
    from autocompress.search_space import SearchSpace
    from autocompress.workload import LoadedWorkload

PROFILE_FORMAT = 2
CALIBRATION_ROWS = 256
RATIOS = (0.25, 0.5, 0.75, 0.9, 0.95)


@dataclass(frozen=True)
class ProfileRequest:
    """What a space's per-layer allocation needs measured.

    Attributes:
        bits: Bit-widths of the weights method's per-layer allocation (empty: none).
        granularity: The grid the bits are measured on.
        embeddings: Whether embedding tables and positional parameters are measured too.
        prune: Measure unstructured pruning of each prunable weight.
        channels: Measure channel pruning of each layer structured pruning narrows.
        heads: Importances of head pruning to measure each attention module's heads by
            (empty: none).
        mlp: Importances of MLP pruning to measure each block's MLP neurons by (empty: none).
        depth: Measure each transformer block skipped.
        ratios: Pruning ratios measured.
        rows: Training examples the loss is measured on.
    """

    bits: tuple[int, ...] = ()
    granularity: str = "per_channel"
    embeddings: bool = False
    prune: bool = False
    channels: bool = False
    heads: tuple[str, ...] = ()
    mlp: tuple[str, ...] = ()
    depth: bool = False
    ratios: tuple[float, ...] = RATIOS
    rows: int = CALIBRATION_ROWS

    def __post_init__(self) -> None:
        if any(isinstance(b, bool) or b not in range(2, 9) for b in self.bits):
            raise ValueError(f"profiled bits are 2..8, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if not self.ratios or any(not 0.0 < r < 1.0 for r in self.ratios):
            raise ValueError(f"pruning ratios are in (0, 1), got {self.ratios!r}")
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
            raise ValueError(f"calibration rows must be a positive integer, got {self.rows!r}")
        for what, importances in (("heads", self.heads), ("mlp", self.mlp)):
            if any(not isinstance(i, str) for i in importances) or len(set(importances)) != len(
                importances
            ):
                raise ValueError(f"{what} importances are distinct names, got {importances!r}")

    @property
    def empty(self) -> bool:
        """Nothing to measure."""
        return not (self.bits or self.prune or self.channels or self.heads or self.mlp
                    or self.depth)  # fmt: skip


def _asks(space: SearchSpace, method: str) -> bool:
    """Whether ``method``'s per-layer settings may be allocated from the profile."""
    if method not in space.methods:
        return False
    per_layer, allocation = space.dims[f"{method}.per_layer"], space.dims[f"{method}.allocation"]
    return per_layer.allows(True) and allocation.allows("sensitivity")


def request_for(space: SearchSpace, rows: int = CALIBRATION_ROWS) -> ProfileRequest:
    """What ``space`` needs measured (empty when it allocates nothing by sensitivity)."""
    bits: tuple[int, ...] = ()
    granularity, embeddings = "per_channel", False
    if _asks(space, "weights"):
        offered = space.dims["weights.bits"].values() or ()
        bits = tuple(sorted({int(b) for b in offered if b <= 8}, reverse=True))
        grains = space.dims["weights.granularity"].values() or ("per_channel",)
        granularity = "per_channel" if "per_channel" in grains else str(grains[0])
        embeddings = space.dims["weights.embeddings"].allows(True)
    heads, mlp = _importances(space, "heads"), _importances(space, "mlp")
    return ProfileRequest(
        bits=bits,
        granularity=granularity,
        embeddings=embeddings,
        prune=_asks(space, "unstructured"),
        channels=_asks(space, "structured"),
        heads=heads,
        mlp=mlp,
        depth=bool(heads or mlp),
        rows=rows,
    )


def _importances(space: SearchSpace, method: str) -> tuple[str, ...]:
    """The importances ``method`` may rank by, when its per-block amounts may be allocated from
    the profile (else none)."""
    if not _asks(space, method):
        return ()
    return tuple(str(i) for i in space.dims[f"{method}.importance"].values() or ())


def calibration_batches(train: Split, rows: int, batch_size: int = 64) -> list[Batch]:
    """The training split's first ``rows`` examples (or all it has), in order, with labels."""
    out, seen = [], 0
    for batch in train.batches(batch_size):
        out.append(batch)
        seen += batch_size_of(split_batch(batch)[0])
        if seen >= rows:
            break
    return out


def _loss(model: nn.Module, task: Task, batches: list[Batch]) -> float:
    total = count = 0.0
    for batch in batches:
        inputs = split_batch(batch)[0]
        n = batch_size_of(inputs)
        total += float(task.loss(as_output(call_model(model, inputs)), batch)) * n
        count += n
    return total / count


def _channel_axis(module: nn.Module) -> int:
    return 1 if HF_CONV1D and isinstance(module, HF_CONV1D) else 0


def measure_profile(
    model: nn.Module,
    task: Task,
    train: Split,
    example_input: Inputs,
    request: ProfileRequest,
    facts: ModelFacts | None = None,
) -> dict[str, Any]:
    """Measure the profile ``request`` asks for on a copy of ``model`` (left untouched).

    Returns:
        The profile, JSON-ready: ``bits`` (weight -> bits -> loss increase), ``prune``
        (weight -> ratio -> loss increase), ``channels`` (layer -> ratio -> loss increase),
        the transformer parts (:func:`autocompress.sensitivity_blocks.measure_blocks`),
        ``params`` (weight or layer -> its number of weights), ``base_loss``, ``calibration``
        (split and rows), ``request`` and ``seconds``.
    """
    from autocompress.methods import Context
    from autocompress.methods.structured import pruned_layers
    from autocompress.methods.unstructured import ROLES, keep_largest
    from autocompress.methods.weights import WeightQuantization, round_to_grid
    from autocompress.pipeline import CompressionConfig
    from autocompress.sensitivity_blocks import measure_blocks

    started = time.perf_counter()
    facts = facts or model_facts(model, example_input)
    batches = calibration_batches(train, request.rows)
    rows = sum(batch_size_of(split_batch(b)[0]) for b in batches)
    work = copy.deepcopy(model).eval()
    params = dict(work.named_parameters())
    modules = dict(work.named_modules())
    profile: dict[str, Any] = {"format": PROFILE_FORMAT, "request": asdict(request)}
    with torch.inference_mode():
        base = _loss(work, task, batches)

        def increase(model: nn.Module = work) -> float:
            return round(_loss(model, task, batches) - base, 8)

        if request.bits:
            ctx = Context(task, example_input, train, facts, CompressionConfig())
            planner = WeightQuantization(
                bits=8, granularity=request.granularity, keep_edges_8bit=False,
                embeddings=request.embeddings,
            )  # fmt: skip
            curves: dict[str, dict[str, float]] = {}
            for name, spec in planner.plan(work, ctx).items():
                weight = params[name]
                original = weight.detach().clone()
                curves[name] = {}
                for bits in request.bits:
                    grid = QuantSpec(bits, spec.granularity, spec.channel_axis)
                    weight.copy_(round_to_grid(original, grid)[0])
                    curves[name][str(bits)] = increase()
                weight.copy_(original)
            profile["bits"] = curves
        if request.prune:
            curves = {}
            for p in facts.iter_params(ROLES):
                weight = params[p.name]
                original = weight.detach().clone()
                curves[p.name] = {}
                for ratio in request.ratios:
                    weight.copy_(original * keep_largest(original, ratio))
                    curves[p.name][str(ratio)] = increase()
                weight.copy_(original)
            profile["prune"] = curves
        if request.channels:
            curves = {}
            for layer in pruned_layers(facts):
                module = modules[layer]
                curves[layer] = _channel_curve(module, request.ratios, increase)
            profile["channels"] = curves
        if request.heads or request.mlp or request.depth:
            inputs = [split_batch(b)[0] for b in batches]
            profile.update(measure_blocks(work, request, inputs, increase))
    profile["params"] = profile_sizes(profile, facts)  # what readers of the profile show
    profile["base_loss"] = round(base, 8)
    profile["calibration"] = {"split": "train", "rows": rows}
    profile["seconds"] = round(time.perf_counter() - started, 3)
    return profile


def _channel_curve(module: nn.Module, ratios: tuple[float, ...], increase: Any) -> dict[str, float]:
    """Loss increase when the layer's lowest-L2-norm output channels are zeroed, by ratio."""
    weight, bias = cast(torch.Tensor, module.weight), getattr(module, "bias", None)
    axis = _channel_axis(module)
    original = weight.detach().clone()
    original_bias = None if bias is None else bias.detach().clone()
    rows = original.movedim(axis, 0).reshape(original.shape[axis], -1)
    order = torch.argsort(rows.norm(dim=1), stable=True)
    curve = {}
    for ratio in ratios:
        drop = order[: min(int(ratio * len(order)), len(order) - 1)]
        pruned = original.clone()
        pruned.index_fill_(axis, drop, 0.0)
        weight.copy_(pruned)
        if bias is not None and original_bias is not None:
            bias.copy_(original_bias.index_fill(0, drop, 0.0))
        curve[str(ratio)] = increase()
    weight.copy_(original)
    if bias is not None and original_bias is not None:
        bias.copy_(original_bias)
    return curve


def profile_for(space: SearchSpace, workload: LoadedWorkload) -> dict[str, Any] | None:
    """The profile ``space`` needs for ``workload``'s baseline, or ``None`` when it needs none."""
    request = request_for(space)
    if request.empty:
        return None
    return measure_profile(
        workload.model, workload.task, workload.train, workload.example_input, request
    )


__all__ = [
    "CALIBRATION_ROWS",
    "PROFILE_FORMAT",
    "RATIOS",
    "ProfileRequest",
    "calibration_batches",
    "measure_profile",
    "profile_for",
    "request_for",
]
