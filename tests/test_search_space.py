import optuna
import pytest

from autocompress.errors import SearchSpaceError
from autocompress.search_space import load_search_space, parse_search_space_text
from tests.conftest import DEFAULT_SPACE, TINY_SPACE


def test_shipped_spaces_load():
    for path in sorted(DEFAULT_SPACE.parent.glob("*.yaml")):
        load_search_space(path)
    space = load_search_space(DEFAULT_SPACE)
    assert space["quantization.weight_bits"].choices == (32, 16, 8, 6, 4, 3, 2)
    assert space["distillation.temperature"].log is True
    tiny = load_search_space(TINY_SPACE)
    assert tiny["finetune.batch_size"].searched is False


@pytest.mark.parametrize(
    "text, message",
    [
        ("pruning: [", "malformed YAML at line"),
        ("prunning: {}", "unknown key 'prunning'"),
        ("pruning:\n  amout: 0.5", "unknown key pruning.amout"),
        ("pruning:\n  amount: {low: 0.1, high: 1.5}", "outside the possible range"),
        ("pruning:\n  amount: {low: 0.6, high: 0.2}", "low (0.6) is greater than high (0.2)"),
        ("finetune:\n  epochs: {low: 0, high: two}", "expected an integer"),
        ("finetune:\n  lr: {low: 0, high: 0.1, log: true}", "outside the possible range"),
        ("quantization:\n  weight_bits: [32, 1]", "1 is not allowed"),
        ("pruning:\n  method: [none, sparse]", "'sparse' is not allowed"),
        ("distillation:\n  enabled: yes-please", "expected true or false"),
        ("format_version: 2\npruning:\n  method: [none, structured]", "format_version 2"),
        ("pruning:\n  method: none", "the search space is empty"),
        ("- a\n- b", "must be a mapping"),
        ("quantization:\n  weight_bits: []", "empty list of choices"),
        ("pruning:\n  amount: {low: 0.1}", "needs both low and high"),
    ],
)
def test_bad_spaces_name_the_key_and_file(text, message):
    with pytest.raises(SearchSpaceError) as err:
        parse_search_space_text(text, "my_space.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("my_space.yaml")
    assert "\n" not in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SearchSpaceError, match="cannot read search space"):
        load_search_space(tmp_path / "nope.yaml")


def test_exponent_without_dot_is_a_number():
    space = parse_search_space_text("finetune:\n  lr: {low: 1e-4, high: 1e-2, log: true}")
    assert space["finetune.lr"].low == pytest.approx(1e-4)


def test_suggest_is_conditional():
    space = load_search_space(DEFAULT_SPACE)
    study = optuna.create_study(
        directions=["maximize"] * 1, sampler=optuna.samplers.RandomSampler(0)
    )
    seen_methods = set()
    for _ in range(40):
        trial = study.ask()
        config = space.suggest(trial)
        params = trial.params
        seen_methods.add(config.prune.method)
        assert ("pruning.amount" in params) == (config.prune.method != "none")
        assert ("quantization.granularity" in params) == (config.quantize.weight_bits <= 8)
        if config.quantize.int8_activations:
            assert config.quantize.weight_bits <= 8
        assert ("finetune.lr" in params) == (config.finetune.epochs > 0)
        assert ("distillation.temperature" in params) == (config.distill is not None)
        study.tell(trial, 0.0)
    assert seen_methods == {"none", "unstructured", "structured"}


def test_int8_activations_not_offered_without_kernel():
    space = load_search_space(DEFAULT_SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(1))
    for _ in range(20):
        trial = study.ask()
        config = space.suggest(trial, int8_activations_supported=False)
        assert not config.quantize.int8_activations
        assert "quantization.int8_activations" not in trial.params
        study.tell(trial, 0.0)


def test_per_layer_space_suggests_one_dimension_per_layer():
    space = parse_search_space_text(
        "pruning:\n  method: structured\n  amount: {low: 0.2, high: 0.6}\n  per_layer: true\n"
        "  layer_scale: {low: 0.5, high: 1.5}\n"
        "quantization:\n  weight_bits: [8, 4, 2]\n  per_layer: true\n"
    )
    layers = ["conv1", "conv2", "fc1", "fc2"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    trial = study.ask()
    config = space.suggest(trial, layers=layers, prunable=layers[:-1])
    assert {f"pruning.layer.{n}" for n in layers[:-1]} <= set(trial.params)
    assert "pruning.layer.fc2" not in trial.params
    assert {f"quantization.bits.{n}" for n in layers} <= set(trial.params)
    assert set(config.prune.layer_amounts) == set(layers[:-1])
    assert all(0 <= a <= 0.95 for a in config.prune.layer_amounts.values())
    assert set(config.quantize.layer_bits.values()) <= {8, 4, 2}


def test_per_layer_off_adds_no_dimensions():
    space = load_search_space(DEFAULT_SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    for _ in range(10):
        trial = study.ask()
        space.suggest(trial, layers=["a", "b"], prunable=["a"])
        assert not any(".layer." in p or ".bits." in p for p in trial.params)
        study.tell(trial, 0.0)


def test_warm_starts_are_allowed_by_the_space():
    space = load_search_space(DEFAULT_SPACE)
    starts = space.warm_starts()
    assert [s["pruning.method"] for s in starts] == ["none", "structured", "unstructured"]
    assert starts[0]["quantization.int8_activations"] is True
    tiny = parse_search_space_text(
        "pruning:\n  method: [none, unstructured]\nfinetune:\n  epochs: {low: 0, high: 1}\n"
    )
    for start in tiny.warm_starts():
        assert start.get("pruning.method") != "structured"
        assert start.get("finetune.epochs", 0) <= 1


def test_keep_edges_and_quant_aware_are_offered_only_where_they_matter():
    space = parse_search_space_text(
        """
format_version: 1
quantization:
  weight_bits: [32, 8, 4]
  keep_edges_8bit: [true, false]
finetune:
  epochs: [0, 1]
  quant_aware: [false, true]
"""
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(2))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        config = space.suggest(trial)
        bits, epochs = config.quantize.weight_bits, config.finetune.epochs
        assert ("quantization.keep_edges_8bit" in trial.params) == (bits < 8)
        assert ("finetune.quant_aware" in trial.params) == (bits < 16 and epochs > 0)
        if bits == 32:
            assert not config.finetune.quant_aware
        seen.add((config.quantize.keep_edges_8bit, config.finetune.quant_aware))
        study.tell(trial, 0.0)
    assert seen == {(True, False), (True, True), (False, False), (False, True)}
