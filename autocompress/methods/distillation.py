"""Knowledge distillation from the uncompressed model: outputs, hidden states, unlabeled data.

During fine-tuning the loss is ``alpha * distillation + (1 - alpha) * task loss`` (Hinton et
al.); the distillation term is the task's own: temperature-scaled KL over class logits,
token-level KL under the padding mask for language models, ``1 - cosine`` for sentence
embeddings, mean squared error for other outputs. With ``hidden`` above 0 each kept
transformer block's output is also pulled towards the teacher's block it was (depth pruning
maps kept blocks to their original indices; :mod:`autocompress.distill`). With ``steps``
above 0 a recovery phase follows on the workload's unlabeled distillation data (Minitron):
the distillation terms alone, ``steps`` batches, its own learning rate and schedule; a
workload without such data lends its training split's inputs, labels unread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from autocompress.methods._base import Context, Method, Param, Suggester
from autocompress.training import SCHEDULES, Distill, TrainingConfig

BATCH_SIZE = 16


@dataclass(frozen=True)
class Distillation(Method):
    """Distil the teacher into the compressed model.

    Attributes:
        temperature: Softmax temperature for teacher and student, >= 1.
        alpha: Weight of the distillation term during fine-tuning; ``1 - alpha`` weighs the
            task's loss.
        hidden: Weight of the hidden-state term (0: outputs only).
        steps: Batches of the recovery phase on unlabeled data (0: none).
        lr: Peak learning rate of that phase (AdamW).
        schedule: Its learning-rate schedule (10% linear warm-up).
        batch_size: Rows per batch of that phase.
    """

    temperature: float = 4.0
    alpha: float = 0.5
    hidden: float = 0.0
    steps: int = 0
    lr: float = 1e-4
    schedule: str = "cosine"
    batch_size: int = BATCH_SIZE

    stage: ClassVar[str] = "train"
    CHANGES_DEPLOYED: ClassVar[str] = "never"
    SEARCH: ClassVar[dict[str, Param]] = {
        "temperature": Param(float, {"low": 1.0, "high": 20.0, "log": True},
                             "softmax temperature", bounds=(1.0, 100.0)),
        "alpha": Param(float, {"low": 0.0, "high": 1.0}, "weight of the teacher's term",
                       bounds=(0.0, 1.0)),
        "hidden": Param(float, 0.0, "weight of the hidden-state term (kept block to its "
                        "original)", bounds=(0.0, 100.0)),
        "steps": Param(int, 0, "batches of distillation on unlabeled data after fine-tuning",
                       bounds=(0, 1_000_000)),
        "lr": Param(float, 1e-4, "peak learning rate of the unlabeled phase",
                    bounds=(1e-7, 1.0)),
        "schedule": Param(str, "cosine", "learning-rate schedule of the unlabeled phase",
                          choices=SCHEDULES),
        "batch_size": Param(int, BATCH_SIZE, "rows per batch of the unlabeled phase",
                            bounds=(1, 65536)),
    }  # fmt: skip

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, int | float) or not self.temperature >= 1.0:
            raise ValueError(f"distillation temperature must be >= 1, got {self.temperature!r}")
        if not isinstance(self.alpha, int | float) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {self.alpha!r}")
        if not isinstance(self.hidden, int | float) or not 0.0 <= self.hidden <= 100.0:
            raise ValueError(f"distillation hidden must be in [0, 100], got {self.hidden!r}")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            low = 0 if name == "steps" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"distillation {name} must be a whole number >= {low}, got {value!r}"
                )
        # The phase's own settings are checked where they live.
        self.training()

    @classmethod
    def suggest(cls, s: Suggester) -> Method | None:
        finetune = s.chosen.get("finetune")
        epochs = getattr(finetune, "epochs", 0) if finetune is not None else 0
        steps = s("steps")
        if not epochs and not steps:
            return None  # nothing to distil into
        return cls(**{k: s(k) for k in cls.SEARCH if k != "steps"}, steps=steps)

    def describe(self) -> str:
        text = f"KD T={self.temperature:.1f} a={self.alpha:.2f}"
        if self.hidden:
            text += f" hidden={self.hidden:.2g}"
        if self.steps:
            text += f" +{self.steps} steps lr={self.lr:.1e}"
        return text

    def training(self) -> TrainingConfig:
        """The unlabeled phase's optimiser and schedule."""
        return TrainingConfig(
            epochs=1, batch_size=self.batch_size, optimizer="adamw", lr=self.lr,
            schedule=self.schedule, warmup_fraction=0.1,
        )  # fmt: skip

    def blend(self, model: nn.Module, ctx: Context) -> Distill:
        """The fine-tuning blend: temperature, alpha and the hidden-state pairs of ``model``."""
        return Distill(self.temperature, self.alpha, self.hidden, self._pairs(model, ctx))

    def _pairs(self, model: nn.Module, ctx: Context) -> tuple[tuple[str, str], ...]:
        if not self.hidden or ctx.teacher is None or ctx.facts.transformer is None:
            return ()
        from autocompress.distill import block_pairs

        removed = (ctx.records.get("depth") or {}).get("removed", [])
        return tuple(block_pairs(model, ctx.teacher, removed))

    def apply(self, model: nn.Module, ctx: Context) -> None:
        """The unlabeled phase (fine-tuning reads the blend from the configuration)."""
        if not self.steps:
            return
        if ctx.teacher is None:
            raise ValueError("distillation needs the uncompressed model as its teacher")
        from autocompress.corpus import CorpusTeacher, DistillData
        from autocompress.distill import distill_on_data

        data = ctx.distill_data
        if data is None:
            if ctx.train is None:
                raise ValueError("distillation steps need unlabeled data or the training split")
            from autocompress.data import gather_inputs

            data = DistillData(gather_inputs(ctx.train, len(ctx.train)), info="training inputs")
            ctx.notes.append(
                "the workload has no distillation data: the unlabeled phase ran on the "
                "training split's inputs"
            )
        teacher: Any = ctx.corpus_teacher
        if teacher is None or teacher.data is not data:
            teacher = CorpusTeacher(ctx.teacher, data)
            ctx.corpus_teacher = teacher
        losses = distill_on_data(
            model, teacher, data, ctx.task, self.training(), steps=self.steps,
            temperature=self.temperature, hidden=self.hidden, pairs=self._pairs(model, ctx),
            seed=ctx.seed,
        )  # fmt: skip
        ctx.records["distillation"] = {
            "steps": len(losses),
            "first_loss": round(losses[0], 6),
            "last_loss": round(sum(losses[-10:]) / len(losses[-10:]), 6),
        }
