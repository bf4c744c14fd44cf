"""In-memory data splits: tensors, so a fine-tuning epoch is slicing, not a DataLoader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from autocompress.errors import WorkloadError


@dataclass(frozen=True)
class TensorData:
    """Inputs ``x`` and integer class labels ``y`` of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise WorkloadError("a data split must be a pair of tensors (x, y)")
        if len(self.x) != len(self.y):
            raise WorkloadError(
                f"a data split has {len(self.x)} inputs but {len(self.y)} labels; "
                "give one label per input"
            )
        if len(self.x) == 0:
            raise WorkloadError("a data split is empty")

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield consecutive (x, y) batches in order."""
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Run ``model`` in eval mode over ``x`` in batches and return the stacked outputs."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return float((logits.argmax(dim=1) == labels).float().mean())
