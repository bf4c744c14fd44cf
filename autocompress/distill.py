"""Distillation beyond the output: intermediate hidden states, and a phase on unlabeled data.

A pruned transformer keeps its residual width (heads and MLP neurons go, not the stream they
write to), so each kept block's output can be pulled towards the teacher's block it came from
(Minitron, Muralidharan et al. 2024; TinyBERT's hidden-state loss). Depth pruning renumbers
the blocks: :func:`block_pairs` maps each student block to its original index. The hidden
loss is the mean over pairs of the squared error over kept positions, divided by the
teacher's mean square there, so that wide and narrow streams weigh alike.

:func:`distill_on_data` is the recovery phase on :class:`~autocompress.corpus.DistillData`:
no labels, the loss is the task's distillation loss to the teacher's outputs (embedding
cosine for a sentence model, token KL for a language model) plus the hidden-state term.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autocompress.corpus import CorpusTeacher, DistillData
from autocompress.data import Inputs, as_output, call_model
from autocompress.errors import TrialFailure
from autocompress.methods._transformer import first_tensor_out, parts_of
from autocompress.optim import make_optimizer, make_scheduler
from autocompress.tasks import Task

if TYPE_CHECKING:
    from autocompress.training import TrainingConfig


def block_pairs(
    student: nn.Module, teacher: nn.Module, removed: Sequence[int] = ()
) -> list[tuple[str, str]]:
    """``(student block, teacher block)`` names: each kept block and the block it was.

    Args:
        student: The pruned model.
        teacher: The baseline.
        removed: Indices of the baseline's blocks depth pruning removed.

    Raises:
        ValueError: The models have no transformer blocks, or their counts do not match
            ``removed``.
    """
    s, t = parts_of(student), parts_of(teacher)
    if s is None or t is None:
        raise ValueError("hidden-state distillation needs transformer blocks in both models")
    kept = [i for i in range(len(t.blocks)) if i not in set(removed)]
    if len(kept) != len(s.blocks):
        raise ValueError(
            f"the student has {len(s.blocks)} blocks, the teacher {len(t.blocks)} less "
            f"{len(removed)} removed"
        )
    return [(s.blocks[j], t.blocks[i]) for j, i in enumerate(kept)]


class Captured:
    """Output hidden states of named blocks, kept by forward hooks during a pass."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.slots: dict[str, torch.Tensor] = {}

    def hook(self, name: str) -> Any:
        def keep(_m: nn.Module, _args: Any, output: Any) -> None:
            tensor = first_tensor_out(output)
            if tensor is not None:
                self.slots[name] = tensor

        return keep

    def collect(self) -> list[torch.Tensor]:
        """The states of the last pass, in the order of ``names``; forgets them."""
        missing = [n for n in self.names if n not in self.slots]
        if missing:
            raise ValueError(f"block {missing[0]!r} gave no hidden states")
        got = [self.slots[n] for n in self.names]
        self.slots.clear()
        return got


@contextlib.contextmanager
def hidden_states(model: nn.Module, names: Sequence[str]) -> Iterator[Captured]:
    """Hooks on the blocks ``names`` of ``model`` for as long as the block runs."""
    modules = dict(model.named_modules())
    captured = Captured(names)
    handles = [modules[n].register_forward_hook(captured.hook(n)) for n in names]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def input_mask(inputs: Inputs) -> torch.Tensor | None:
    if isinstance(inputs, Mapping):
        mask = inputs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask
    return None


def hidden_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over pairs of the squared error over kept positions (``mask`` 1, or all),
    divided by the teacher's mean square there."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"{len(student)} student and {len(teacher)} teacher hidden states")
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher, strict=True):
        t = t.to(s.dtype)
        if mask is not None and s.dim() == 3 and mask.shape == s.shape[:2]:
            m = mask.to(s.dtype).unsqueeze(-1)
            err = (((s - t) ** 2) * m).sum()
            scale = ((t**2) * m).sum().clamp(min=1e-12)
        else:
            err, scale = ((s - t) ** 2).sum(), (t**2).sum().clamp(min=1e-12)
        total = total + err / scale
    return total / len(student)


def teacher_pass(
    teacher: nn.Module, inputs: Inputs, names: Sequence[str]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The teacher's output and the hidden states of blocks ``names`` on ``inputs``."""
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad(), hidden_states(teacher, names) as states:
            out = as_output(call_model(teacher, inputs)).float()
            return out, states.collect()
    finally:
        teacher.train(was_training)


def distill_on_data(
    model: nn.Module,
    teacher: CorpusTeacher,
    data: DistillData,
    task: Task,
    config: TrainingConfig,
    *,
    steps: int,
    temperature: float = 1.0,
    hidden: float = 0.0,
    pairs: Sequence[tuple[str, str]] = (),
    seed: int = 0,
) -> list[float]:
    """Train ``model`` in place towards the teacher on ``data`` for ``steps`` batches.

    The loss is the task's distillation loss to the teacher's outputs plus ``hidden`` times
    :func:`hidden_loss` over ``pairs``. With ``steps`` 0 nothing changes.

    Returns:
        The loss of each step.

    Raises:
        TrialFailure: The loss became NaN or infinite.
    """
    if steps <= 0:
        return []
    use_hidden = hidden > 0 and bool(pairs)
    student_names = [s for s, _ in pairs]
    teacher_names = [t for _, t in pairs]
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps)
    losses: list[float] = []
    model.train()
    with hidden_states(model, student_names if use_hidden else []) as states:
        for step, idx in enumerate(data.index_batches(config.batch_size, steps, seed)):
            inputs = data.rows(idx)
            if use_hidden:  # one teacher pass gives the output too
                target, target_states = teacher_pass(teacher.teacher, inputs, teacher_names)
            else:
                target = teacher.outputs(idx)
            output = as_output(call_model(model, inputs))
            loss = task.distillation_loss(output, target, inputs, temperature)
            if use_hidden:
                loss = loss + hidden * hidden_loss(
                    states.collect(), target_states, input_mask(inputs)
                )
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrialFailure(
                    f"distillation loss became {value} at step {step + 1} of {steps} "
                    f"(lr {config.lr:.3g})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(value)
    model.eval()
    return losses
