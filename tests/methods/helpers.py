"""Run one method on a bare model, as the pipeline would."""

from __future__ import annotations

import torch
from torch import nn

from autocompress.architecture import model_facts
from autocompress.methods import Context, Method, Suggester
from autocompress.pipeline import CompressionConfig
from autocompress.reparam import bake
from autocompress.tasks import Classification


def apply(method_name: str, method: Method, model: nn.Module, example, train=None, **ctx_kw):
    """Apply ``method`` to ``model`` in place; return the context (records, notes, scales)."""
    facts = model_facts(model, example)
    ctx = Context(
        task=Classification(),
        example_input=example,
        train=train,
        facts=facts,
        config=CompressionConfig({method_name: method}),
        teacher=None,
        **ctx_kw,
    )
    method.apply(model, ctx)
    bake(model)
    return ctx


def conv_params(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


def zero_share(weight: torch.Tensor) -> float:
    return float((weight == 0).float().mean())


class FixedSuggester(Suggester):
    """A suggester with fixed answers and a given sensitivity profile (as a study's trial
    would have), for checking what a method suggests from the profile."""

    def __init__(self, model: nn.Module, example, values: dict, profile=None, choices=None):
        self.facts = model_facts(model, example)
        self.chosen = {}
        self.runtime = "torch"
        self.profile = profile
        self._values, self._choices = values, choices or {}

    def __call__(self, param, keep=None):
        return self._values[param]

    def per_layer(self, param, layer, keep=None):
        raise AssertionError("allocation by sensitivity samples nothing per layer")

    def choices(self, param):
        return self._choices.get(param)
