"""The training loop: fine-tuning a compressed model (with distillation), or a baseline.

Works on any split (:mod:`autocompress.data`) and task (:mod:`autocompress.tasks`): in-memory
tensors are sliced by shuffled indices, a ``DataLoader`` is re-batched at the batch size asked
for, a list of batches is shuffled batch by batch. Learning-rate schedules are
``torch.optim.lr_scheduler``'s, with an optional linear warm-up.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autocompress.data import Batch, Split, TensorData, as_output, call_model, predict, split_batch
from autocompress.errors import TrialFailure
from autocompress.optim import make_optimizer as make_optimizer
from autocompress.optim import make_scheduler as make_scheduler
from autocompress.tasks import Task

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "one_cycle")
TEACHER_CACHE_BYTES = 512 * 1024**2  # teacher outputs above this are computed live


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is trained.

    Attributes:
        epochs: Passes over the training split; 0 trains nothing.
        batch_size: Examples per step (a list of batches keeps its own).
        optimizer: ``sgd`` (Nesterov momentum 0.9), ``adam`` or ``adamw``.
        lr: Peak learning rate.
        schedule: ``constant``, ``cosine``, ``step`` (x0.1 every third) or ``one_cycle``.
        warmup_fraction: Share of all steps spent warming up linearly from lr/10.
        weight_decay: L2 penalty.
    """

    epochs: int = 0
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "constant"
    warmup_fraction: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs must be a whole number >= 0, got {self.epochs!r}")
        if (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        if not (isinstance(self.lr, int | float) and 0 < self.lr < math.inf):
            raise ValueError(f"learning rate must be a finite number > 0, got {self.lr!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0.0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


FinetuneConfig = TrainingConfig  # the name of earlier versions


@dataclass(frozen=True)
class Distill:
    """Knowledge distillation from the teacher's outputs (Hinton et al.).

    Attributes:
        temperature: Softmax temperature for teacher and student, >= 1.
        alpha: Weight of the distillation term; ``1 - alpha`` weighs the task's own loss.
        hidden: Weight of the hidden-state term (:func:`autocompress.distill.hidden_loss`),
            added to the blend; 0 leaves it out.
        pairs: ``(student block, teacher block)`` names the hidden-state term compares.
    """

    temperature: float = 4.0
    alpha: float = 0.5
    hidden: float = 0.0
    pairs: tuple[tuple[str, str], ...] = ()


class TeacherOutputs:
    """The teacher's outputs on training batches: cached for in-memory data that fits
    ``budget_bytes``, computed live (no grad) otherwise."""

    def __init__(self, teacher: nn.Module, train: Split, budget_bytes: int = TEACHER_CACHE_BYTES):
        self.teacher = teacher
        self.cached: torch.Tensor | None = None
        if isinstance(train, TensorData):
            one = self._live(train.x[:1])
            if one.numel() * one.element_size() * len(train) <= budget_bytes:
                self.cached = predict(teacher, train).detach()

    def _live(self, inputs: Any) -> torch.Tensor:
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            with torch.inference_mode():
                return as_output(call_model(self.teacher, inputs)).clone()
        finally:
            self.teacher.train(was_training)

    def for_batch(self, batch: Batch, idx: torch.Tensor | None) -> torch.Tensor:
        """The teacher's output on ``batch`` (rows ``idx`` of the training split, if known)."""
        if self.cached is not None and idx is not None:
            return self.cached[idx]
        return self._live(split_batch(batch)[0])


def _epoch(
    train: Split, batch_size: int, generator: torch.Generator, seed: int
) -> Iterator[tuple[Batch, torch.Tensor | None]]:
    if isinstance(train, TensorData):
        for idx in train.index_batches(batch_size, generator):
            yield (train.x[idx], train.y[idx]), idx
        return
    for batch in train.batches(batch_size, seed=seed):
        yield batch, None


def train(
    model: nn.Module,
    train_split: Split,
    task: Task,
    config: TrainingConfig,
    *,
    distill: Distill | None = None,
    teacher: TeacherOutputs | None = None,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``train_split`` and return it (in eval mode).

    Args:
        model: The model (a compressed student, or a baseline).
        train_split: The training split; never the validation or test split.
        task: Gives the loss (and the distillation loss).
        config: Optimiser, schedule and length.
        distill: When given, blend in the teacher's outputs.
        teacher: The teacher's outputs (needed with ``distill``).
        seed: Seeds the batch order, so a run replays exactly.
        on_epoch: Called with (epoch, mean loss) after each epoch; it may raise to stop.

    Raises:
        TrialFailure: The loss became NaN or infinite.
        ValueError: Distillation without a teacher.
    """
    if config.epochs == 0:
        return model
    if distill is not None and teacher is None:
        raise ValueError("distillation needs the teacher's outputs")
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, train_split.num_batches(config.batch_size))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, config.epochs * steps_per_epoch)
    model.train()
    total_steps = config.epochs * steps_per_epoch
    with contextlib.ExitStack() as stack:
        states = None
        if distill is not None and distill.hidden > 0 and distill.pairs:
            from autocompress.distill import hidden_states

            states = stack.enter_context(hidden_states(model, [s for s, _ in distill.pairs]))
        _epochs(model, train_split, task, config, distill, teacher, states, seed, generator,
                optimizer, scheduler, total_steps, on_epoch)  # fmt: skip
    model.eval()
    return model


def _epochs(
    model: nn.Module,
    train_split: Split,
    task: Task,
    config: TrainingConfig,
    distill: Distill | None,
    teacher: TeacherOutputs | None,
    states: Any,
    seed: int,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    total_steps: int,
    on_epoch: Callable[[int, float], None] | None,
) -> None:
    done = 0
    for epoch in range(config.epochs):
        total, steps = 0.0, 0
        for batch, idx in _epoch(train_split, config.batch_size, generator, seed + epoch):
            inputs = split_batch(batch)[0]
            output = as_output(call_model(model, inputs))
            loss = task.loss(output, batch)
            if distill is not None and teacher is not None:
                soft = task.distillation_loss(
                    output, teacher.for_batch(batch, idx), batch, distill.temperature
                )
                loss = distill.alpha * soft + (1.0 - distill.alpha) * loss
                if states is not None:
                    from autocompress.distill import hidden_loss, input_mask, teacher_pass

                    names = [t for _, t in distill.pairs]
                    _, target = teacher_pass(teacher.teacher, inputs, names)
                    loss = loss + distill.hidden * hidden_loss(
                        states.collect(), target, input_mask(inputs)
                    )
            if not torch.isfinite(loss):
                raise TrialFailure(
                    f"fine-tuning loss became {loss.item()} at epoch {epoch + 1}, step {steps + 1} "
                    f"(lr {config.lr:.3g}, {config.optimizer}, {config.schedule})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done <= total_steps:  # a list of batches may hold more than counted
                scheduler.step()
            total += loss.item()
            steps += 1
        if on_epoch is not None:
            on_epoch(epoch + 1, total / max(1, steps))
