"""What a user gives to be compressed: :class:`Workload`, a model, its three data splits, its task.

Its own module, below both the built-in workloads (:mod:`autocompress.zoo`, which build one)
and the loader (:mod:`autocompress.workload`, which finds the zoo by name), so that neither
needs the other back. Users import it from :mod:`autocompress.workload` or ``autocompress``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autocompress.corpus import as_distill_data
from autocompress.data import Inputs, as_split
from autocompress.errors import WorkloadError
from autocompress.tasks import Classification, Task, as_task
from autocompress.training import TrainingConfig


@dataclass
class Workload:
    """A model to compress and the data to judge it by, as a user gives it.

    Give either a trained ``model``, or a ``model_factory`` plus ``baseline_training`` and the
    baseline is trained once and cached.

    Attributes:
        train: Fine-tuning and calibration data. Never used to choose between trials.
        val: The split whose metric the search optimises.
        test: Held out: reported per trial, never steers the search.
        model: A trained model.
        model_factory: Builds an untrained model.
        baseline_training: How to train the factory's model into the baseline.
        example_input: One batch of inputs the model accepts (default: the first training
            example): a tensor, a tuple or a dict of tensors.
        task: ``classification`` (default), ``language-modeling``, ``regression`` or an
            :class:`autocompress.tasks.CustomTask`.
        metric: For classification, ``metric(logits, labels) -> float`` over a whole split,
            higher is better, in place of top-1 accuracy.
        name: The reference the workload was loaded from.
        info: Facts shown with the study (where the data came from).
        distill_data: Unlabeled inputs for distillation, separate from the labeled training
            split: a tensor of rows, a dict of such tensors, or
            :class:`~autocompress.corpus.DistillData` (the built-in transformer workloads give
            a corpus of the standard library's text, :mod:`autocompress.corpus`).

    Each split is :class:`~autocompress.data.TensorData`, an ``(x, y)`` tensor pair, a
    ``DataLoader`` or a list of batches (tensors, ``(inputs, labels)`` tuples or dicts).
    """

    train: Any
    val: Any
    test: Any
    model: nn.Module | None = None
    model_factory: Callable[[], nn.Module] | None = None
    baseline_training: TrainingConfig | None = None
    example_input: Inputs | None = None
    task: Task | str = "classification"
    metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None
    name: str = "custom"
    info: dict[str, str] = field(default_factory=dict)
    distill_data: Any = None

    def __post_init__(self) -> None:
        try:
            self.distill_data = as_distill_data(self.distill_data)
        except ValueError as e:
            raise WorkloadError(f"workload {self.name!r}: {e}") from None
        for split in ("train", "val", "test"):
            setattr(self, split, as_split(getattr(self, split), split))
        if self.metric is not None:
            if self.task not in ("classification",) and not isinstance(self.task, Classification):
                raise WorkloadError(
                    f"workload {self.name!r}: `metric` is for classification; give a "
                    "CustomTask for other tasks"
                )
            self.task = Classification(score=self.metric)
        self.task = as_task(self.task)
        if self.model is None and (self.model_factory is None or self.baseline_training is None):
            raise WorkloadError(
                f"workload {self.name!r}: give a trained `model`, or `model_factory` "
                "together with `baseline_training`"
            )
        if self.model is not None and not isinstance(self.model, nn.Module):
            raise WorkloadError(
                f"workload {self.name!r}: model is a {type(self.model).__name__}, not a "
                "torch.nn.Module"
            )
