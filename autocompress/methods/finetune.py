"""Fine-tuning: train the compressed model back on the training split.

With ``distillation`` in the configuration the loss blends in the uncompressed teacher's
outputs. With ``quant_aware`` every forward pass sees the weights rounded to the grid the
quantize stage will store (straight-through estimator, :mod:`autocompress.reparam`), so what
is stored is what was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from autocompress.methods._base import Context, Method, Param, Suggester
from autocompress.reparam import add_rounding
from autocompress.training import (
    OPTIMIZERS,
    SCHEDULES,
    TeacherOutputs,
    TrainingConfig,
    train,
)


@dataclass(frozen=True)
class Finetune(TrainingConfig, Method):
    """Train the compressed model (see :class:`~autocompress.training.TrainingConfig`).

    Attributes:
        quant_aware: Train through the k-bit grid of the weight quantization (no effect when
            the weights stay float).
    """

    epochs: int = 1
    quant_aware: bool = False

    stage: ClassVar[str] = "train"
    CHANGES_DEPLOYED: ClassVar[str] = "never"
    SEARCH: ClassVar[dict[str, Param]] = {
        "epochs": Param(int, {"low": 1, "high": 3}, "passes over the training split",
                        bounds=(0, 1000)),
        "batch_size": Param(int, 64, "examples per step", bounds=(1, 65536)),
        "optimizer": Param(str, "adam", "optimiser", choices=OPTIMIZERS),
        "lr": Param(float, 1e-3, "peak learning rate", bounds=(1e-7, 10.0)),
        "schedule": Param(str, "constant", "learning-rate schedule", choices=SCHEDULES),
        "warmup_fraction": Param(float, 0.0, "share of steps warming up", bounds=(0.0, 0.9)),
        "weight_decay": Param(float, 0.0, "L2 penalty", bounds=(0.0, 1.0)),
        "quant_aware": Param(bool, False, "train through the weight grid (QAT)"),
    }  # fmt: skip

    @classmethod
    def suggest(cls, s: Suggester) -> Method:
        values = {k: s(k) for k in cls.SEARCH if k != "quant_aware"}
        weights = s.chosen.get("weights")
        rounded = weights is not None and getattr(weights, "bits", 32) < 16
        values["quant_aware"] = bool(rounded and values["epochs"] > 0 and s("quant_aware"))
        return cls(**values)

    def describe(self) -> str:
        if not self.epochs:
            return "no ft"
        qat = " QAT" if self.quant_aware else ""
        return f"ft {self.epochs}ep{qat} {self.optimizer} lr={self.lr:.1e} {self.schedule}"

    def apply(self, model: nn.Module, ctx: Context) -> None:
        if self.epochs == 0:
            return
        if ctx.train is None:
            raise ValueError("fine-tuning needs the training split")
        if self.quant_aware:
            from autocompress.methods.weights import weight_plan

            for name, spec in weight_plan(model, ctx).items():
                if spec.bits < 16:
                    add_rounding(model, name, spec)
        kd = ctx.config.get("distillation")
        distill = None if kd is None else kd.blend(model, ctx)  # type: ignore[attr-defined]
        on_epoch = ctx.on_epoch
        if distill is not None and ctx.teacher_outputs is None:
            if ctx.teacher is None:
                raise ValueError("distillation needs the uncompressed model as its teacher")
            ctx.teacher_outputs = TeacherOutputs(ctx.teacher, ctx.train)
        train(
            model,
            ctx.train,
            ctx.task,
            self,
            distill=distill,
            teacher=ctx.teacher_outputs if distill is not None else None,
            seed=ctx.seed,
            on_epoch=None if on_epoch is None else lambda e, loss: on_epoch(e, loss, model),
        )
