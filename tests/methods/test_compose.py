"""Methods compose on the model as it is now: every ordered pair of the structural methods on
a tiny ViT (attention heads, an MLP, a classifier). Labels say what ran on which layers, the
report's sparsity and effective bits are those of the final model's parameters (counted here
without the pipeline's helpers), and a recipe replays to the same bytes."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
from torch import nn

from autocompress.apply import Rebuilt, rebuild
from autocompress.architecture import model_facts
from autocompress.data import Batches
from autocompress.methods import METHODS, Context
from autocompress.methods.heads import HeadPruning
from autocompress.methods.int8 import Int8
from autocompress.methods.lowrank import LowRank
from autocompress.methods.structured import StructuredPruning
from autocompress.methods.unstructured import UnstructuredPruning
from autocompress.methods.weights import WeightQuantization
from autocompress.pipeline import CompressionConfig, compress
from autocompress.recipe import Recipe, weights_sha256
from autocompress.reparam import bake
from autocompress.tasks import Classification
from autocompress.workload import LoadedWorkload
from tests.methods.tiny_transformers import image_train, images, output, random_biases
from tests.model_families import TinyViT

PAIRED = {
    "lowrank": LowRank(rank_ratio=0.25),
    "weights": WeightQuantization(4, keep_edges_8bit=False),
    "unstructured": UnstructuredPruning(0.5),
    "structured": StructuredPruning(0.5),
    "heads": HeadPruning(0.5),
    "int8": Int8(mode="dynamic"),
}
# Every method is in the pairs or named here with why not: a new method cannot be forgotten.
NOT_PAIRED = {
    "depth": "renames blocks only (tests/methods/test_depth.py replays it after every method)",
    "mlp": "slices MLP layers in place, as structured pruning does (tests/methods/test_mlp.py)",
    "runtime": "a runtime's settings, no change to the model",
    "finetune": "changes values, not layers",
    "distillation": "changes values, not layers",
}
MATRIX_ROLES = ("weight", "in_proj_weight")


def test_every_method_is_paired_or_excused():
    assert set(PAIRED) | set(NOT_PAIRED) == set(METHODS)
    assert not set(PAIRED) & set(NOT_PAIRED)


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return random_biases(TinyViT(depth=1)).eval()


def _matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """Conv, linear and attention weights of the model as it is, by name (none is tied)."""
    return {
        n: p.detach()
        for n, p in model.named_parameters()
        if n.rpartition(".")[2] in MATRIX_ROLES and p.dim() >= 2
    }


def _effective_bits(model: nn.Module, plan: dict[str, list]) -> float:
    """Bits per parameter, counted from the parameters: a k-bit per-channel tensor stores k
    bits a value and a float32 scale per output row; every other tensor 32 bits a value."""
    bits = total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if name in plan:
            k, granularity = plan[name][0], plan[name][1]
            assert granularity == "per_channel"
            bits += k * p.numel() + 32 * (p.shape[0] if p.dim() >= 2 else 1)
        else:
            bits += 32 * p.numel()
    return bits / total


def _split_layers(model: nn.Module) -> list[str]:
    """Names of the ``nn.Sequential`` pairs of linear layers low-rank factorization made."""
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Sequential)
        and len(m) == 2
        and all(isinstance(c, nn.Linear) for c in m)
        and m[0].bias is None
    ]


def _check_label(config: CompressionConfig, model: nn.Module, report: dict) -> None:
    """What the configuration's label says ran, ran on every layer it names."""
    label = config.describe()
    records = report["records"]
    for method in config.methods.values():
        assert method.describe() in label
    if "lowrank" in config.methods:
        split = _split_layers(model)
        assert split, "low-rank factorization split no layer"
        assert sorted(records["lowrank"]["ranks"]) == sorted(split)
        for name in split:
            down = model.get_submodule(f"{name}.0")
            assert isinstance(down, nn.Linear)
            assert down.out_features == records["lowrank"]["ranks"][name]
    if "weights" in config.methods:
        # "4-bit all layers" (or the 8-bit int8 implies): every matrix of the model as it is
        # now, the factors of a split layer included.
        plan = records["weights"]["plan"]
        weights = config.methods["weights"]
        assert isinstance(weights, WeightQuantization)
        bits = weights.bits
        for name in _matrices(model):
            assert name in plan, f"{name} not quantized though the label says {label!r}"
            assert plan[name][0] == bits
    if "unstructured" in config.methods:
        zeros = sum(int((w == 0).sum()) for w in _matrices(model).values())
        count = sum(w.numel() for w in _matrices(model).values())
        assert zeros / count == pytest.approx(0.5, abs=0.01)
        factors = [
            p.weight
            for n in _split_layers(model)
            for p in model.get_submodule(n).children()
            if isinstance(p, nn.Linear)
        ]
        if factors:  # the factors are pruned too (global magnitude: not each as much)
            zeros = sum(int((w == 0).sum()) for w in factors)
            assert zeros / sum(w.numel() for w in factors) > 0.2


def _replay(model, config, report, x, train, tmp_path) -> tuple[bytes, Rebuilt]:
    records = json.loads(json.dumps(report["records"]))  # as a recipe file gives them back
    recipe = Recipe(
        workload="tests:vit", baseline_seed=0, baseline_sha256=weights_sha256(model),
        config=config, records=records, target={"threads": torch.get_num_threads()},
        hardware={}, versions={}, source={}, metrics={},
    )  # fmt: skip
    workload = LoadedWorkload("tests:vit", model, train, train, train, Classification(), x)
    rebuilt = rebuild(workload, recipe, tmp_path / "replayed.acpk")
    return (tmp_path / "replayed.acpk").read_bytes(), rebuilt


PAIRS = list(itertools.combinations(PAIRED, 2))


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_pair_in_the_pipeline_labels_counts_and_replays(a, b, tmp_path):
    model, x, train = _vit(), images(2), image_train()
    config = CompressionConfig.of(**{a: PAIRED[a], b: PAIRED[b]})
    c = compress(model, config, tmp_path / "m.acpk", task=Classification(), train=train,
                 example_input=x)  # fmt: skip
    _check_label(config, c.model, c.report)
    matrices = _matrices(c.model)
    zeros = sum(int((w == 0).sum()) for w in matrices.values())
    assert c.report["sparsity"] == pytest.approx(zeros / sum(w.numel() for w in matrices.values()))
    plan = c.report["records"].get("weights", {}).get("plan", {})
    assert c.report["effective_bits"] == pytest.approx(_effective_bits(c.model, plan))
    assert c.report["params"] == sum(p.numel() for p in c.model.parameters())
    data, rebuilt = _replay(model, config, c.report, x, train, tmp_path)
    assert data == (tmp_path / "m.acpk").read_bytes()
    assert torch.equal(output(rebuilt.compressed.model, x), output(c.model, x))


ORDERED = list(itertools.permutations(PAIRED, 2))


@pytest.mark.parametrize(("a", "b"), ORDERED, ids=[f"{a}-then-{b}" for a, b in ORDERED])
def test_any_order_composes_or_says_why_not(a, b):
    """Run in either order (not only the pipeline's), the later method works on the layers
    the earlier one left, or the notes say which it left alone and why."""
    model, x = _vit(), images(2)
    config = CompressionConfig.of(**{a: PAIRED[a], b: PAIRED[b]})
    ctx = Context(
        task=Classification(), example_input=x, train=Batches([images(8, 3)], "train"),
        facts=model_facts(copy.deepcopy(model), x), config=config,
    )  # fmt: skip
    for name in (a, b):
        PAIRED[name].apply(model, ctx)
        bake(model)
    assert torch.isfinite(output(model, x)).all()
    notes = " ".join(ctx.notes)
    split = _split_layers(model)
    if b == "weights":
        plan = ctx.records["weights"]["plan"]
        assert set(_matrices(model)) <= set(plan)  # factors and sliced heads included
    if b == "unstructured":  # global magnitude: half of all the weights there are now
        matrices = _matrices(model).values()
        zeros = sum(int((w == 0).sum()) for w in matrices)
        assert zeros / sum(w.numel() for w in matrices) == pytest.approx(0.5, abs=0.01)
    if b == "lowrank" and a in ("weights", "unstructured"):
        assert not split  # every linear layer was quantized or sparse: none factorized
        assert "left" in notes and ("quantization grid" in notes or "sparse" in notes), notes
    elif "lowrank" in (a, b):
        assert split
        for name in split:  # the baseline layer each pair of factors replaces
            origin = ctx.origin(f"{name}.1")
            assert (origin.baseline, origin.how, origin.part, origin.parts) == (name, "split", 1, 2)
    if (a, b) == ("lowrank", "structured"):
        assert "inner parts of split layers" in notes
        assert all(model.get_submodule(n)[0].out_features == 8 for n in split if "mlp" in n)


def test_origin_traces_renamed_removed_and_split_layers():
    from autocompress.methods import Origin

    ctx = Context(task=Classification(), example_input=None, train=None, facts=None,
                  config=CompressionConfig())  # fmt: skip
    ctx.renamed.update({"blocks.2": None, "blocks.3": "blocks.2"})  # depth removed block 2
    ctx.split("blocks.2.fc", 2)  # the renamed block's layer, factorized
    assert ctx.splits == {"blocks.3.fc": 2}
    assert ctx.origin("blocks.2.fc.1.weight") == Origin("blocks.3.fc.weight", "split", 1, 2)
    assert ctx.origin("blocks.2.fc.0") == Origin("blocks.3.fc", "split", 0, 2)
    assert ctx.origin("blocks.2.norm.weight") == Origin("blocks.3.norm.weight", "renamed")
    assert ctx.origin("blocks.1.fc.weight") == Origin("blocks.1.fc.weight", "kept")
    assert ctx.current_name("blocks.2.fc") is None
