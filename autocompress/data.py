"""Data splits and batches, whatever form the user's data takes.

A split is either :class:`TensorData` (inputs ``x`` and labels ``y`` in memory, the fast path:
a fine-tuning epoch is slicing) or :class:`Batches` over any re-iterable of batches (a
``torch.utils.data.DataLoader``, a list). A batch is a tensor, a tuple ``(inputs, labels)`` or a
mapping of tensors (``input_ids``, ``attention_mask``, ``labels``, ...). Inputs are a tensor, a
tuple of tensors or a mapping of tensors; :func:`call_model` calls a model with them and
:func:`as_output` turns what it returns (a tensor, a tuple, a Hugging Face ``ModelOutput``) into
the one tensor the task reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.fx

from autocompress.errors import WorkloadError

Inputs = Any  # torch.Tensor | tuple[torch.Tensor, ...] | Mapping[str, torch.Tensor]
Batch = Any  # torch.Tensor | tuple[Inputs, labels] | Mapping[str, torch.Tensor]
LABELS_KEY = "labels"


@dataclass(frozen=True)
class TensorData:
    """Inputs ``x`` and labels ``y`` of one split, in memory."""

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

    def batches(
        self, batch_size: int | None = None, seed: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches, in order or shuffled by ``seed``."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        for idx in self.index_batches(batch_size or 512, generator):
            yield self.x[idx], self.y[idx]

    def index_batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[torch.Tensor]:
        """Yield the example indices of each batch (a random order drawn from ``generator``)."""
        if generator is None:
            order = torch.arange(len(self))
        else:
            order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), batch_size):
            yield order[start : start + batch_size]

    def num_batches(self, batch_size: int) -> int:
        """Batches in one pass at ``batch_size``."""
        return -(-len(self) // batch_size)


class Batches:
    """A split given as a re-iterable of batches: a ``DataLoader`` or a list.

    A ``DataLoader`` over a map-style dataset is re-batched at the batch size a fine-tuning
    asks for (same dataset, same ``collate_fn``); anything else keeps its own batches and is
    shuffled batch by batch.
    """

    def __init__(self, source: Iterable[Batch], name: str = "split") -> None:
        if isinstance(source, Iterator) or iter(source) is source:
            raise WorkloadError(
                f"the {name} split is a one-shot iterator; give a list of batches or a "
                "DataLoader, which can be iterated once per epoch"
            )
        self.source = source
        self.name = name
        self._length: int | None = None

    def _dataset(self) -> Any:
        loader = self.source
        if isinstance(loader, torch.utils.data.DataLoader):
            dataset = loader.dataset
            if not isinstance(dataset, torch.utils.data.IterableDataset):
                return dataset
        return None

    def __len__(self) -> int:
        if self._length is None:
            dataset = self._dataset()
            if dataset is not None and hasattr(dataset, "__len__"):
                self._length = len(dataset)
            else:
                self._length = sum(batch_size_of(split_batch(b)[0]) for b in self.source)
            if self._length == 0:
                raise WorkloadError(f"the {self.name} split is empty")
        return self._length

    def num_batches(self, batch_size: int | None = None) -> int:
        """Batches in one pass (at ``batch_size`` when the source can be re-batched)."""
        if self._dataset() is not None and batch_size is not None:
            return -(-len(self) // batch_size)
        return sum(1 for _ in self.source)

    def batches(self, batch_size: int | None = None, seed: int | None = None) -> Iterator[Batch]:
        """Yield batches: re-batched at ``batch_size`` when the source allows, shuffled by seed."""
        dataset = self._dataset()
        loader = self.source
        # _dataset() finds one only under a DataLoader: the isinstance check tells mypy so.
        if (
            dataset is not None
            and isinstance(loader, torch.utils.data.DataLoader)
            and (batch_size is not None or seed is not None)
        ):
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            yield from torch.utils.data.DataLoader(
                dataset,
                batch_size=batch_size or loader.batch_size or 1,
                shuffle=seed is not None,
                generator=generator,
                collate_fn=loader.collate_fn,
                num_workers=0,
            )
            return
        if seed is None:
            yield from self.source
            return
        items = list(self.source)
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))
        for i in order.tolist():
            yield items[i]


Split = TensorData | Batches


def as_split(value: Any, name: str) -> Split:
    """A workload's split from what the user gave: TensorData, an ``(x, y)`` pair or batches."""
    if isinstance(value, TensorData | Batches):
        return value
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, torch.Tensor) for v in value)
    ):
        return TensorData(*value)
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
        return Batches(value, name)
    raise WorkloadError(
        f"the {name} split must be TensorData, an (x, y) tensor pair, a DataLoader or a list "
        f"of batches; got {type(value).__name__}"
    )


def split_batch(batch: Batch) -> tuple[Inputs, Any]:
    """``(inputs, labels)`` of one batch; labels are ``None`` when the batch has none.

    A tensor is inputs alone; a tuple or list is ``(inputs, labels)`` (or ``(inputs,)``); a
    mapping is the model's keyword inputs, with ``labels`` taken out.
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k != LABELS_KEY}
        return inputs, batch.get(LABELS_KEY)
    if isinstance(batch, tuple | list):
        if len(batch) == 1:
            return batch[0], None
        if len(batch) == 2:
            return batch[0], batch[1]
        raise WorkloadError(
            f"a batch is a tuple of {len(batch)} items; give (inputs, labels), with several "
            "inputs as a tuple or dict in the first place"
        )
    raise WorkloadError(
        f"a batch must be a tensor, an (inputs, labels) tuple or a dict of tensors, "
        f"got {type(batch).__name__}"
    )


def call_model(model: Callable[..., Any], inputs: Inputs) -> Any:
    """Call ``model`` with ``inputs``: keyword arguments, positional ones, or one tensor."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def as_output(output: Any) -> torch.Tensor:
    """The tensor a task reads from a model's output.

    A tensor is itself; a Hugging Face ``ModelOutput`` or a mapping gives its ``logits`` (or
    else its first tensor, e.g. ``last_hidden_state``); a tuple or list gives its first item.

    Raises:
        WorkloadError: The output holds no tensor.
    """
    # A Proxy while FX traces the model: it stands for the tensor the model will return.
    if isinstance(output, torch.Tensor | torch.fx.Proxy):
        return cast(torch.Tensor, output)
    if isinstance(output, Mapping):
        if "logits" in output and isinstance(output["logits"], torch.Tensor | torch.fx.Proxy):
            return cast(torch.Tensor, output["logits"])
        values = list(output.values())
    elif isinstance(output, tuple | list):
        values = list(output)
    else:
        values = []
    for value in values:
        if isinstance(value, torch.Tensor | torch.fx.Proxy):
            return value  # type: ignore[return-value]
    raise WorkloadError(
        f"the model returned {type(output).__name__} with no tensor in it; return logits, a "
        "tuple whose first item is the logits, or a Hugging Face ModelOutput"
    )


def map_tensors(inputs: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    """``inputs`` with ``fn`` applied to each tensor, structure kept."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {k: map_tensors(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, tuple | list):
        return tuple(map_tensors(v, fn) for v in inputs)
    return inputs


def first_tensor(inputs: Inputs) -> torch.Tensor:
    """The first tensor of ``inputs`` (in key or position order)."""
    tensors = flat_tensors(inputs)
    if not tensors:
        raise WorkloadError("the model's inputs hold no tensor")
    return tensors[0]


def batch_size_of(inputs: Inputs) -> int:
    """Rows in ``inputs`` (the first dimension of its first tensor)."""
    t = first_tensor(inputs)
    return int(t.shape[0]) if t.dim() else 1


def take_rows(inputs: Inputs, n: int) -> Inputs:
    """The first ``n`` rows of every tensor in ``inputs``."""
    return map_tensors(inputs, lambda t: t[:n] if t.dim() else t)


def concat_inputs(parts: list[Inputs]) -> Inputs:
    """Rows of several inputs of one structure stacked along the first dimension."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, Mapping):
        return {k: concat_inputs([p[k] for p in parts]) for k in first}
    return tuple(concat_inputs([p[i] for p in parts]) for i in range(len(first)))


def flat_tensors(inputs: Inputs) -> list[torch.Tensor]:
    """The tensors of ``inputs`` in key or position order."""
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    return [v for v in values if isinstance(v, torch.Tensor)]


def _same_trailing_shapes(a: Inputs, b: Inputs) -> bool:
    ta, tb = flat_tensors(a), flat_tensors(b)
    return len(ta) == len(tb) and all(
        x.shape[1:] == y.shape[1:] for x, y in zip(ta, tb, strict=True)
    )


def gather_inputs(split: Split, n: int) -> Inputs:
    """``n`` rows of the split's inputs, in order, for timing or calibration.

    Batches are stacked while their shapes agree (e.g. the same padded sequence length); when
    the split has fewer rows, or its batches differ in shape, the rows found are repeated.
    """
    parts: list[Inputs] = []
    rows = 0
    for batch in split.batches():
        inputs = split_batch(batch)[0]
        if parts and not _same_trailing_shapes(parts[0], inputs):
            break
        parts.append(inputs)
        rows += batch_size_of(inputs)
        if rows >= n:
            break
    stacked = concat_inputs(parts) if len(parts) > 1 else parts[0]
    have = batch_size_of(stacked)
    if have < n:
        reps = -(-n // have)
        stacked = map_tensors(stacked, lambda t: t.repeat(reps, *([1] * (t.dim() - 1))))
    return take_rows(stacked, n)


def input_batches(split: Split, rows: int, batch_size: int = 64) -> list[Inputs]:
    """The inputs of the split's first ``rows`` examples, as batches (calibration data)."""
    out, seen = [], 0
    for batch in split.batches(batch_size):
        inputs = split_batch(batch)[0]
        out.append(inputs)
        seen += batch_size_of(inputs)
        if seen >= rows:
            break
    return out


@torch.inference_mode()
def predict(model: Callable[..., Any], split: Split, batch_size: int = 512) -> torch.Tensor:
    """The model's outputs (see :func:`as_output`) for every example of ``split``, stacked."""
    return torch.cat(
        [as_output(call_model(model, split_batch(b)[0])) for b in split.batches(batch_size)]
    )
