"""Recipes: export a trial, load it back, apply it, refuse bad ones, pick trials by rule.

One real 3-trial study on the digits workload (search_spaces/tiny.yaml) is run once per session
into a temporary directory; its trials are enqueued so that one is structured-pruned and
fine-tuned with distillation, one is the untouched model and one is small and infeasible.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from autocompress import apply_recipe
from autocompress.apply import RecipeWarning, kept_channels, rebuild
from autocompress.cli import app
from autocompress.errors import RecipeError
from autocompress.recipe import (
    Selection,
    build_recipe,
    content_hash,
    dumps,
    environment_warnings,
    load_recipe,
    loads,
    save_recipe,
    select_trial,
)
from autocompress.search_space import load_search_space
from autocompress.study import StudySettings, create_or_resume, open_storage, run_study

REPO = Path(__file__).resolve().parent.parent
BUDGET = 0.05
TRIALS = [
    {  # structured pruning, fine-tuned with distillation: the replay case
        "pruning.method": "structured",
        "pruning.amount": 0.3,
        "quantization.weight_bits": 8,
        "quantization.int8_activations": False,
        "finetune.epochs": 1,
        "finetune.lr": 3e-3,
        "finetune.schedule": "cosine",
        "distillation.enabled": True,
        "distillation.temperature": 4.0,
        "distillation.alpha": 0.5,
    },
    {  # the baseline as is: most accurate, largest
        "pruning.method": "none",
        "quantization.weight_bits": 32,
        "finetune.epochs": 0,
    },
    {  # far too aggressive: outside the accuracy budget
        "pruning.method": "structured",
        "pruning.amount": 0.6,
        "quantization.weight_bits": 4,
        "quantization.int8_activations": False,
        "finetune.epochs": 0,
    },
]


@pytest.fixture(scope="session")
def digits_study(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("recipe")
    studies = root / "studies"
    cache = studies / "baselines"
    cache.mkdir(parents=True)
    # Reuse a baseline already trained in this checkout (else it trains once, ~30 s).
    for f in (REPO / "studies" / "baselines").glob("digits-*.pt"):
        shutil.copy(f, cache)
    url = f"sqlite:///{root / 'study.db'}"
    settings = StudySettings(
        workload="digits",
        space_text=load_search_space(REPO / "search_spaces" / "tiny.yaml").text,
        space_source="search_spaces/tiny.yaml",
        sampler="random",
        max_accuracy_drop=BUDGET,
        warm_start=False,  # the tests enqueue their own cases
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = open_storage(url)
        study, settings, workload, baseline = create_or_resume(
            "t", storage, settings, studies_dir=studies
        )
        for params in TRIALS:
            study.enqueue_trial(params)
        run_study(study, settings, workload, baseline, n_trials=len(TRIALS), studies_dir=studies)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == len(TRIALS)
    return SimpleNamespace(root=root, studies=studies, url=url, study=study, workload=workload)


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials() if t.number == number)


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def test_the_study_has_the_cases_the_tests_need(digits_study: SimpleNamespace) -> None:
    study = digits_study.study
    assert _feasible(_trial(study, 0)) and _trial(study, 0).user_attrs["pruning_history"]
    assert _feasible(_trial(study, 1))
    assert not _feasible(_trial(study, 2))


@pytest.mark.parametrize("number", [0, 1, 2])
def test_round_trip_export_load_equal(digits_study: SimpleNamespace, number: int, tmp_path) -> None:
    recipe = build_recipe(
        digits_study.study, _trial(digits_study.study, number), digits_study.workload.model
    )
    path = save_recipe(recipe, tmp_path / "r.yaml")
    loaded = load_recipe(path)
    assert loaded == recipe
    assert dumps(loaded) == path.read_text()
    trial = _trial(digits_study.study, number)
    assert loaded.source["trial"] == number
    assert loaded.metrics["validation_accuracy"] == trial.values[0]
    assert loaded.metrics["size_bytes"] == trial.user_attrs["size_bytes"]
    assert loaded.config.to_dict() == trial.user_attrs["config"]


def test_recipe_is_readable_and_complete(digits_study: SimpleNamespace) -> None:
    recipe = build_recipe(
        digits_study.study, _trial(digits_study.study, 0), digits_study.workload.model
    )
    text = dumps(recipe)
    doc = yaml.safe_load(text)
    assert text.startswith("# autocompress recipe")
    assert doc["format_version"] == 1
    assert set(doc["versions"]) == {"autocompress", "torch", "torch_pruning", "optuna"}
    assert doc["workload"]["reference"] == "digits"
    assert len(doc["workload"]["baseline_weights_sha256"]) == 64
    trial = _trial(digits_study.study, 0)
    assert doc["target"] == {
        "runtime": "torch",
        "device": "cpu",
        "threads": 1,
        "batch_size": 32,
        "deployed": trial.user_attrs["deployed_kind"],
    }
    assert doc["measured_on"] == digits_study.study.user_attrs["autocompress"]["hardware"]
    prune, finetune, quantize = doc["steps"]
    assert [s["type"] for s in doc["steps"]] == ["prune", "finetune", "quantize"]
    assert prune["kept_channels"] == _trial(digits_study.study, 0).user_attrs["channels"]
    assert prune["kept_channels"] == {"0": 22, "3": 44, "7": 44, "12": 89, "14": 10}  # 70% kept
    assert finetune["distillation"] == {"temperature": 4.0, "alpha": 0.5}
    assert finetune["epochs"] == 1 and finetune["schedule"] == "cosine"
    assert set(quantize["bits_per_layer"].values()) == {8}
    assert doc["content_sha256"] == content_hash(doc)


def test_apply_reproduces_size_and_validation_accuracy(
    digits_study: SimpleNamespace, tmp_path
) -> None:
    study, wl = digits_study.study, digits_study.workload
    feasible = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if _feasible(t)]
    assert [t.number for t in feasible] == [0, 1]
    for t in feasible:
        recipe = build_recipe(study, t, wl.model)
        rebuilt = rebuild(wl, recipe, tmp_path / f"{t.number}.acpk")
        assert rebuilt.compressed.size_bytes == t.user_attrs["size_bytes"]
        assert (tmp_path / f"{t.number}.acpk").stat().st_size == t.user_attrs["size_bytes"]
        accuracy = wl.evaluate(rebuilt.compressed.deployable, "val")
        assert abs(accuracy - t.values[0]) <= 0.005


def test_structured_pruning_replays_to_the_recipes_shapes(
    digits_study: SimpleNamespace, tmp_path
) -> None:
    study, wl = digits_study.study, digits_study.workload
    recipe = build_recipe(study, _trial(study, 0), wl.model)
    magnitude = rebuild(wl, recipe, tmp_path / "m.acpk")
    replayed = rebuild(wl, recipe, tmp_path / "h.acpk", replay_history=True)
    assert magnitude.pruning == "magnitude" and replayed.pruning == "history"
    for r in (magnitude, replayed):
        assert kept_channels(r.compressed.model) == recipe.kept_channels
        assert r.compressed.size_bytes == recipe.metrics["size_bytes"]
    for a, b in zip(
        magnitude.compressed.model.state_dict().values(),
        replayed.compressed.model.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_other_channel_choice_falls_back_to_the_history(
    digits_study: SimpleNamespace, tmp_path
) -> None:
    study, wl = digits_study.study, digits_study.workload
    recipe = build_recipe(study, _trial(study, 0), wl.model)
    other = dataclasses.replace(wl, model=_reweighted(wl.model))
    assert torch.equal(other.model(wl.val.x[:8]).argmax(1), wl.model(wl.val.x[:8]).argmax(1))
    rebuilt = rebuild(other, recipe, tmp_path / "o.acpk")
    assert rebuilt.pruning == "history"
    assert kept_channels(rebuilt.compressed.model) == recipe.kept_channels
    assert any("weights differ" in w for w in rebuilt.warnings)
    assert any("replayed the recipe's history" in w for w in rebuilt.warnings)


def _reweighted(model: torch.nn.Module) -> torch.nn.Module:
    """The same function with the first conv's channels in reverse order (other indices)."""
    model = copy.deepcopy(model)
    perm = torch.arange(model[0].out_channels).flip(0)
    with torch.no_grad():
        for p in (model[0].weight, model[0].bias, model[1].weight, model[1].bias):
            p.copy_(p[perm])
        for name in ("running_mean", "running_var"):
            getattr(model[1], name).copy_(getattr(model[1], name)[perm])
        model[3].weight.copy_(model[3].weight[:, perm])
    return model


def test_python_api_warns_about_other_hardware_and_still_reproduces(
    digits_study: SimpleNamespace,
) -> None:
    study, wl = digits_study.study, digits_study.workload
    t = _trial(study, 0)
    recipe = build_recipe(study, t, wl.model)
    elsewhere = dataclasses.replace(
        recipe,
        hardware={**recipe.hardware, "cpu": "Some Other CPU", "logical_cores": 128},
        versions={**recipe.versions, "torch": "1.0.0"},
    )
    notes = environment_warnings(elsewhere)
    assert any("torch 1.0.0" in n for n in notes)
    assert any("Some Other CPU" in n for n in notes)
    with pytest.warns(RecipeWarning, match="Some Other CPU"):
        model = apply_recipe(wl.model, elsewhere, wl)
    assert abs(wl.evaluate(model, "val") - t.values[0]) <= 0.005


def _doc(digits_study: SimpleNamespace) -> dict:
    recipe = build_recipe(
        digits_study.study, _trial(digits_study.study, 0), digits_study.workload.model
    )
    return yaml.safe_load(dumps(recipe))


def _rehash(doc: dict) -> str:
    doc["content_sha256"] = content_hash(doc)
    return yaml.safe_dump(doc, sort_keys=False)


def _bad_version(doc: dict) -> str:
    doc["format_version"] = 2
    return _rehash(doc)


def _bad_hash(doc: dict) -> str:
    doc["metrics"]["validation_accuracy"] = 1.0  # tampered, hash left as it was
    return yaml.safe_dump(doc, sort_keys=False)


def _unknown_step(doc: dict) -> str:
    doc["steps"][1]["type"] = "magic"
    return _rehash(doc)


def _missing_field(doc: dict) -> str:
    del doc["metrics"]
    return yaml.safe_dump(doc, sort_keys=False)


def _missing_step_field(doc: dict) -> str:
    del doc["steps"][2]["granularity"]
    return _rehash(doc)


def _bad_value(doc: dict) -> str:
    doc["steps"][2]["weight_bits"] = 1
    return _rehash(doc)


def _code(doc: dict) -> str:
    return "!!python/object/apply:os.system ['echo hacked']\n"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_bad_version, "unknown format_version 2"),
        (_bad_hash, "content_sha256 does not match"),
        (_unknown_step, "unknown step type 'magic'"),
        (_missing_field, "missing field 'metrics'"),
        (_missing_step_field, "step quantize is missing field 'granularity'"),
        (_bad_value, "weight_bits must be one of"),
        (_code, "not valid YAML"),
    ],
    ids=[
        "version",
        "hash",
        "unknown-step",
        "missing-field",
        "missing-step-field",
        "bad-value",
        "code",
    ],
)
def test_bad_recipes_are_refused(digits_study: SimpleNamespace, tamper, message: str) -> None:
    text = tamper(_doc(digits_study))
    with pytest.raises(RecipeError, match=message) as info:
        loads(text, source="r.yaml")
    assert "\n" not in str(info.value)


def test_selection_rules_pick_the_right_trial(digits_study: SimpleNamespace) -> None:
    study = digits_study.study
    t0, t1 = _trial(study, 0), _trial(study, 1)
    # Trial 1 (uncompressed) is the most accurate, trial 0 the smaller and faster one.
    assert t1.values[0] >= t0.values[0] and t0.values[2] < t1.values[2]
    assert select_trial(study, Selection()).number == 1
    assert select_trial(study, Selection(optimize="size")).number == 0
    assert select_trial(study, Selection(min_accuracy=t0.values[0], optimize="latency")).number in (
        0,
        1,
    )
    limit = (t0.values[2] + t1.values[2]) / 2
    assert select_trial(study, Selection(max_size_kb=limit, optimize="accuracy")).number == 0
    assert select_trial(study, Selection(trial=2)).number == 2  # any complete trial by number
    with pytest.raises(RecipeError, match="no trial of study 't'"):
        select_trial(study, Selection(max_size_kb=1.0))
    with pytest.raises(RecipeError, match="has no trial 99"):
        select_trial(study, Selection(trial=99))


def test_feasible_trials_carry_their_recipe_as_an_artifact(
    digits_study: SimpleNamespace, tmp_path
) -> None:
    study = digits_study.study
    store = optuna.artifacts.FileSystemArtifactStore(digits_study.studies / "t" / "artifacts")
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        if not _feasible(t):
            assert metas == []
            continue
        assert len(metas) == 1
        path = tmp_path / f"{t.number}.yaml"
        optuna.artifacts.download_artifact(
            artifact_store=store, artifact_id=metas[0].artifact_id, file_path=str(path)
        )
        assert load_recipe(path).source == {
            "study": "t",
            "trial": t.number,
            "summary": t.user_attrs["summary"],
        }


def test_cli_export_then_apply(
    digits_study: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(digits_study.root)  # studies/baselines there holds the cached baseline
    runner = CliRunner()
    t0 = _trial(digits_study.study, 0)
    result = runner.invoke(
        app,
        [
            "export",
            "t",
            "--storage",
            digits_study.url,
            "--out",
            "r.yaml",
            "--max-size-kb",
            str(t0.values[2] + 1),
            "--maximize",
            "accuracy",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trial 0" in result.output
    result = runner.invoke(app, ["apply", "r.yaml", "--out", "deploy"])
    assert result.exit_code == 0, result.output
    assert "re-measured" in result.output and "size_bytes" in result.output
    assert Path("deploy/model.acpk").stat().st_size == t0.user_attrs["size_bytes"]
    assert Path("deploy/model.pt").exists()
    assert "onnx:" in result.output


def test_cli_refuses_a_tampered_recipe_in_one_line(digits_study: SimpleNamespace, tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_bad_hash(_doc(digits_study)))
    result = CliRunner().invoke(app, ["apply", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "error:" in result.output and "content_sha256 does not match" in result.output
    assert "Traceback" not in result.output


def test_cli_export_rejects_contradictory_rules(digits_study: SimpleNamespace, tmp_path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "export",
            "t",
            "--storage",
            digits_study.url,
            "--out",
            str(tmp_path / "r.yaml"),
            "--minimize",
            "size",
            "--maximize",
            "accuracy",
        ],
    )
    assert result.exit_code == 2
    assert "not both" in result.output
