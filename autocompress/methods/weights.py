"""Weight quantization: every weight matrix rounded to a k-bit grid, stored packed.

Covers conv and linear weights, fused attention projections (``in_proj_weight``) and, with
``embeddings``, embedding tables and positional parameters; biases and normalisation scales
stay float32 and the trial reports their bytes. Grids are per output channel, per tensor or
per group of 32/64/128 input features (:mod:`autocompress.grid`). ``rtn`` rounds to nearest;
``gptq`` (Frantar et al.) rounds linear layers one input column at a time and spreads each
rounding error over the columns not yet rounded, using the layer's inputs on calibration data
from the training split.

Whether the smaller weights also run faster depends on the target's kernels; the deploy step
says so in the trial's notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from torch import nn

from autocompress.allocation import allocate_bits, profile_sizes
from autocompress.architecture import tensor_of
from autocompress.grid import GRANULARITIES, QuantSpec, absmax_scale, codes_for, dequantize
from autocompress.methods._base import (
    Context,
    Method,
    Param,
    Suggester,
    allocation_param,
    profile_part,
)
from autocompress.transformer_parts import HF_CONV1D

BITS = (16, 8, 7, 6, 5, 4, 3, 2)
ALGORITHMS = ("rtn", "gptq")
MATRIX_ROLES = ("weight", "attention")
EMBEDDING_ROLES = ("embedding", "positional")


@dataclass(frozen=True)
class WeightQuantization(Method):
    """Round weights to a k-bit grid (or store them as float16).

    Attributes:
        bits: 16 (float16) or 2..8 (integer codes).
        granularity: One scale per output channel, per tensor, or per group of input features.
        algorithm: ``rtn`` (round to nearest) or ``gptq`` (calibrated, linear layers).
        keep_edges_8bit: Below 8 bits, keep the first layer and the output layers at 8 bits
            (the most sensitive, and the smallest).
        embeddings: Also quantize embedding tables and positional parameters.
        layer_bits: Bits of individual weights by parameter name, overriding ``bits``.
        budget_bits: When ``layer_bits`` were allocated from the study's sensitivity profile,
            the average code bits per weight they were allocated within (a record: what
            applies is ``layer_bits``).
    """

    bits: int = 8
    granularity: str = "per_channel"
    algorithm: str = "rtn"
    keep_edges_8bit: bool = True
    embeddings: bool = True
    layer_bits: dict[str, int] = field(default_factory=dict)
    budget_bits: float | None = None

    WARM_START_REQUIRED_OFF: ClassVar[bool] = True
    stage: ClassVar[str] = "quantize"
    CHANGES_DEPLOYED: ClassVar[str] = "low_bit"
    SEARCH: ClassVar[dict[str, Param]] = {
        "bits": Param(int, [8, 4], "bits per weight (16: float16)", choices=BITS),
        "granularity": Param(str, "per_channel", "what shares one scale", choices=GRANULARITIES),
        "algorithm": Param(str, "rtn", "rounding: nearest, or GPTQ on calibration data",
                           choices=ALGORITHMS),
        "keep_edges_8bit": Param(bool, True, "below 8 bits, first and output layers at 8"),
        "embeddings": Param(bool, True, "quantize embedding tables and positional parameters"),
        "per_layer": Param(bool, False, "bits of each weight, from those `bits` offers"),
        "allocation": allocation_param("bits within `budget_bits`"),
        "budget_bits": Param(float, {"low": 2.0, "high": 8.0},
                             "average bits per weight the per-layer bits are allocated within",
                             bounds=(2.0, 8.0)),
    }  # fmt: skip

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"weight bits must be one of {BITS}, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        for name, bits in self.layer_bits.items():
            if bits not in BITS:
                raise ValueError(f"weight bits of {name!r} must be one of {BITS}, got {bits!r}")
        budget = self.budget_bits
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int | float) or not 2 <= budget <= 8
        ):
            raise ValueError(f"budget_bits must be a number in [2, 8], got {budget!r}")

    @classmethod
    def suggest(cls, s: Suggester) -> Method:
        if s("per_layer") and s("allocation") == "sensitivity":
            return cls._allocated(s)
        values = {k: s(k) for k in ("bits", "granularity", "algorithm", "embeddings")}
        layer_bits: dict[str, int] = {}
        keep_edges = True
        if values["bits"] <= 8 and s("per_layer"):
            for name in planned_names(s.facts, values["embeddings"]):
                layer_bits[name] = s.per_layer("bits", name, keep=lambda b: b <= 8)
        elif values["bits"] < 8:
            keep_edges = s("keep_edges_8bit")
        if values["bits"] == 16:
            values["granularity"], values["algorithm"] = "per_channel", "rtn"
        return cls(**values, keep_edges_8bit=keep_edges, layer_bits=layer_bits)

    @classmethod
    def _allocated(cls, s: Suggester) -> Method:
        """Bits per weight from the profile, within a searched average (``budget_bits``)."""
        values = {k: s(k) for k in ("granularity", "algorithm", "embeddings")}
        budget = float(s("budget_bits"))
        offered = {b for b in s.choices("bits") or BITS if b <= 8}
        curves = {
            name: {b: v for b, v in curve.items() if int(b) in offered}
            for name, curve in profile_part(s, "bits", "weights").items()
        }
        names = [n for n in planned_names(s.facts, values["embeddings"]) if curves.get(n)]
        sizes = profile_sizes(s.profile or {}, s.facts)
        found = allocate_bits({n: curves[n] for n in names}, sizes, budget)
        layer_bits = dict(found.choice)
        bits = max(layer_bits.values(), default=8)
        return cls(**values, bits=bits, keep_edges_8bit=False, layer_bits=layer_bits,
                   budget_bits=round(budget, 4))  # fmt: skip

    def describe(self) -> str:
        if self.layer_bits:
            bits = sorted(set(self.layer_bits.values()))
            span = f"{bits[0]}-{bits[-1]}" if len(bits) > 1 else f"{bits[0]}"
            text = f"{span}-bit per layer"
            if self.budget_bits is not None:
                text += f" (<= {self.budget_bits:.2f} avg, by sensitivity)"
        elif self.bits == 16:
            return "fp16 weights"
        else:
            text = f"{self.bits}-bit"
        text += f" {self.granularity.replace('_', '-')}"
        if self.algorithm != "rtn":
            text += f" {self.algorithm}"
        if self.bits < 8 and not self.keep_edges_8bit and not self.layer_bits:
            text += " all layers"
        return text

    def plan(self, model: nn.Module, ctx: Context) -> dict[str, QuantSpec]:
        """Grid of each quantized parameter, by its current name.

        Covers the matrices the model has now (the parts of a split layer too); per-layer
        bits and the edge layers are by baseline name, so a split layer's parts get the bits
        of the layer they replace.
        """
        facts = ctx.facts
        edges = set(facts.output_layers) | set(facts.layers[:1])
        modules = dict(model.named_modules())
        roles = MATRIX_ROLES + (EMBEDDING_ROLES if self.embeddings else ())
        plan = {}
        for current, origin in ctx.params(model, roles).items():
            if tensor_of(model, current).dim() < 2:
                continue
            name = origin.baseline
            bits = self.bits
            owner = name.rpartition(".")[0]
            if self.keep_edges_8bit and bits < 8 and owner in edges:
                bits = 8
            bits = self.layer_bits.get(name, bits)
            layer = modules.get(current.rpartition(".")[0])
            axis = 1 if HF_CONV1D and isinstance(layer, HF_CONV1D) else 0
            plan[current] = QuantSpec(bits, self.granularity if bits <= 8 else "per_channel", axis)
        return plan

    def apply(self, model: nn.Module, ctx: Context) -> None:
        plan = self.plan(model, ctx)
        params = dict(model.named_parameters())
        gptq_inputs = {}
        if self.algorithm == "gptq":
            from autocompress.gptq import gptq_quantize, linear_inputs

            targets = [n for n, s in plan.items() if s.bits <= 8]
            gptq_inputs = linear_inputs(model, targets, ctx.calibration)
        with torch.no_grad():
            for name, spec in plan.items():
                weight = params[name]
                if spec.bits == 16:
                    weight.copy_(weight.to(torch.float16).to(weight.dtype))
                    continue
                if name in gptq_inputs:
                    codes, scale = gptq_quantize(weight, spec, gptq_inputs[name])
                    weight.copy_(dequantize(codes, scale, spec).to(weight.dtype))
                else:
                    rounded, scale = round_to_grid(weight, spec)
                    weight.copy_(rounded)
                ctx.scales[name] = scale
        ctx.records["weights"] = {"plan": {n: s.to_list() for n, s in plan.items()}}

    @classmethod
    def check_replay(cls, recorded: Any, got: Any) -> str | None:
        if (got or {}).get("plan") != (recorded or {}).get("plan"):
            return "the rebuilt model's weight plan differs from the recipe's (another model?)"
        return None

    LAYER_COLUMN: ClassVar[str | None] = "weight bits"

    @classmethod
    def layer_cells(cls, record: Any, widths: Mapping[str, int]) -> dict[str, str]:
        plan = (record or {}).get("plan") or {}
        bits = {k.rpartition(".")[0]: str(v[0] if isinstance(v, list) else v)
                for k, v in plan.items()}  # fmt: skip
        return {**dict.fromkeys(widths, "32"), **bits}


def round_to_grid(weight: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest on the grid ``spec`` (absmax scales): the rounded weight, in the
    weight's dtype, and its scales. What ``rtn`` stores, and what the sensitivity profile
    measures (:mod:`autocompress.sensitivity`)."""
    scale = absmax_scale(weight, spec)
    codes = codes_for(weight, scale, spec)
    return dequantize(codes, scale, spec).to(weight.dtype), scale


def planned_names(facts: object, embeddings: bool) -> list[str]:
    """Parameters weight quantization covers, in model order."""
    roles = MATRIX_ROLES + (EMBEDDING_ROLES if embeddings else ())
    return [p.name for p in facts.iter_params(roles)]  # type: ignore[attr-defined]


def implied_weights(ctx_config: object) -> WeightQuantization | None:
    """The weight quantization in force: the configured one, or 8 bits implied by int8."""
    weights = ctx_config.get("weights")  # type: ignore[attr-defined]
    if weights is not None:
        return cast(WeightQuantization, weights)
    int8 = ctx_config.get("int8")  # type: ignore[attr-defined]
    if int8 is None:
        return None
    granularity = "per_channel" if int8.per_channel else "per_tensor"
    return WeightQuantization(bits=8, granularity=granularity, embeddings=False)


def weight_plan(model: nn.Module, ctx: Context) -> dict[str, QuantSpec]:
    """The plan of the weight quantization in force (empty when weights stay float)."""
    weights = implied_weights(ctx.config)
    return {} if weights is None else weights.plan(model, ctx)
