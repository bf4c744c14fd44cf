"""Batches in every form a user's data takes, and outputs in every form a model returns."""

from collections import OrderedDict

import pytest
import torch

from autocompress.data import (
    Batches,
    TensorData,
    as_output,
    as_split,
    call_model,
    gather_inputs,
    input_batches,
    split_batch,
)
from autocompress.errors import WorkloadError


def test_split_batch_reads_every_form():
    x, y = torch.zeros(3, 2), torch.tensor([0, 1, 2])
    assert split_batch(x)[1] is None
    inputs, labels = split_batch((x, y))
    assert inputs is x and labels is y
    inputs, labels = split_batch({"input_ids": x, "attention_mask": x, "labels": y})
    assert set(inputs) == {"input_ids", "attention_mask"} and labels is y
    with pytest.raises(WorkloadError, match="tuple of 3 items"):
        split_batch((x, x, y))


def test_as_output_takes_logits_first_item_or_first_tensor():
    t = torch.ones(2, 3)
    assert as_output(t) is t
    assert as_output((t, torch.zeros(1))) is t
    assert as_output(OrderedDict(loss=torch.zeros(()), logits=t)) is t
    assert as_output(OrderedDict(last_hidden_state=t)) is t
    with pytest.raises(WorkloadError, match="no tensor"):
        as_output(None)


def test_call_model_passes_keywords_positionals_or_one_tensor():
    seen = []

    def model(*args, **kwargs):
        seen.append((len(args), sorted(kwargs)))
        return torch.zeros(1)

    call_model(model, {"a": torch.zeros(1), "b": torch.zeros(1)})
    call_model(model, (torch.zeros(1), torch.zeros(1)))
    call_model(model, torch.zeros(1))
    assert seen == [(0, ["a", "b"]), (2, []), (1, [])]


def test_as_split_accepts_pairs_loaders_and_lists_but_not_iterators():
    x, y = torch.zeros(10, 2), torch.zeros(10, dtype=torch.long)
    assert isinstance(as_split((x, y), "train"), TensorData)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    split = as_split(loader, "train")
    assert isinstance(split, Batches) and len(split) == 10
    assert len(as_split([(x[:4], y[:4]), (x[4:], y[4:])], "val")) == 10
    with pytest.raises(WorkloadError, match="one-shot iterator"):
        as_split(iter([(x, y)]), "test")
    with pytest.raises(WorkloadError, match="must be TensorData"):
        as_split(42, "test")


def test_a_list_of_batches_is_shuffled_whole_batches_by_seed():
    batches = [(torch.full((2, 1), float(i)), torch.zeros(2, dtype=torch.long)) for i in range(6)]
    split = Batches(batches)
    order = [int(b[0][0, 0]) for b in split.batches(seed=3)]
    assert sorted(order) == list(range(6)) and order != list(range(6))
    assert order == [int(b[0][0, 0]) for b in split.batches(seed=3)]
    assert [int(b[0][0, 0]) for b in split.batches()] == list(range(6))


def test_gather_inputs_stacks_batches_or_repeats_rows():
    batches = [{"ids": torch.full((3, 4), i)} for i in range(4)]
    rows = gather_inputs(Batches(batches), 8)
    assert rows["ids"].shape == (8, 4) and rows["ids"][:, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    ragged = [{"ids": torch.zeros(2, 4)}, {"ids": torch.zeros(2, 6)}]
    assert gather_inputs(Batches(ragged), 5)["ids"].shape == (5, 4)  # first shape, rows repeated
    tensors = TensorData(torch.arange(10.0)[:, None], torch.zeros(10, dtype=torch.long))
    assert gather_inputs(tensors, 3).flatten().tolist() == [0.0, 1.0, 2.0]
    assert sum(len(b) for b in input_batches(tensors, 7, batch_size=4)) == 8
