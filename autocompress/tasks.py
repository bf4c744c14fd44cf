"""What a model is for: how it is trained, distilled and judged.

A task turns a model's output tensor (see :func:`autocompress.data.as_output`) and a batch into
a training loss, a distillation loss against the teacher's output, and a metric over a split.
Built in: ``classification`` (cross-entropy, top-1 accuracy), ``language-modeling``
(next-token cross-entropy with the label shift and padding mask, perplexity) and
``regression`` (mean squared error); :class:`CustomTask` takes the user's own loss and metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from autocompress.data import Batch, Inputs, Split, as_output, call_model, split_batch
from autocompress.errors import WorkloadError
from autocompress.noise import ItemValues

IGNORE_INDEX = -100
Runner = Callable[[Inputs], torch.Tensor]  # inputs -> the model's output tensor


class Predictor:
    """A deployed or eager model seen as a plain callable returning its output tensor.

    Accepts the calling conventions a user's metric may use: ``model(x)``, ``model(**inputs)``
    or ``model(inputs)`` with a dict or tuple.
    """

    def __init__(self, run: Runner) -> None:
        self.run = run

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs:
            return self.run(kwargs)
        return self.run(args[0] if len(args) == 1 else tuple(args))


def eager_runner(model: Callable[..., Any]) -> Runner:
    """A runner over an eager module (no grad)."""

    def run(inputs: Inputs) -> torch.Tensor:
        with torch.inference_mode():
            return as_output(call_model(model, inputs))

    return run


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class Task:
    """Loss, distillation loss and metric of one kind of model.

    Attributes:
        name: The task's name, e.g. ``classification``.
        metric_name: The metric's name, the first objective of a study (``accuracy``).
        higher_is_better: Direction of the metric.
    """

    name = "task"
    metric_name = "metric"
    higher_is_better = True
    metric_range: tuple[float, float] | None = None  # the values the metric can take, if known

    def never_binds(self, absolute: float | None, relative: float | None) -> str | None:
        """Why a budget can never bind (every trial would be feasible), or ``None``.

        Only a metric with a known range can say: accuracy lies in [0, 1], so a drop of 1 or
        more, or a relative drop of 100% or more, allows every value.
        """
        if self.metric_range is None or not self.higher_is_better:
            return None
        low, high = self.metric_range
        if absolute is not None and absolute >= high - low:
            return (
                f"{_article(self.metric_name)} {self.metric_name} drop of {absolute:g} can "
                f"never bind: {self.metric_name} lies in [{low:g}, {high:g}], so every trial "
                f"would be feasible; give a drop below {high - low:g}, e.g. 0.01"
            )
        if relative is not None and relative >= 1 and low >= 0:
            return (
                f"--max-relative-drop {relative:g} can never bind: {self.metric_name} is never "
                "below 0, so a drop of 100% or more allows every trial; give a fraction below "
                "1, e.g. 0.05"
            )
        return None

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The training loss of ``output`` on ``batch``."""
        raise NotImplementedError

    def distillation_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch, temperature: float
    ) -> torch.Tensor:
        """How far the student's output is from the teacher's (mean squared error here)."""
        return F.mse_loss(student, teacher.to(student.dtype))

    def metric(self, run: Runner, split: Split) -> float:
        """The metric of the model ``run`` computes, over ``split``."""
        items = self.item_values(run, split)
        if items is None:
            raise NotImplementedError
        return items.value()

    def item_values(self, run: Runner, split: Split) -> ItemValues | None:
        """The metric over ``split`` as per-item values (for its standard error), or ``None``
        where the metric is not a sum over items (its standard error is then unknown)."""
        return None

    def check(self, output: torch.Tensor, batch: Batch) -> None:
        """Raise a one-line :class:`WorkloadError` when the output cannot serve this task."""

    def worsening(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline``, in the metric's units (> 0: worse)."""
        return baseline - value if self.higher_is_better else value - baseline

    def describe(self) -> str:
        """The task in words, for tables and reports."""
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        return f"{self.name} ({self.metric_name}, {arrow})"


def _labels(batch: Batch, task: str) -> torch.Tensor:
    labels = split_batch(batch)[1]
    if not isinstance(labels, torch.Tensor):
        raise WorkloadError(
            f"{task} needs labels: give batches as (inputs, labels) or a dict with 'labels'"
        )
    return labels


def _soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row KL(teacher_T || student_T) times T^2 (Hinton et al.), rows over the last dim."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.log_softmax(teacher.to(student.dtype) / t, dim=-1),
        reduction="none",
        log_target=True,
    ).sum(-1)
    return kl * (t * t)


class Classification(Task):
    """Class logits ``[batch, classes]`` (or ``[batch, tokens, classes]``) and integer labels.

    Args:
        score: Optional ``score(logits, labels) -> float`` over a whole split, higher is
            better, in place of top-1 accuracy (the workload's ``metric`` of earlier versions).
    """

    name = "classification"
    metric_name = "accuracy"
    higher_is_better = True

    def __init__(self, score: Callable[[torch.Tensor, torch.Tensor], float] | None = None):
        self.score = score
        self.metric_range = (0.0, 1.0) if score is None else None  # top-1 accuracy

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        labels = _labels(batch, self.name)
        return F.cross_entropy(
            output.reshape(-1, output.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )

    def distillation_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch, temperature: float
    ) -> torch.Tensor:
        return _soft_kl(student, teacher, temperature).mean()

    def metric(self, run: Runner, split: Split) -> float:
        if self.score is not None:
            outs: list[torch.Tensor] = []
            targets: list[torch.Tensor] = []
            for batch in split.batches():
                outs.append(run(split_batch(batch)[0]))
                targets.append(_labels(batch, self.name))
            return float(self.score(torch.cat(outs), torch.cat(targets)))
        return super().metric(run, split)

    def item_values(self, run: Runner, split: Split) -> ItemValues | None:
        """Per example: its correct positions of those that count (one for an image; a
        sequence's tokens for token labels). ``None`` with a whole-split ``score``."""
        if self.score is not None:
            return None
        correct: list[torch.Tensor] = []
        counted: list[torch.Tensor] = []
        for batch in split.batches():
            labels = _labels(batch, self.name)
            out = run(split_batch(batch)[0])
            keep = labels != IGNORE_INDEX
            hits = (out.argmax(dim=-1) == labels) & keep
            correct.append(hits.reshape(len(labels), -1).sum(dim=1))
            counted.append(keep.reshape(len(labels), -1).sum(dim=1))
        return ItemValues(torch.cat(correct).double(), torch.cat(counted).double())

    def check(self, output: torch.Tensor, batch: Batch) -> None:
        labels = _labels(batch, self.name)
        if output.dim() < 2 or output.shape[:-1] != labels.shape:
            raise WorkloadError(
                f"classification: the model's output has shape {tuple(output.shape)} but the "
                f"labels {tuple(labels.shape)}; expected [batch, classes] logits for [batch] "
                "labels (or [batch, tokens, classes] for [batch, tokens])"
            )
        valid = labels[labels != IGNORE_INDEX]
        n = output.shape[-1]
        if labels.dtype != torch.long or (len(valid) and (valid.min() < 0 or valid.max() >= n)):
            raise WorkloadError(
                f"classification: labels must be int64 class indices in [0, {n}) for a model "
                f"with {n} outputs (-100 marks a position to ignore)"
            )


def _lm_targets(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token targets and their mask (1 where a token counts), both ``[batch, seq - 1]``."""
    inputs, labels = split_batch(batch)
    if labels is None:
        if isinstance(inputs, Mapping):
            labels = inputs.get("input_ids")
        elif isinstance(inputs, torch.Tensor):
            labels = inputs
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        raise WorkloadError(
            "language-modeling needs token ids [batch, seq]: a tensor batch, a dict with "
            "'input_ids' (and optionally 'attention_mask', 'labels')"
        )
    mask = labels != IGNORE_INDEX
    if isinstance(inputs, Mapping) and isinstance(inputs.get("attention_mask"), torch.Tensor):
        mask = mask & inputs["attention_mask"].bool()
    return labels[:, 1:].clamp(min=0), mask[:, 1:]


def _perplexity(mean_nll: float) -> float:
    return math.exp(mean_nll) if mean_nll < 700 else math.inf


class LanguageModeling(Task):
    """Causal language models: next-token cross-entropy; the metric is perplexity.

    Targets are the labels (or the input ids) shifted by one; positions with label -100 or
    attention mask 0 do not count.
    """

    name = "language-modeling"
    metric_name = "perplexity"
    higher_is_better = False

    def _token_nll(self, output: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        targets, mask = _lm_targets(batch)
        logits = output[:, :-1, :]
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        )
        return nll.reshape(targets.shape), mask

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        nll, mask = self._token_nll(output, batch)
        return (nll * mask).sum() / mask.sum().clamp(min=1)

    def distillation_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch, temperature: float
    ) -> torch.Tensor:
        _, mask = _lm_targets(batch)
        kl = _soft_kl(student[:, :-1], teacher[:, :-1], temperature)
        return (kl * mask).sum() / mask.sum().clamp(min=1)

    def item_values(self, run: Runner, split: Split) -> ItemValues:
        """Per sequence: its summed negative log-likelihood over its counted tokens."""
        nlls: list[torch.Tensor] = []
        counts: list[torch.Tensor] = []
        for batch in split.batches():
            nll, mask = self._token_nll(run(split_batch(batch)[0]).float(), batch)
            nlls.append((nll.double() * mask).sum(dim=1))
            counts.append(mask.sum(dim=1))
        return ItemValues(torch.cat(nlls), torch.cat(counts).double(), _perplexity)

    def check(self, output: torch.Tensor, batch: Batch) -> None:
        targets, _ = _lm_targets(batch)
        if output.dim() != 3 or output.shape[:2] != (targets.shape[0], targets.shape[1] + 1):
            raise WorkloadError(
                f"language-modeling: the model's output has shape {tuple(output.shape)}; "
                "expected token logits [batch, seq, vocab]"
            )
        if int(targets.max()) >= output.shape[-1]:
            raise WorkloadError(
                f"language-modeling: token id {int(targets.max())} is outside the model's "
                f"vocabulary of {output.shape[-1]}"
            )


class Regression(Task):
    """Real-valued outputs against real-valued labels: mean squared error, lower is better."""

    name = "regression"
    metric_name = "mse"
    higher_is_better = False

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        labels = _labels(batch, self.name)
        return F.mse_loss(output, labels.to(output.dtype).reshape(output.shape))

    def item_values(self, run: Runner, split: Split) -> ItemValues:
        """Per example: its summed squared error over its outputs."""
        errors: list[torch.Tensor] = []
        counts: list[torch.Tensor] = []
        for batch in split.batches():
            out = run(split_batch(batch)[0]).float()
            labels = _labels(batch, self.name).float().reshape(out.shape)
            rows = len(out) if out.dim() else 1
            squared = ((out.double() - labels.double()) ** 2).reshape(rows, -1)
            errors.append(squared.sum(dim=1))
            counts.append(torch.full((rows,), squared.shape[1], dtype=torch.float64))
        return ItemValues(torch.cat(errors), torch.cat(counts))

    def check(self, output: torch.Tensor, batch: Batch) -> None:
        labels = _labels(batch, self.name)
        if output.numel() != labels.numel():
            raise WorkloadError(
                f"regression: the model's output has shape {tuple(output.shape)} but the labels "
                f"{tuple(labels.shape)}"
            )


@dataclass
class CustomTask(Task):
    """The user's own loss and metric.

    Attributes:
        loss_fn: ``loss(output, batch) -> scalar tensor``; ``output`` is the model's output
            tensor (its ``logits``, or first item).
        metric_fn: ``metric(model, split) -> float``: ``model`` is a callable taking the
            inputs (``model(x)``, ``model(**inputs)``) and returning the output tensor, and
            ``split`` has ``batches()``. Its standard error is unknown.
        higher_is_better: Direction of the metric.
        metric_name: Its name in tables and the study.
        distill_fn: Optional ``distill(student, teacher, batch, temperature)``; default mean
            squared error between the outputs.
        name: The task's name.
        item_metric_fn: In place of ``metric_fn``, ``items(model, split)`` returning one
            value per item (a 1-D tensor or sequence of floats; the metric is their mean) or
            an :class:`~autocompress.noise.ItemValues`: the metric's standard error is then
            known.
    """

    loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor]
    metric_fn: Callable[[Any, Split], float] | None = None
    higher_is_better: bool = True
    metric_name: str = "metric"
    distill_fn: Callable[..., torch.Tensor] | None = None
    name: str = "custom"
    item_metric_fn: Callable[[Any, Split], Any] | None = None

    def __post_init__(self) -> None:
        given = [f for f in (self.metric_fn, self.item_metric_fn) if f is not None]
        if not callable(self.loss_fn) or len(given) != 1 or not callable(given[0]):
            raise WorkloadError(
                "a custom task needs a callable loss_fn and one callable metric: metric_fn, "
                "or item_metric_fn for per-item values"
            )
        if not isinstance(self.metric_name, str) or not self.metric_name.isidentifier():
            raise WorkloadError(
                f"custom task: metric_name {self.metric_name!r} must be a plain identifier"
            )

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.loss_fn(output, batch)

    def distillation_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch, temperature: float
    ) -> torch.Tensor:
        if self.distill_fn is not None:
            return self.distill_fn(student, teacher, batch, temperature)
        return super().distillation_loss(student, teacher, batch, temperature)

    def metric(self, run: Runner, split: Split) -> float:
        if self.metric_fn is not None:
            return float(self.metric_fn(Predictor(run), split))
        return super().metric(run, split)

    def item_values(self, run: Runner, split: Split) -> ItemValues | None:
        if self.item_metric_fn is None:
            return None
        got = self.item_metric_fn(Predictor(run), split)
        if isinstance(got, ItemValues):
            return got
        try:
            values = torch.as_tensor(got, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            values = None
        if values is None or values.dim() != 1:
            raise WorkloadError(
                f"custom task {self.metric_name}: item_metric_fn must return one float per "
                f"item (a 1-D tensor or list) or an ItemValues, got {type(got).__name__}"
            )
        return ItemValues.mean_of(values)


TASKS: dict[str, Callable[[], Task]] = {
    "classification": Classification,
    "language-modeling": LanguageModeling,
    "regression": Regression,
}


def as_task(value: Task | str) -> Task:
    """A task from its name or itself.

    Raises:
        WorkloadError: An unknown name or another type.
    """
    if isinstance(value, Task):
        return value
    if isinstance(value, str) and value in TASKS:
        return TASKS[value]()
    raise WorkloadError(
        f"unknown task {value!r}: use one of {', '.join(TASKS)} or an autocompress.tasks.CustomTask"
    )
