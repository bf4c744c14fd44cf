"""A model's inputs as a flat tuple of named tensors, and its output as one tensor.

Tracers and exporters take positional tensors and return tensors; users' models take a
tensor, a tuple or keyword tensors and may return a Hugging Face ``ModelOutput``.
:class:`FlatModel` bridges the two, so every deploy path takes every input form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autocompress.data import Inputs, as_output, call_model


@dataclass(frozen=True)
class Signature:
    """The structure of a model's inputs.

    Attributes:
        kind: ``tensor``, ``tuple`` or ``dict``.
        names: Input names, in the order of :meth:`flatten` (dict keys; ``input`` or
            ``input_0``, ``input_1``, ... otherwise).
    """

    kind: str
    names: tuple[str, ...]

    @classmethod
    def named(cls, inputs: Inputs, names: tuple[str, ...]) -> Signature:
        """The signature of ``inputs`` under a loaded graph's input ``names``."""
        if isinstance(inputs, Mapping):
            return cls("dict", names)
        return cls("tuple" if isinstance(inputs, tuple | list) else "tensor", names)

    def flatten(self, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        """The input tensors in signature order."""
        if self.kind == "dict":
            return tuple(inputs[name] for name in self.names)
        if self.kind == "tuple":
            return tuple(inputs)
        return (inputs,)

    def unflatten(self, tensors: tuple[torch.Tensor, ...]) -> Inputs:
        """Inverse of :meth:`flatten`."""
        if self.kind == "dict":
            return dict(zip(self.names, tensors, strict=True))
        if self.kind == "tuple":
            return tuple(tensors)
        return tensors[0]

    def sequence_inputs(self, example: Inputs) -> set[str]:
        """Inputs with a sequence axis (integer tensors of two dimensions: token ids, masks)."""
        return {
            name
            for name, t in zip(self.names, self.flatten(example), strict=True)
            if t.dim() == 2 and not torch.is_floating_point(t)
        }


def signature_of(inputs: Inputs) -> Signature:
    """The signature of an example input."""
    if isinstance(inputs, Mapping):
        return Signature("dict", tuple(k for k, v in inputs.items() if isinstance(v, torch.Tensor)))
    if isinstance(inputs, tuple | list):
        return Signature("tuple", tuple(f"input_{i}" for i in range(len(inputs))))
    return Signature("tensor", ("input",))


class FlatModel(nn.Module):
    """``model`` taking positional tensors (in signature order) and returning one tensor."""

    def __init__(self, model: nn.Module, signature: Signature) -> None:
        super().__init__()
        self.model = model
        self.signature = signature

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return as_output(call_model(self.model, self.signature.unflatten(tensors)))


def flat(model: nn.Module, example: Inputs) -> tuple[FlatModel, Signature, tuple[Any, ...]]:
    """``model`` as a :class:`FlatModel`, its signature and the flattened example."""
    signature = signature_of(example)
    return FlatModel(model, signature).eval(), signature, signature.flatten(example)
