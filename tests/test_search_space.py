"""The search space: one section per method, validated before any work; conditional suggestion."""

import optuna
import pytest

from autocompress.architecture import model_facts
from autocompress.errors import SearchSpaceError
from autocompress.methods import METHODS
from autocompress.search_space import load_search_space, parse_search_space_text
from tests.conftest import DEFAULT_SPACE, TINY_SPACE, full_profile, tiny_cnn
from tests.methods.tiny_transformers import bert, tokens


@pytest.fixture(scope="module")
def facts():
    import torch

    return model_facts(tiny_cnn().eval(), torch.zeros(1, 1, 8, 8))


@pytest.fixture(scope="module")
def profile(facts):
    return full_profile(facts.model)


def test_shipped_spaces_load_and_name_only_known_methods():
    for path in sorted(DEFAULT_SPACE.parent.glob("*.yaml")):
        space = load_search_space(path)
        assert set(space.methods) <= set(METHODS), path
    space = load_search_space(DEFAULT_SPACE)
    assert space["weights.bits"].choices == (16, 8, 6, 4, 3, 2)
    assert space["distillation.temperature"].log is True
    assert load_search_space(TINY_SPACE)["finetune.batch_size"].searched is False


@pytest.mark.parametrize(
    "text, message",
    [
        ("structured: [", "malformed YAML at line"),
        ("structurd: {}", "unknown key structurd"),
        ("structured:\n  amout: 0.5", "unknown key structured.amout"),
        ("structured:\n  amount: {low: 0.1, high: 1.5}", "outside the possible range"),
        ("structured:\n  amount: {low: 0.6, high: 0.2}", "low (0.6) is greater than high (0.2)"),
        ("finetune:\n  epochs: {low: 0, high: two}", "expected an integer"),
        ("finetune:\n  lr: {low: 0, high: 0.1, log: true}", "outside the possible range"),
        ("weights:\n  bits: [32, 1]", "32 is not allowed"),
        ("weights:\n  granularity: [per_channel, per_row]", "'per_row' is not allowed"),
        ("distillation:\n  enabled: yes-please", "expected true or false"),
        ("format_version: 3\nstructured: {}", "format_version 3"),
        ("format_version: true\nstructured: {}", "format_version True"),
        ("structured:\n  enabled: false", "the search space is empty"),
        ("- a\n- b", "must be a mapping"),
        ("weights:\n  bits: []", "empty list of choices"),
        ("structured:\n  amount: {low: 0.1}", "needs both low and high"),
        ("structured:\n  amount: {low: 0.1, high: 0.5, step: 0.9}", "larger than the range"),
        ("format_version: 1\nstructured: {}", "format_version 1 is not supported"),
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


def test_a_method_without_a_section_is_never_applied(facts):
    space = parse_search_space_text("structured:\n  amount: {low: 0.2, high: 0.5}")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    for _ in range(5):
        trial = study.ask()
        config = space.suggest(trial, facts)
        assert list(config.methods) == ["structured"]
        assert set(trial.params) == {"structured.amount"}
        study.tell(trial, 0.0)


def test_suggest_is_conditional(facts):
    space = load_search_space(DEFAULT_SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    seen: set[str] = set()
    for _ in range(60):
        trial = study.ask()
        config = space.suggest(trial, facts)
        params = trial.params
        seen.update(config.methods)
        for name in space.methods:
            fixed = space.dims[f"{name}.enabled"].value is True  # always on: runtime
            on = params.get(f"{name}.enabled", fixed)
            declared = [k for k in params if k.startswith(f"{name}.") and k != f"{name}.enabled"]
            if not on:
                assert not declared, (name, declared)
        if "int8" in config.methods:
            assert config.get("weights").bits <= 8
        if "distillation" in config.methods:
            assert config.get("finetune").epochs > 0
        study.tell(trial, 0.0)
    assert seen == set(METHODS) - (set(METHODS) - set(space.methods))


def test_unavailable_methods_are_never_suggested(facts):
    space = load_search_space(DEFAULT_SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(1))
    for _ in range(20):
        trial = study.ask()
        config = space.suggest(trial, facts, unavailable={"int8": "no kernels"})
        assert "int8" not in config.methods
        assert not any(p.startswith("int8.") for p in trial.params)
        study.tell(trial, 0.0)


def test_sampled_per_layer_space_suggests_one_dimension_per_layer(facts):
    space = parse_search_space_text(
        "structured:\n  amount: {low: 0.2, high: 0.6}\n  per_layer: true\n"
        "  allocation: sampled\n  layer_scale: {low: 0.5, high: 1.5}\n"
        "weights:\n  bits: [8, 4, 2]\n  per_layer: true\n  allocation: sampled\n"
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    trial = study.ask()
    config = space.suggest(trial, facts)
    prunable = facts.prunable_layers()
    assert {f"structured.layer_scale.{n}" for n in prunable} <= set(trial.params)
    assert f"structured.layer_scale.{facts.output_layers[0]}" not in trial.params
    assert {f"weights.bits.{n}.weight" for n in facts.layers} <= set(trial.params)
    structured, weights = config.get("structured"), config.get("weights")
    assert set(structured.layer_amounts) == set(prunable)
    assert all(0 <= a <= 0.95 for a in structured.layer_amounts.values())
    assert set(weights.layer_bits.values()) <= {8, 4, 2}
    # the labels show what ran: per-layer ranges, not the global amount
    assert "per layer" in config.describe()


def test_allocated_per_layer_space_searches_budgets_not_layers(facts, profile):
    space = parse_search_space_text(
        "structured:\n  amount: {low: 0.2, high: 0.6}\n  per_layer: true\n"
        "unstructured:\n  amount: {low: 0.2, high: 0.6}\n  per_layer: true\n"
        "weights:\n  bits: [8, 4, 2]\n  per_layer: true\n  budget_bits: {low: 2.0, high: 8.0}\n"
    )
    assert space["weights.allocation"].value == "sensitivity"  # the default for per-layer
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    sizes = {p.name: p.numel for p in facts.params}
    for _ in range(5):
        trial = study.ask()
        config = space.suggest(trial, facts, profile=profile)
        assert not any(p.count(".") > 1 for p in trial.params)  # no per-layer dimensions
        weights = config.get("weights")
        assert weights.budget_bits == pytest.approx(trial.params["weights.budget_bits"], abs=1e-4)
        assert set(weights.layer_bits) == {f"{n}.weight" for n in facts.layers}
        assert set(weights.layer_bits.values()) <= {8, 4, 2}
        used = sum(b * sizes[n] for n, b in weights.layer_bits.items())
        assert used / sum(sizes[n] for n in weights.layer_bits) <= max(weights.budget_bits, 2.0)
        structured, unstructured = config.get("structured"), config.get("unstructured")
        assert set(structured.layer_amounts) == set(facts.prunable_layers())
        assert structured.allocated and unstructured.allocated
        pruned = sum(a * sizes[n] for n, a in unstructured.layer_amounts.items())
        assert pruned / sum(sizes[n] for n in unstructured.layer_amounts) >= unstructured.amount
        label = config.describe()
        assert "by sensitivity" in label and "per layer" in label
        study.tell(trial, 0.0)
    with pytest.raises(ValueError, match="needs the sensitivity profile"):
        space.suggest(study.ask(), facts)


def test_heads_and_mlp_sample_one_amount_per_block_and_warm_starts_pin_them():
    model = bert()
    facts = model_facts(model, tokens(2, 16))
    attention = [a.name for a in facts.transformer.attention]
    ups = [m.up for m in facts.transformer.mlps]
    space = parse_search_space_text(
        "heads:\n  amount: {low: 0.5, high: 0.7}\n  per_layer: true\n  allocation: sampled\n"
        "mlp:\n  amount: {low: 0.6, high: 0.8}\n  per_layer: true\n  allocation: sampled\n"
        "  layer_scale: {low: 1.2, high: 1.5}\n"
        "weights:\n  enabled: [false, true]\nint8:\n  enabled: [false, true]\n"
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    trial = study.ask()
    config = space.suggest(trial, facts)
    heads, mlp = config.get("heads"), config.get("mlp")
    assert {f"heads.layer_scale.{a}" for a in attention} <= set(trial.params)
    assert set(heads.layer_amounts) == set(attention) and set(mlp.layer_amounts) == set(ups)
    assert all(0 < a <= 0.75 for a in heads.layer_amounts.values())
    assert all(0.6 * 1.2 - 1e-9 <= a <= 0.9 for a in mlp.layer_amounts.values())
    assert not heads.allocated and "per module" in heads.describe()
    study.tell(trial, 0.0)
    starts = space.warm_starts(facts)
    assert starts and all(s[f"heads.layer_scale.{a}"] == 1.0 for s in starts for a in attention)
    # a multiplier of 1 is outside the MLP's range: left to the sampler
    assert not any(k.startswith("mlp.layer_scale") for s in starts for k in s)


def test_per_layer_off_adds_no_dimensions(facts):
    space = load_search_space(DEFAULT_SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    for _ in range(10):
        trial = study.ask()
        space.suggest(trial, facts)
        assert not any(p.count(".") > 1 for p in trial.params)
        study.tell(trial, 0.0)


def test_warm_starts_are_allowed_by_the_space_and_pin_per_layer(facts, profile):
    space = load_search_space(DEFAULT_SPACE)
    starts = space.warm_starts(facts, "onnxruntime")
    assert [s.get("structured.enabled") for s in starts] == [False, True, False]
    assert [s.get("unstructured.enabled") for s in starts] == [False, False, True]
    assert starts[0]["int8.enabled"] is True and starts[0]["weights.bits"] == 8
    for start in starts:
        for name, value in start.items():
            if name.count(".") == 1:
                assert space[name].allows(value), (name, value)
    tiny = parse_search_space_text("unstructured:\n  enabled: [false, true]\n")
    assert all(s.get("structured.enabled") is not True for s in tiny.warm_starts())
    per_layer = load_search_space(DEFAULT_SPACE.parent / "per_layer.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    for start in per_layer.warm_starts(facts):
        study.enqueue_trial(start)
    int8_start = per_layer.suggest(study.ask(), facts)
    assert int8_start.get("weights").bits == 8 and not int8_start.get("weights").layer_bits
    structured_start = per_layer.suggest(study.ask(), facts, profile=profile)
    pruning = structured_start.get("structured")
    assert pruning.amount == 0.5 and pruning.allocated  # the start's amount is the budget
    text = (DEFAULT_SPACE.parent / "per_layer.yaml").read_text()
    text = text.replace("allocation: sensitivity", "allocation: [sensitivity, sampled]", 1)
    sampled = parse_search_space_text(text)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    for start in sampled.warm_starts(facts):
        study.enqueue_trial(start)
    study.ask()
    structured_start = sampled.suggest(study.ask(), facts)
    assert set(structured_start.get("structured").layer_amounts.values()) == {0.5}


@pytest.mark.parametrize(
    "runtime, size, unstructured_4bit",
    [
        ("torch", "deployed", False),  # deploys 4-bit weights as float: the file stays the same
        ("onnxruntime", "deployed", True),  # MatMulNBits keeps them
        ("openvino", "deployed", True),  # NNCF compresses them
        ("torch", "packed", True),  # the packed artifact does shrink
    ],
)
def test_no_warm_start_that_cannot_change_the_deployed_file(
    facts, runtime, size, unstructured_4bit
):
    starts = load_search_space(DEFAULT_SPACE).warm_starts(facts, runtime, size)
    kept = [s for s in starts if s.get("unstructured.enabled")]
    assert bool(kept) is unstructured_4bit
    assert [s.get("structured.enabled") for s in starts if not s.get("unstructured.enabled")] == [
        False,
        True,
    ]  # int8 alone and structured + int8 change every runtime's file


def test_warm_starts_switch_transformer_pruning_off_where_the_space_can():
    text = "".join(
        f"{m}:\n  enabled: [false, true]\n" for m in ("structured", "weights", "int8", "heads")
    )
    starts = parse_search_space_text(text).warm_starts()
    assert starts and all(s["heads.enabled"] is False for s in starts)
    always_on = parse_search_space_text(
        text.replace("heads:\n  enabled: [false, true]", "depth: {}")
    )
    starts = always_on.warm_starts()
    assert starts and all("depth.enabled" not in s for s in starts)


def test_warm_starts_switch_off_every_method_they_do_not_name():
    # Derived from METHODS: a method no start names (here low-rank) is off in every start,
    # not silently on in "int8 alone"; forced on, it stays on top of the starts.
    text = "".join(f"{m}:\n  enabled: [false, true]\n" for m in ("lowrank", "weights", "int8"))
    starts = parse_search_space_text(text).warm_starts()
    assert starts and all(s["lowrank.enabled"] is False for s in starts)
    forced = parse_search_space_text(
        text.replace("lowrank:\n  enabled: [false, true]", "lowrank: {}")
    )
    assert forced.warm_starts() and all("lowrank.enabled" not in s for s in forced.warm_starts())
    # a method that defines a start (structured) forced on drops the starts without it
    text = "structured:\n  enabled: true\n" + "".join(
        f"{m}:\n  enabled: [false, true]\n" for m in ("weights", "int8", "finetune", "distillation")
    )
    starts = parse_search_space_text(text).warm_starts()
    assert [s["structured.amount"] for s in starts] == [0.5]  # structured + int8 only


def test_the_int8_warm_start_is_dynamic_for_attention_models_only():
    from types import SimpleNamespace

    space = parse_search_space_text(
        "weights:\n  enabled: [false, true]\n"
        "int8:\n  enabled: [false, true]\n  mode: [static, dynamic]\n"
    )
    with_attention = SimpleNamespace(transformer=object())
    without = SimpleNamespace(transformer=None)
    (start,) = [s for s in space.warm_starts(with_attention) if s.get("int8.enabled")]
    assert start["int8.mode"] == "dynamic"
    (start,) = [s for s in space.warm_starts(without) if s.get("int8.enabled")]
    assert start["int8.mode"] == "static"
    # OpenVINO's NNCF quantizes attention models statically with SmoothQuant
    (start,) = [s for s in space.warm_starts(with_attention, "openvino") if s.get("int8.enabled")]
    assert start["int8.mode"] == "static"


def test_keep_edges_and_quant_aware_are_offered_only_where_they_matter(facts):
    space = parse_search_space_text(
        """
weights:
  enabled: [false, true]
  bits: [16, 8, 4]
  keep_edges_8bit: [true, false]
finetune:
  enabled: [false, true]
  epochs: 1
  quant_aware: [false, true]
"""
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(2))
    seen = set()
    for _ in range(200):
        trial = study.ask()
        config = space.suggest(trial, facts)
        weights, finetune = config.get("weights"), config.get("finetune")
        bits = weights.bits if weights else 32
        assert ("weights.keep_edges_8bit" in trial.params) == (bits < 8)
        assert ("finetune.quant_aware" in trial.params) == (bits < 16 and finetune is not None)
        if finetune is not None:
            seen.add((weights.keep_edges_8bit if weights else True, finetune.quant_aware))
        study.tell(trial, 0.0)
    assert seen == {(True, False), (True, True), (False, False), (False, True)}


def test_a_section_whose_lines_are_all_commented_out_is_refused():
    from autocompress.errors import SearchSpaceError
    from autocompress.search_space import parse_search_space_text

    text = "weights:\n  bits: [8, 4]\nstructured:\n  # amount: {low: 0.1, high: 0.5}\n"
    with pytest.raises(SearchSpaceError, match="section structured is empty .are all its lines"):
        parse_search_space_text(text, "s.yaml")
    assert parse_search_space_text(text.replace("structured:\n", "structured: {}\n")).methods


def test_a_runtime_setting_the_study_runtime_does_not_take_is_said():
    from autocompress.methods.runtime import not_offered
    from autocompress.search_space import parse_search_space_text

    space = parse_search_space_text("weights:\n  bits: [8, 4]\nruntime:\n  precision: [f32, f16]\n")
    assert not_offered(space, "onnxruntime") == [
        "runtime.precision: onnxruntime has no such setting (another runtime's); ignored"
    ]
