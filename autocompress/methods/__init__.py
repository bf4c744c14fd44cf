"""Compression methods, one file each, and the one dict that lists them.

Each method is a frozen dataclass (its settings) declaring its searchable parameters
(``SEARCH``), its pipeline ``stage`` and how it applies to a model; see
:mod:`autocompress.methods._base`. The search-space schema, the pipeline's order, the trial
labels, the recipe and the reports all read :data:`METHODS`. To add a method: write its file,
add one entry here.
"""

from __future__ import annotations

from autocompress.methods._base import STAGES, Context, Method, Origin, Param, Suggester
from autocompress.methods.depth import DepthPruning
from autocompress.methods.distillation import Distillation
from autocompress.methods.finetune import Finetune
from autocompress.methods.heads import HeadPruning
from autocompress.methods.int8 import Int8
from autocompress.methods.lowrank import LowRank
from autocompress.methods.mlp import MlpPruning
from autocompress.methods.runtime import RuntimeSettings
from autocompress.methods.structured import StructuredPruning
from autocompress.methods.unstructured import UnstructuredPruning
from autocompress.methods.weights import WeightQuantization

# In pipeline order within each stage; a method's parameters are suggested in this order too
# (fine-tuning sees the chosen weight quantization, distillation the chosen fine-tuning).
# Depth first, so that head and MLP pruning work on the kept blocks; the transformer methods
# before structured pruning, which leaves attention and MLP outputs to them. Low-rank
# factorization after structured pruning (it factorizes the narrower layers) and before
# unstructured pruning (which then prunes the factors; factorizing would lose its zeros).
# The runtime's own settings come after int8, whose mode decides which of them a trial uses.
METHODS: dict[str, type[Method]] = {
    "depth": DepthPruning,
    "heads": HeadPruning,
    "mlp": MlpPruning,
    "structured": StructuredPruning,
    "lowrank": LowRank,
    "unstructured": UnstructuredPruning,
    "weights": WeightQuantization,
    "int8": Int8,
    "runtime": RuntimeSettings,
    "finetune": Finetune,
    "distillation": Distillation,
}

__all__ = [
    "METHODS",
    "STAGES",
    "Context",
    "DepthPruning",
    "Distillation",
    "Finetune",
    "HeadPruning",
    "Int8",
    "LowRank",
    "Method",
    "MlpPruning",
    "Origin",
    "Param",
    "RuntimeSettings",
    "StructuredPruning",
    "Suggester",
    "UnstructuredPruning",
    "WeightQuantization",
]


def ordered(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` in pipeline order: by stage, then by their place in :data:`METHODS`."""
    position = {name: i for i, name in enumerate(METHODS)}
    return sorted(names, key=lambda n: (STAGES.index(METHODS[n].stage), position[n]))
