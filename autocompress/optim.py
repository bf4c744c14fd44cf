"""The optimiser and learning-rate schedule of a :class:`~autocompress.training.TrainingConfig`.

A leaf module (only torch), below both fine-tuning (:mod:`autocompress.training`) and the
unlabeled distillation phase (:mod:`autocompress.distill`), so neither imports the other back.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from autocompress.training import TrainingConfig


def make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """The optimiser of ``config`` over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig, total_steps: int
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
        main: sched.LRScheduler = sched.CosineAnnealingLR(optimizer, T_max=main_steps)
    elif config.schedule == "step":
        main = sched.StepLR(optimizer, step_size=max(1, math.ceil(main_steps / 3)), gamma=0.1)
    else:
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return main
    warm = sched.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [warm, main], milestones=[warmup])
