"""Fine-tuning with optional knowledge distillation from the uncompressed teacher."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data import TensorData
from autocompress.errors import TrialFailure

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "one_cycle")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation (Hinton et al.): soft teacher targets at ``temperature``.

    Attributes:
        temperature: Softmax temperature for teacher and student, >= 1.
        alpha: Weight of the distillation term; ``1 - alpha`` weighs the hard-label loss.
    """

    temperature: float = 4.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not self.temperature >= 1.0:
            raise ValueError(f"distillation temperature must be >= 1, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {self.alpha}")


@dataclass(frozen=True)
class FinetuneConfig:
    """How a compressed model is trained back.

    Attributes:
        epochs: Passes over the training split; 0 skips fine-tuning.
        batch_size: Examples per step.
        optimizer: One of ``sgd`` (momentum 0.9), ``adam``, ``adamw``.
        lr: Peak learning rate.
        schedule: One of ``constant``, ``cosine``, ``step`` (x0.1 every third), ``one_cycle``.
        warmup_fraction: Share of all steps spent warming up linearly from lr/10.
        weight_decay: L2 penalty.
        quant_aware: Fine-tune through the k-bit weight grid of the quantize step
            (straight-through estimator; see :mod:`autocompress.steps.qat`). No effect when
            the weights stay float.
    """

    epochs: int = 0
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "constant"
    warmup_fraction: float = 0.0
    weight_decay: float = 0.0
    quant_aware: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"fine-tuning epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"fine-tuning batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    config: DistillConfig,
) -> torch.Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``."""
    t = config.temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return config.alpha * (t * t) * soft + (1.0 - config.alpha) * hard


def _optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: FinetuneConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule of ``config`` over ``total_steps`` steps."""
    sched = torch.optim.lr_scheduler
    total_steps = max(1, total_steps)
    warmup = int(config.warmup_fraction * total_steps)
    if config.schedule == "one_cycle" and total_steps >= 3:
        # OneCycle has its own warm-up phase; warmup_fraction sets its length (at least two
        # steps, so neither phase is empty).
        return sched.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total_steps,
            pct_start=min(max(config.warmup_fraction, 2.0 / total_steps), 0.9),
        )
    main_steps = max(1, total_steps - warmup)
    if config.schedule == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=main_steps)
    elif config.schedule == "step":
        main = sched.StepLR(optimizer, step_size=max(1, math.ceil(main_steps / 3)), gamma=0.1)
    else:
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return main
    warm = sched.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [warm, main], milestones=[warmup])


def finetune(
    model: nn.Module,
    train: TensorData,
    config: FinetuneConfig,
    *,
    distill: DistillConfig | None = None,
    teacher_logits: torch.Tensor | None = None,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``train`` and return it.

    Args:
        model: The (compressed) student.
        train: The training split; never the validation or test split.
        config: Optimiser, schedule and length.
        distill: When given, blend in the teacher's soft targets.
        teacher_logits: The teacher's outputs on ``train.x``, computed once and reused.
        seed: Seeds the batch order, so a fine-tuning replays exactly.
        on_epoch: Called with (epoch, mean loss) after each epoch.

    Raises:
        TrialFailure: The loss became NaN or infinite.
    """
    if config.epochs == 0:
        return model
    if distill is not None and (teacher_logits is None or len(teacher_logits) != len(train)):
        raise ValueError("distillation needs the teacher's logits for every training example")
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    optimizer = _optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, config.epochs * steps_per_epoch)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            logits = model(train.x[idx])
            if distill is not None:
                loss = distillation_loss(logits, teacher_logits[idx], train.y[idx], distill)
            else:
                loss = F.cross_entropy(logits, train.y[idx])
            if not torch.isfinite(loss):
                raise TrialFailure(
                    f"fine-tuning loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                    f"(lr {config.lr:.3g}, {config.optimizer}, {config.schedule})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        if on_epoch is not None:
            on_epoch(epoch + 1, total / steps_per_epoch)
    model.eval()
    return model
