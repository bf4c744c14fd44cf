"""Knowledge distillation from the uncompressed model during fine-tuning (Hinton et al.).

The loss is ``alpha * distillation + (1 - alpha) * task loss``; the distillation term is the
task's own: temperature-scaled KL over class logits, token-level KL under the padding mask for
language models, mean squared error for other outputs. The teacher's outputs are cached for
in-memory data that fits a memory budget and computed live otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from autocompress.methods._base import Context, Method, Param, Suggester


@dataclass(frozen=True)
class Distillation(Method):
    """Blend the teacher's soft outputs into fine-tuning.

    Attributes:
        temperature: Softmax temperature for teacher and student, >= 1.
        alpha: Weight of the distillation term; ``1 - alpha`` weighs the task's loss.
    """

    temperature: float = 4.0
    alpha: float = 0.5

    stage: ClassVar[str] = "train"
    CHANGES_DEPLOYED: ClassVar[str] = "never"
    SEARCH: ClassVar[dict[str, Param]] = {
        "temperature": Param(float, {"low": 1.0, "high": 20.0, "log": True},
                             "softmax temperature", bounds=(1.0, 100.0)),
        "alpha": Param(float, {"low": 0.0, "high": 1.0}, "weight of the teacher's term",
                       bounds=(0.0, 1.0)),
    }  # fmt: skip

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, int | float) or not self.temperature >= 1.0:
            raise ValueError(f"distillation temperature must be >= 1, got {self.temperature!r}")
        if not isinstance(self.alpha, int | float) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {self.alpha!r}")

    @classmethod
    def suggest(cls, s: Suggester) -> Method | None:
        finetune = s.chosen.get("finetune")
        if finetune is None or not getattr(finetune, "epochs", 0):
            return None  # nothing to distil into
        return cls(temperature=s("temperature"), alpha=s("alpha"))

    def describe(self) -> str:
        return f"KD T={self.temperature:.1f} a={self.alpha:.2f}"

    def apply(self, model: nn.Module, ctx: Context) -> None:
        """Nothing on its own: fine-tuning reads it from the configuration."""
