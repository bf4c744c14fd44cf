"""Facts about a model's architecture that methods need: its weight layers, which layers make
its output, every parameter with its role, and its transformer parts.

Computed once per baseline (:func:`model_facts`) and shared by every trial.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from autocompress.data import Inputs, as_output, call_model
from autocompress.transformer_parts import HF_CONV1D, TransformerParts, find_transformer_parts

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


LINEARS: tuple[type[nn.Module], ...] = (nn.Linear, *HF_CONV1D)
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (*CONVS, *LINEARS)


def weight_of(layer: nn.Module) -> torch.Tensor:
    """The ``weight`` of a conv, linear or ``Conv1D`` layer.

    Raises:
        TypeError: ``layer.weight`` is not a tensor.
    """
    weight = layer.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(layer).__name__}.weight is not a tensor")
    return weight


def bias_of(layer: nn.Module) -> torch.Tensor | None:
    """The ``bias`` of a conv, linear or ``Conv1D`` layer, or ``None`` when it has none.

    Raises:
        TypeError: ``layer.bias`` is neither a tensor nor ``None``.
    """
    bias = layer.bias
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{type(layer).__name__}.bias is not a tensor")
    return bias


def tensor_of(model: nn.Module, name: str) -> torch.Tensor:
    """The tensor ``name`` of ``model`` as its modules read it (a parametrized one computed)."""
    module_name, _, key = name.rpartition(".")
    tensor = getattr(model.get_submodule(module_name) if module_name else model, key)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} is not a tensor")
    return tensor


def is_weight_layer(module: nn.Module) -> bool:
    """A convolution or linear layer (its ``weight`` is a matrix product's operand)."""
    return isinstance(module, WEIGHT_LAYERS)


def out_features(module: nn.Module) -> int:
    """Output channels or features of a conv or linear layer."""
    if isinstance(module, CONVS):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(weight_of(module).shape[1])  # HF Conv1D: [in, out]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and linear layers in definition order (HF ``Conv1D`` included)."""
    return [(n, m) for n, m in model.named_modules() if is_weight_layer(m)]


@dataclass(frozen=True)
class ParamInfo:
    """One parameter tensor of the model.

    Attributes:
        name: Its state-dict name.
        role: ``weight`` (conv/linear), ``attention`` (a fused attention projection such as
            ``in_proj_weight``), ``embedding`` (an embedding table), ``positional`` (a free
            parameter of 2 or more dimensions: positional or class tokens), ``bias``,
            ``norm`` (a normalisation's scale) or ``other``.
        numel: Its number of elements.
        aliases: Other names of the same tensor (tied weights), stored once.
    """

    name: str
    role: str
    numel: int
    aliases: tuple[str, ...] = ()


def _role(module: nn.Module, key: str, param: torch.Tensor) -> str:
    if key == "bias" or key.endswith("_bias"):
        return "bias"
    if is_weight_layer(module) and key == "weight":
        return "weight"
    if isinstance(module, nn.Embedding | nn.EmbeddingBag) and key == "weight":
        return "embedding"
    if isinstance(module, nn.MultiheadAttention) and key.endswith("proj_weight"):
        return "attention"
    if param.dim() == 1:
        return "norm" if "norm" in type(module).__name__.lower() or key == "weight" else "other"
    return "positional"


def _own_parameters(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """A module's own parameters; a parametrized one (a pruning mask, a quantization-aware
    rounding) under its public name, as its state dict will have it once baked."""
    yield from module.named_parameters(recurse=False)
    for key, parametrization in getattr(module, "parametrizations", {}).items():
        yield key, parametrization.original


def parameter_inventory(model: nn.Module) -> list[ParamInfo]:
    """Every parameter once, with its role and the names it is tied to."""
    seen: dict[int, int] = {}
    found: list[dict[str, Any]] = []
    for mod_name, module in model.named_modules():
        if ".parametrizations." in f".{mod_name}.":
            continue  # the parametrized tensors are listed under their module's names
        for key, param in _own_parameters(module):
            name = f"{mod_name}.{key}" if mod_name else key
            if id(param) in seen:
                found[seen[id(param)]]["aliases"].append(name)
                continue
            seen[id(param)] = len(found)
            found.append(
                {"name": name, "role": _role(module, key, param), "numel": param.numel(),
                 "aliases": []}
            )  # fmt: skip
    return [ParamInfo(d["name"], d["role"], d["numel"], tuple(d["aliases"])) for d in found]


def output_layer_names(model: nn.Module, example_input: Inputs) -> list[str]:
    """Weight layers that produce the model's output, found by tracing a forward pass.

    The layer whose output tensor is the model's output (the classifier, the LM head), or
    else the last layer to run whose output width is the output's width. Definition order
    plays no part: a head defined before the body is still found.
    """
    order: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, module in weight_layers(model):

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                order.append((name, out))

        handles.append(module.register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            final = as_output(call_model(model, example_input))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    for name, out in reversed(order):
        if out is final or (
            out.shape == final.shape
            and out.untyped_storage().data_ptr() == final.untyped_storage().data_ptr()
        ):
            return [name]
    width = final.shape[-1] if final.dim() else 1
    for name, out in reversed(order):
        if out.dim() and out.shape[-1] == width:
            return [name]
    return []


@dataclass
class ModelFacts:
    """What the methods need to know about the baseline, computed once.

    Attributes:
        model: The baseline (never modified).
        example_input: One batch of its inputs.
    """

    model: nn.Module
    example_input: Inputs
    _cache: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def layers(self) -> list[str]:
        """Names of the conv and linear layers, in definition order."""
        return [n for n, _ in weight_layers(self.model)]

    @cached_property
    def output_layers(self) -> list[str]:
        """Layers whose width is the model's output (kept whole by pruning)."""
        return output_layer_names(self.model, self.example_input)

    @cached_property
    def params(self) -> list[ParamInfo]:
        """Every parameter once, with its role and tied names."""
        return parameter_inventory(self.model)

    @cached_property
    def transformer(self) -> TransformerParts | None:
        """The model's transformer parts (blocks, attention, MLPs), or ``None``."""
        return find_transformer_parts(self.model)

    @cached_property
    def attention_layers(self) -> list[str]:
        """Weight layers inside attention: the projections of every ``nn.MultiheadAttention``,
        wherever it sits (found by type, not only in recognised transformer blocks), and
        those of the transformer parts' attention."""
        mha = [n for n, m in self.model.named_modules() if isinstance(m, nn.MultiheadAttention)]
        parts = self.transformer
        named = parts.attention_layer_names() if parts is not None else set()
        return [
            n for n in self.layers if n in named or any(n.startswith(f"{a}.") or not a for a in mha)
        ]

    def prunable_layers(self) -> list[str]:
        """Conv and linear layers whose output channels may be removed: not the output layers,
        and not inside attention (heads are removed whole by head pruning)."""
        skip = set(self.output_layers) | set(self.attention_layers)
        return [n for n in self.layers if n not in skip]

    def iter_params(self, roles: tuple[str, ...]) -> Iterator[ParamInfo]:
        """Parameters whose role is one of ``roles``."""
        return (p for p in self.params if p.role in roles)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, run once per baseline and ``key``: a property of the baseline that a
        method needs in every trial (e.g. depth pruning's block influence on calibration
        data), kept as long as these facts (one study's process)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


def model_facts(model: nn.Module, example_input: Inputs) -> ModelFacts:
    """Facts of ``model`` (call once per baseline)."""
    return ModelFacts(model, example_input)
