"""The sensitivity profile of transformer parts: per block, the loss increase of its heads, MLP
neurons and the block itself removed, measured by the methods' own choice; per-block amounts
allocated from it put the cuts where they cost least, and a recipe replays them exactly."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from torch import nn
from transformers import BertForSequenceClassification

from autocompress.apply import rebuild
from autocompress.data import Batches
from autocompress.methods._transformer import count_of, exact_share, least_important, share
from autocompress.methods.heads import HeadPruning
from autocompress.methods.mlp import MlpPruning
from autocompress.objective import CALIBRATION_ROWS
from autocompress.pipeline import compress
from autocompress.recipe import build_recipe, load_recipe, save_recipe
from autocompress.record import SENSITIVITY
from autocompress.search_space import parse_search_space_text
from autocompress.sensitivity import ProfileRequest, measure_profile, request_for
from autocompress.study import StudySettings, create_or_resume, open_storage, run_trials
from autocompress.tasks import Classification, Regression, Task
from autocompress.workload import load_workload
from tests.methods.helpers import FixedSuggester, apply
from tests.methods.tiny_transformers import (
    bert,
    one_thread,  # noqa: F401 - the fixture
    random_biases,
)
from tests.model_families import _token_data, tiny_bert_config

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCKS = 3
HEADS, WIDTH, HEAD_DIM = 4, 128, 16
ATTENTION = [f"bert.encoder.layer.{i}.attention.self" for i in range(BLOCKS)]
MLPS = [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(BLOCKS)]
BLOCK_NAMES = [f"bert.encoder.layer.{i}" for i in range(BLOCKS)]


def _inputs() -> dict[str, torch.Tensor]:
    data = _token_data(64, 0)
    return {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}


def _model(fragile: int | None = None) -> Any:  # a BertForSequenceClassification
    """A tiny random BERT of three blocks. With ``fragile``, every other block writes little into
    the residual stream (its attention output and MLP output scaled by 0.05) and the fragile
    one much (by 3): removing its heads or neurons changes the output far more."""
    model: Any = bert(BLOCKS)
    if fragile is not None:
        with torch.no_grad():
            for i, layer in enumerate(model.bert.encoder.layer):
                scale = 3.0 if i == fragile else 0.05
                layer.attention.output.dense.weight.mul_(scale)
                layer.output.dense.weight.mul_(scale)
            model.classifier.weight.mul_(100.0)  # outputs of order 1, not 0.01
    return model.eval()


def _train(model: nn.Module, regression: bool = False) -> Batches:
    """One batch of 64 rows labelled with the model's own answers (classes), or its own
    outputs (``regression``: the baseline's loss is 0 and any change costs)."""
    inputs = _inputs()
    with torch.no_grad():
        logits = model(**inputs).logits
    return Batches([{**inputs, "labels": logits if regression else logits.argmax(-1)}], "train")


def _loss(model: nn.Module, train: Batches) -> float:
    (batch,) = train.source
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(F.cross_entropy(logits, batch["labels"]))


def _profile(model: nn.Module, train: Batches, task: Task | None = None, **request) -> dict:
    request = {"heads": ("magnitude",), "mlp": ("magnitude",), "depth": True, "rows": 64, **request}
    example = {k: v[:2] for k, v in _inputs().items()}
    task = task or Classification()
    return measure_profile(model, task, train, example, ProfileRequest(**request))


def _head_rows(model: Any, block: int) -> list[torch.Tensor]:
    """Each head's query, key and value rows and output columns of ``block``, flattened."""
    layer = model.bert.encoder.layer[block].attention
    q, k, v = (m.weight.detach() for m in (layer.self.query, layer.self.key, layer.self.value))
    out = layer.output.dense.weight.detach()
    return [
        torch.cat([w[h * HEAD_DIM : (h + 1) * HEAD_DIM].flatten() for w in (q, k, v)]
                  + [out[:, h * HEAD_DIM : (h + 1) * HEAD_DIM].t().flatten()])
        for h in range(HEADS)
    ]  # fmt: skip


def _without_heads(model: Any, block: int, heads: list[int]) -> nn.Module:
    """A copy without the heads' contribution: their output-projection columns zeroed."""
    pruned: Any = copy.deepcopy(model)
    dense = pruned.bert.encoder.layer[block].attention.output.dense
    with torch.no_grad():
        for h in heads:
            dense.weight[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0.0
    return pruned


@pytest.fixture(scope="module")
def random_profile():
    model = _model()
    train = _train(model)
    profile = _profile(model, train, heads=("magnitude", "activation"))
    return model, train, profile


def test_the_space_asks_for_heads_mlp_and_depth_when_it_allocates_them_by_sensitivity():
    text = (
        "heads:\n  per_layer: true\n  amount: {low: 0.2, high: 0.6}\n"
        "mlp:\n  per_layer: true\n  importance: [magnitude, activation]\n"
    )
    request = request_for(parse_search_space_text(text))
    assert request.heads == ("magnitude", "activation") and request.depth
    assert request.mlp == ("magnitude", "activation")
    assert not (request.bits or request.prune or request.channels)
    sampled = text.replace("per_layer: true", "per_layer: true\n  allocation: sampled")
    assert request_for(parse_search_space_text(sampled)).empty
    plain = "heads:\n  amount: {low: 0.2, high: 0.6}\nmlp: {}\n"
    assert request_for(parse_search_space_text(plain)).empty
    with pytest.raises(ValueError, match="importances"):
        ProfileRequest(heads=("magnitude", "magnitude"))


def test_a_share_of_heads_removes_exactly_its_count():
    for total in range(1, 200):
        for count in range(total):
            assert count_of(exact_share(count, total), total) == count, (count, total)
            assert exact_share(count, total) >= count / total
    assert exact_share(1, 3) == 0.3334 and exact_share(1, 4) == 0.25 and share(0.3333, 3) == 0
    assert least_important([0.3, 0.1, 0.2, 0.1], 2) == [1, 3]  # ties: the lower index


def test_every_block_has_its_heads_mlp_and_depth_entries_computed_independently(random_profile):
    model, train, profile = random_profile
    base = _loss(model, train)
    assert profile["format"] == 2 and profile["base_loss"] == pytest.approx(base, abs=1e-6)
    for key in ("heads.magnitude", "heads.activation"):
        assert list(profile[key]) == ATTENTION
        assert all(list(curve) == ["0.25", "0.5", "0.75"] for curve in profile[key].values())
    assert list(profile["mlp.magnitude"]) == MLPS
    assert all(list(c) == ["0.25", "0.5", "0.75", "0.9"] for c in profile["mlp.magnitude"].values())
    assert list(profile["depth"]) == BLOCK_NAMES
    assert all(list(c) == ["skipped"] for c in profile["depth"].values())
    # sizes: q, k, v and output weights; the widening layer; the whole block
    block_params = sum(p.numel() for p in model.bert.encoder.layer[0].parameters())
    assert profile["params"] == {
        **dict.fromkeys(ATTENTION, 4 * 64 * 64), **dict.fromkeys(MLPS, WIDTH * 64),
        **dict.fromkeys(BLOCK_NAMES, block_params),
    }  # fmt: skip

    for block in range(BLOCKS):
        # heads by weight norm: the k smallest heads' contribution gone
        norms = [float(r.norm()) for r in _head_rows(model, block)]
        order = sorted(range(HEADS), key=lambda h: norms[h])
        for k in (1, 2, 3):
            want = _loss(_without_heads(model, block, order[:k]), train) - base
            got = profile["heads.magnitude"][ATTENTION[block]][str(k / HEADS)]
            assert got == pytest.approx(want, abs=2e-5), (block, k)
        # MLP by weight norm: half the neurons, their narrowing-layer columns zeroed
        layer = model.bert.encoder.layer[block]
        up, down = layer.intermediate.dense.weight, layer.output.dense.weight
        neuron_norms = torch.cat([up, down.t()], dim=1).norm(dim=1)
        gone = torch.argsort(neuron_norms)[: WIDTH // 2]
        pruned = copy.deepcopy(model)
        with torch.no_grad():
            pruned.bert.encoder.layer[block].output.dense.weight[:, gone] = 0.0
        want = _loss(pruned, train) - base
        assert profile["mlp.magnitude"][MLPS[block]]["0.5"] == pytest.approx(want, abs=2e-5)
        # depth: the block taken out of the list
        shorter = copy.deepcopy(model)
        kept = [m for i, m in enumerate(shorter.bert.encoder.layer) if i != block]
        shorter.bert.encoder.layer = nn.ModuleList(kept)
        want = _loss(shorter, train) - base
        assert profile["depth"][BLOCK_NAMES[block]]["skipped"] == pytest.approx(want, abs=2e-5)


def test_heads_by_activation_are_those_of_least_mean_output(random_profile):
    model, train, profile = random_profile
    base = _loss(model, train)
    contexts = {}
    hooks = [
        model.bert.encoder.layer[b].attention.self.register_forward_hook(
            lambda _m, _i, out, b=b: contexts.__setitem__(b, out[0].detach())
        )
        for b in range(BLOCKS)
    ]
    try:
        _loss(model, train)
    finally:
        for h in hooks:
            h.remove()
    for block in range(BLOCKS):
        per_head = contexts[block].reshape(-1, HEADS, HEAD_DIM).abs().mean(dim=(0, 2))
        weakest = int(per_head.argmin())
        want = _loss(_without_heads(model, block, [weakest]), train) - base
        got = profile["heads.activation"][ATTENTION[block]]["0.25"]
        assert got == pytest.approx(want, abs=2e-5), block


def _cleaned(curve: dict[str, float]) -> dict[float, float]:
    """Loss by ratio removed, never lower for more removed and never below zero (as the
    allocation reads a profile), with ratio 0 costing nothing."""
    out, worst = {0.0: 0.0}, 0.0
    for ratio in sorted(curve, key=float):
        worst = max(worst, curve[ratio])
        out[float(ratio)] = worst
    return out


def _best(curves: dict[str, dict[str, float]], amount: float) -> float:
    """The least summed loss of one measured ratio per module removing at least ``amount`` on
    average (modules of equal size), by trying every combination."""
    cleaned = {n: _cleaned(c) for n, c in curves.items()}
    return min(
        sum(cleaned[n][r] for n, r in zip(cleaned, combo, strict=True))
        for combo in itertools.product(*[list(c) for c in cleaned.values()])
        if sum(combo) / len(combo) >= amount - 1e-9
    )


@pytest.mark.parametrize("fragile", [0, 2])
def test_the_fragile_block_keeps_its_heads_and_which_block_follows_the_profile(fragile):
    model = _model(fragile)
    train = _train(model, regression=True)
    profile = _profile(model, train, Regression(), mlp=(), depth=False)
    heads = profile["heads.magnitude"]
    # the fragile block is the most sensitive at every share
    for ratio in ("0.25", "0.5", "0.75"):
        costs = [heads[a][ratio] for a in ATTENTION]
        assert max(range(BLOCKS), key=costs.__getitem__) == fragile, (ratio, costs)

    amount = 0.4  # 12 heads: at least 5 go
    values = {"amount": amount, "importance": "magnitude", "per_layer": True,
              "allocation": "sensitivity"}  # fmt: skip
    example = {k: v[:2] for k, v in _inputs().items()}
    method = HeadPruning.suggest(FixedSuggester(model, example, values, profile))
    assert method.allocated and set(method.layer_amounts) == set(ATTENTION)
    counts = [count_of(method.layer_amounts[a], HEADS) for a in ATTENTION]
    assert counts[fragile] == 0 and sum(counts) == 5, counts
    chosen = sum(_cleaned(heads[a])[c / HEADS] for a, c in zip(ATTENTION, counts, strict=True))
    assert chosen == pytest.approx(_best(heads, amount), abs=1e-9)

    # what applies is what was allocated: each block loses its count, its weakest heads
    ctx = apply("heads", method, copy.deepcopy(model), example, train)
    for block, a in enumerate(ATTENTION):
        norms = [float(r.norm()) for r in _head_rows(model, block)]
        weakest = sorted(sorted(range(HEADS), key=lambda h: norms[h])[: counts[block]])
        assert ctx.records["heads"][a] == weakest
    assert "by sensitivity" in method.describe()


def test_three_heads_are_measured_and_allocated_as_whole_heads():
    config = tiny_bert_config()
    config.hidden_size, config.num_attention_heads, config.intermediate_size = 48, 3, 96
    torch.manual_seed(0)
    model = random_biases(BertForSequenceClassification(config))
    train = _train(model, regression=True)
    profile = _profile(model, train, Regression(), mlp=(), depth=False)
    attention = ATTENTION[:2]
    # 25% of 3 heads is none; 50% one; 75% two (one always stays; 90% too): each measured once
    assert [list(profile["heads.magnitude"][a]) for a in attention] == [["0.3334", "0.6667"]] * 2
    example = {k: v[:2] for k, v in _inputs().items()}
    values = {"amount": 0.5, "importance": "magnitude", "per_layer": True,
              "allocation": "sensitivity"}  # fmt: skip
    method = HeadPruning.suggest(FixedSuggester(model, example, values, profile))
    assert set(method.layer_amounts.values()) <= {0.0, 0.3334, 0.6667}
    removed = [count_of(method.layer_amounts[a], 3) for a in attention]
    assert sum(removed) == 3  # at least half of the 6 heads, in whole heads
    ctx = apply("heads", method, copy.deepcopy(model), example, train)
    assert [len(ctx.records["heads"][a]) for a in attention] == removed


@pytest.mark.parametrize("fragile", [1, 2])
def test_the_fragile_block_keeps_its_mlp_neurons(fragile):
    model = _model(fragile)
    train = _train(model, regression=True)
    profile = _profile(model, train, Regression(), heads=(), depth=False)
    assert "depth" not in profile and "heads.magnitude" not in profile
    curves = profile["mlp.magnitude"]
    values = {"amount": 0.5, "importance": "magnitude", "per_layer": True,
              "allocation": "sensitivity"}  # fmt: skip
    example = {k: v[:2] for k, v in _inputs().items()}
    method = MlpPruning.suggest(FixedSuggester(model, example, values, profile))
    amounts = [method.layer_amounts[m] for m in MLPS]
    assert min(range(BLOCKS), key=amounts.__getitem__) == fragile, amounts
    assert sum(amounts) / BLOCKS >= 0.5 - 1e-9
    assert all(amounts[fragile] < a for i, a in enumerate(amounts) if i != fragile)
    ctx = apply("mlp", method, copy.deepcopy(model), example, train)
    for m, amount in zip(MLPS, amounts, strict=True):
        assert len(ctx.records["mlp"][m]) == math.floor(amount * WIDTH + 1e-9)
    assert curves[MLPS[fragile]]["0.25"] > max(
        curves[m]["0.9"] for i, m in enumerate(MLPS) if i != fragile
    )


SPACE = """
heads:
  amount: {low: 0.3, high: 0.6}
  importance: magnitude
  per_layer: true
mlp:
  amount: {low: 0.3, high: 0.7}
  importance: activation
  per_layer: true
"""


def test_a_study_allocates_per_block_and_its_recipe_replays_them(tmp_path):
    """End to end on a trained tiny BERT: the profile is stored with the study, a trial's heads
    and MLP amounts are allocated from it and applied, and the recipe rebuilds the same model."""
    workload = load_workload("tests.model_families:bert_workload", cache_dir=tmp_path / "c")
    settings = StudySettings(
        workload="tests.model_families:bert_workload",
        space_text=SPACE,
        space_source="blocks.yaml",
        sampler="random",
        seed=3,
        warm_start=False,
        early_stop=False,
    )
    study, used, wl, info = create_or_resume(
        "b", open_storage(f"sqlite:///{tmp_path / 'b.db'}"), settings, studies_dir=tmp_path,
        workload=workload,
    )  # fmt: skip
    profile = info[SENSITIVITY]
    attention = [f"bert.encoder.layer.{i}.attention.self" for i in range(2)]
    mlps = [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)]
    assert list(profile["heads.magnitude"]) == attention and "heads.activation" not in profile
    assert list(profile["mlp.activation"]) == mlps and "mlp.magnitude" not in profile
    assert list(profile["depth"]) == [f"bert.encoder.layer.{i}" for i in range(2)]
    study.enqueue_trial({"heads.enabled": True, "mlp.enabled": True})
    run_trials(study, used, wl, info, n_trials=1, studies_dir=tmp_path)
    (trial,) = study.get_trials(states=(TrialState.COMPLETE,))
    methods = trial.user_attrs["config"]["methods"]
    records = trial.user_attrs["records"]
    assert methods["heads"]["allocated"] and methods["mlp"]["allocated"]
    for a in attention:
        assert len(records["heads"][a]) == count_of(methods["heads"]["layer_amounts"][a], HEADS)
    for m in mlps:
        assert len(records["mlp"][m]) == count_of(methods["mlp"]["layer_amounts"][m], WIDTH)
    heads_cut = sum(len(records["heads"][a]) for a in attention) / (2 * HEADS)
    assert heads_cut >= methods["heads"]["amount"] - 1e-9

    recipe = load_recipe(save_recipe(build_recipe(study, trial, wl.model), tmp_path / "r.yaml"))
    assert recipe.config.get("heads").layer_amounts == methods["heads"]["layer_amounts"]
    assert recipe.config.get("mlp").layer_amounts == methods["mlp"]["layer_amounts"]
    again = rebuild(wl, recipe, tmp_path / "again.acpk")
    assert again.compressed.report["records"]["heads"] == records["heads"]
    assert again.compressed.report["records"]["mlp"] == records["mlp"]
    assert (tmp_path / "again.acpk").read_bytes() == open(trial.user_attrs["artifact"], "rb").read()
    # the configuration alone (no records to replay) chooses the same heads and neurons
    fresh = compress(wl.model, recipe.config, tmp_path / "fresh.acpk", task=wl.task, train=wl.train,
                     example_input=wl.example_input, calibration_rows=CALIBRATION_ROWS)  # fmt: skip
    assert fresh.report["records"]["heads"] == records["heads"]
    assert fresh.report["records"]["mlp"] == records["mlp"]
