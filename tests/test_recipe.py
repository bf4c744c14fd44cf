"""Recipes: export a trial, load it back, replay it bit for bit, refuse bad ones, pick by rule.

One real 3-trial study on the digits workload (search_spaces/tiny.yaml) is run once per session
into a temporary directory; its trials are enqueued so that one is structured-pruned and
fine-tuned with distillation, one is the untouched model and one is small and infeasible. A
second set of tests runs one trial of every shipped search space on a tiny workload and checks
that its recipe rebuilds the very same packed artifact.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from autocompress import apply_recipe
from autocompress.apply import RecipeWarning, rebuild
from autocompress.cli import app
from autocompress.errors import RecipeError
from autocompress.recipe import (
    RecipeArtifacts,
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
from autocompress.record import feasible_front, is_feasible
from autocompress.search_space import load_search_space
from autocompress.study import (
    StudySettings,
    artifact_dir,
    create_or_resume,
    open_storage,
    run_trials,
)
from tests.conftest import BASELINE_CACHE, REPO

BUDGET = 0.05
OFF = {
    f"{m}.enabled": False
    for m in ("structured", "unstructured", "weights", "int8", "finetune", "distillation")
}
TRIALS: list[dict[str, Any]] = [
    {  # structured pruning, fine-tuned with distillation: the replay case
        **OFF,
        "structured.enabled": True,
        "structured.amount": 0.3,
        "weights.enabled": True,
        "weights.bits": 8,
        "finetune.enabled": True,
        "finetune.lr": 3e-3,
        "finetune.schedule": "cosine",
        "distillation.enabled": True,
        "distillation.temperature": 4.0,
    },
    {**OFF, "int8.enabled": True},  # int8 alone: about as accurate, smaller and faster
    {  # far too aggressive: outside the budget
        **OFF,
        "structured.enabled": True,
        "structured.amount": 0.6,
        "weights.enabled": True,
        "weights.bits": 4,
    },
]


def _cached_baselines(into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for f in BASELINE_CACHE.glob("digits-*"):
        shutil.copy(f, into)


@pytest.fixture(scope="session")
def digits_study(digits, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("recipe")
    studies = root / "studies"
    _cached_baselines(studies / "baselines")  # the CLI's export and apply load the baseline
    url = f"sqlite:///{root / 'study.db'}"
    settings = StudySettings(
        workload="digits",
        space_text=load_search_space(REPO / "search_spaces" / "tiny.yaml").text,
        space_source="search_spaces/tiny.yaml",
        sampler="random",
        max_metric_drop=BUDGET,
        warm_start=False,  # the tests enqueue their own cases
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study, settings, workload, info = create_or_resume(
            "t", open_storage(url), settings, studies_dir=studies, workload=digits
        )
        for params in TRIALS:
            study.enqueue_trial(params)
        folder = artifact_dir(studies, study)
        run_trials(
            study,
            settings,
            workload,
            info,
            n_trials=len(TRIALS),
            studies_dir=studies,
            wrap=lambda o: RecipeArtifacts(o, workload.model, folder),
        )
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == len(TRIALS)
    return SimpleNamespace(
        root=root, studies=studies, url=url, study=study, workload=workload, folder=folder
    )


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials() if t.number == number)


def test_the_study_has_the_cases_the_tests_need(digits_study: SimpleNamespace) -> None:
    study = digits_study.study
    assert is_feasible(_trial(study, 0)) and is_feasible(_trial(study, 1))
    assert not is_feasible(_trial(study, 2))
    assert "structured" in _trial(study, 0).user_attrs["records"]


@pytest.mark.parametrize("number", [0, 1, 2])
def test_round_trip_export_load_equal(digits_study: SimpleNamespace, number: int, tmp_path) -> None:
    recipe = build_recipe(
        digits_study.study, _trial(digits_study.study, number), digits_study.workload.model
    )
    path = save_recipe(recipe, tmp_path / "r.yaml")
    assert load_recipe(path) == recipe
    assert dumps(load_recipe(path)) == path.read_text()


def test_recipe_is_readable_and_complete(digits_study: SimpleNamespace) -> None:
    recipe = build_recipe(
        digits_study.study, _trial(digits_study.study, 0), digits_study.workload.model
    )
    text = dumps(recipe)
    assert text.startswith("# autocompress recipe")
    doc = yaml.safe_load(text)
    assert [s["type"] for s in doc["steps"]] == [
        "structured",
        "finetune",
        "distillation",
        "weights",
    ]
    structured = doc["steps"][0]
    assert structured["amount"] == 0.3 and structured["record"]["history"]
    assert doc["steps"][3]["record"]["plan"]
    assert doc["metrics"]["validation_accuracy"] == _trial(digits_study.study, 0).values[0]
    assert doc["metrics"]["packed_bytes"] > 0 and doc["metrics"]["deployed_bytes"] > 0
    assert "never imported" in text and "integrity, not origin" in text


def test_apply_rebuilds_the_same_packed_artifact_byte_for_byte(
    digits_study: SimpleNamespace, tmp_path
) -> None:
    study, wl = digits_study.study, digits_study.workload
    for number in (0, 2):
        t = _trial(study, number)
        recipe = build_recipe(study, t, wl.model)
        rebuild(wl, recipe, tmp_path / f"{number}.acpk")
        original = Path(t.user_attrs["artifact"]).read_bytes()
        assert (tmp_path / f"{number}.acpk").read_bytes() == original, number


def test_a_recipe_that_does_not_fit_the_model_is_refused(digits_study, tmp_path) -> None:
    recipe = build_recipe(
        digits_study.study, _trial(digits_study.study, 0), digits_study.workload.model
    )
    bad = dataclasses.replace(recipe, records={"structured": {"history": [["nope", True, [0]]]}})
    with pytest.raises(RecipeError, match="does not apply to this model"):
        rebuild(digits_study.workload, bad, tmp_path / "x.acpk")


def test_python_api_warns_about_other_hardware_and_still_reproduces(digits_study) -> None:
    study, wl = digits_study.study, digits_study.workload
    t = _trial(study, 0)
    recipe = build_recipe(study, t, wl.model)
    elsewhere = dataclasses.replace(
        recipe,
        hardware={**recipe.hardware, "cpu": "Some Other CPU", "logical_cores": 128},
        versions={**recipe.versions, "torch": "1.0.0"},
    )
    notes = environment_warnings(elsewhere)
    assert any("torch 1.0.0" in n for n in notes) and any("Some Other CPU" in n for n in notes)
    with pytest.warns(RecipeWarning, match="Some Other CPU"):
        model = apply_recipe(wl.model, elsewhere, wl.train, example_input=wl.example_input)
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
    doc["format_version"] = 3
    return _rehash(doc)


def _bool_version(doc: dict) -> str:
    doc["format_version"] = True
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


def _unknown_setting(doc: dict) -> str:
    doc["steps"][3]["granularty"] = "per_channel"
    return _rehash(doc)


def _bad_value(doc: dict) -> str:
    doc["steps"][3]["bits"] = 1
    return _rehash(doc)


def _reordered(doc: dict) -> str:
    doc["steps"] = doc["steps"][::-1]
    return _rehash(doc)


def _code(doc: dict) -> str:
    return "!!python/object/apply:os.system ['echo hacked']\n"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_bad_version, "unknown format_version 3"),
        (_bool_version, "unknown format_version True"),
        (_bad_hash, "content_sha256 does not match"),
        (_unknown_step, "unknown step type 'magic'"),
        (_missing_field, "missing field 'metrics'"),
        (_unknown_setting, "step weights: unknown setting 'granularty'"),
        (_bad_value, "weight bits must be one of"),
        (_reordered, "pipeline order"),
        (_code, "malformed YAML at line 1"),
    ],
    ids=[
        "version",
        "bool-version",
        "hash",
        "unknown-step",
        "missing-field",
        "unknown-setting",
        "bad-value",
        "order",
        "code",
    ],
)
def test_bad_recipes_are_refused(digits_study: SimpleNamespace, tamper, message: str) -> None:
    text = tamper(_doc(digits_study))
    with pytest.raises(RecipeError, match=message) as info:
        loads(text, source="r.yaml")
    assert "\n" not in str(info.value)


def test_signatures_prove_the_key_not_just_the_content(digits_study, tmp_path) -> None:
    recipe = build_recipe(
        digits_study.study, _trial(digits_study.study, 0), digits_study.workload.model
    )
    key, other = b"a secret of at least 16 bytes", b"another secret, 16 bytes+"
    signed = load_recipe(save_recipe(recipe.signed(key), tmp_path / "s.yaml"))
    signed.verify(key)
    with pytest.raises(RecipeError, match="does not match this key"):
        signed.verify(other)
    with pytest.raises(RecipeError, match="not signed"):
        recipe.verify(key)
    # an attacker who edits the file and recomputes content_sha256 still fails the signature
    doc = yaml.safe_load((tmp_path / "s.yaml").read_text())
    doc["steps"][0]["amount"] = 0.9
    forged = loads(_rehash(doc))
    with pytest.raises(RecipeError, match="does not match this key"):
        forged.verify(key)


def test_selection_rules_pick_the_right_trial(digits_study: SimpleNamespace) -> None:
    study = digits_study.study
    # Which trials are on the front depends on measured latency (a trial must beat the
    # baseline); the rules are checked against a plain max/min over whatever front there is.
    front = feasible_front(study)
    assert front and all(is_feasible(t) for t in front)
    best = max(front, key=lambda t: (t.values[0], -t.number))
    smallest = min(front, key=lambda t: (t.values[2], t.number))
    assert select_trial(study, Selection()).number == best.number
    assert select_trial(study, Selection(optimize="size")).number == smallest.number
    assert (
        select_trial(study, Selection(max_size_kb=smallest.values[2])).values[2]
        <= (smallest.values[2])
    )
    accurate = [t for t in front if t.values[0] >= best.values[0]]
    want = min(accurate, key=lambda t: (t.values[2], t.number)).number
    got = select_trial(study, Selection(metric_limit=best.values[0], optimize="size")).number
    assert got == want
    assert select_trial(study, Selection(trial=2)).number == 2  # any complete trial by number
    with pytest.raises(RecipeError, match="no trial of study 't'"):
        select_trial(study, Selection(max_size_kb=1.0))
    with pytest.raises(RecipeError, match="has no trial 99"):
        select_trial(study, Selection(trial=99))


def test_feasible_trials_carry_their_recipe_as_an_artifact(digits_study, tmp_path) -> None:
    study = digits_study.study
    store = optuna.artifacts.FileSystemArtifactStore(digits_study.folder / "artifacts")
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        if not is_feasible(t):
            assert metas == []
            continue
        assert len(metas) == 1
        path = tmp_path / f"{t.number}.yaml"
        optuna.artifacts.download_artifact(
            artifact_store=store, artifact_id=metas[0].artifact_id, file_path=str(path)
        )
        source = load_recipe(path).source
        assert (source["study"], source["trial"]) == ("t", t.number)


def test_cli_export_then_apply(digits_study: SimpleNamespace, monkeypatch) -> None:
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
            "--trial",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trial 0" in result.output
    result = runner.invoke(app, ["apply", "r.yaml", "--out", "deploy"])
    assert result.exit_code == 0, result.output
    assert "re-measured" in result.output and "packed_bytes" in result.output
    assert Path("deploy/model.acpk").stat().st_size == t0.user_attrs["packed_bytes"]
    assert Path("deploy/model.acpk").read_bytes() == Path(t0.user_attrs["artifact"]).read_bytes()
    assert Path("deploy/model.pt").exists() and "onnx:" in result.output
    # every file the output names has the size it prints (the measured file is not rewritten)
    named = re.findall(r"(deploy/model\.\w+) \((?:[\w-]+, )?([\d,]+) bytes", result.output)
    assert {path for path, _ in named} >= {
        "deploy/model.acpk",
        "deploy/model.pt",
        "deploy/model.onnx",
    }
    for path, size in named:
        assert Path(path).stat().st_size == int(size.replace(",", "")), path


def test_apply_never_imports_a_recipes_module(digits_study, tmp_path, monkeypatch) -> None:
    """A recipe edited to name another module (hash recomputed) is refused, not imported."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil_mod.py").write_text("import os\nos.abort()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = _doc(digits_study)
    doc["workload"]["reference"] = "evil_mod:run"
    Path("r.yaml").write_text(_rehash(doc))
    result = CliRunner().invoke(app, ["apply", "r.yaml", "--out", "out"])
    assert result.exit_code == 2
    assert "never imports code" in result.output and "--workload evil_mod:run" in result.output


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


SPACES = sorted(p.name for p in (REPO / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("space", SPACES)
def test_a_trial_of_every_space_replays_bit_for_bit(tiny, tmp_path, space) -> None:
    """Every field a space can set goes into the recipe and comes back (per-layer amounts and
    bits included): the rebuilt packed artifact has the same bytes as the trial's."""
    settings = StudySettings(
        workload="tests.conftest:tiny_workload",
        space_text=(REPO / "search_spaces" / space).read_text(),
        space_source=space,
        sampler="random",
        seed=11,
        warm_start=False,
        early_stop=False,
    )
    study, settings, wl, info = create_or_resume(
        "r",
        open_storage(f"sqlite:///{tmp_path / 'r.db'}"),
        settings,
        studies_dir=tmp_path,
        workload=tiny,
    )
    for params in _pinned_per_layer(load_search_space(REPO / "search_spaces" / space)):
        study.enqueue_trial(params)
    run_trials(study, settings, wl, info, n_trials=1, studies_dir=tmp_path)
    (trial,) = study.get_trials(states=(TrialState.COMPLETE,))
    recipe = load_recipe(save_recipe(build_recipe(study, trial, wl.model), tmp_path / "r.yaml"))
    rebuild(wl, recipe, tmp_path / "again.acpk")
    assert (tmp_path / "again.acpk").read_bytes() == Path(trial.user_attrs["artifact"]).read_bytes()


def _pinned_per_layer(space) -> list[dict]:
    """Where a space searches per-layer settings, ask for them (the replay must carry them)."""
    params = {}
    for name, dim in space.dims.items():
        if name.endswith(".per_layer") and dim.searched:
            params[name] = True
        if (
            name.endswith(".enabled")
            and dim.searched
            and name.split(".")[0] in ("weights", "structured", "lowrank")
        ):
            params[name] = True
    return [params] if params else []
