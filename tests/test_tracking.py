"""Experiment tracking: Optuna callbacks reach the trial loop, and ``--mlflow`` logs each trial
(parameters, named objectives, feasibility, reasons, files) as an MLflow run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.errors import AutocompressError
from autocompress.recipe import RecipeArtifacts
from autocompress.study import (
    StudySettings,
    artifact_dir,
    create_or_resume,
    open_storage,
    run_trials,
)
from autocompress.tracking import MLflowTracker, trial_log
from tests.test_dashboard import INFEASIBLE, TRIALS, make_study

runner = CliRunner()

# Fine-tuning on out_of_memory's model raises at batch 64: a failed trial, known in advance.
SPACE = """
format_version: 2
weights:
  enabled: [false, true]
  bits: [8, 4]
finetune:
  enabled: [false, true]
  epochs: 1
  batch_size: 64
  lr: 1.0e-3
"""
FAILING = {"weights.enabled": True, "weights.bits": 4, "finetune.enabled": True}
COMPLETING = {"weights.enabled": True, "weights.bits": 8, "finetune.enabled": False}


def _need_mlflow() -> None:
    pytest.importorskip("mlflow", reason="mlflow is not installed (the tracking extra)")


def _client(uri: str):
    _need_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture
def file_store(tmp_path, monkeypatch):
    """A local MLflow file store (MLflow 3.7+ refuses one unless told it is wanted)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file://{tmp_path / 'mlruns'}"


def test_trial_log_names_objectives_feasibility_reasons_and_files(tmp_path):
    study = make_study(tmp_path)
    trial = study.ask({"weights.bits": optuna.distributions.CategoricalDistribution([8, 4])})
    trial.set_user_attr("fail_reason", "ValueError: bad shape")
    study.tell(trial, state=TrialState.FAIL)
    study.tell(study.ask(), state=TrialState.PRUNED)
    trials = study.get_trials()
    info = study.user_attrs["autocompress"]
    folder = tmp_path / "files"
    (folder / "recipes").mkdir(parents=True)
    for name in ("trial-3.acpk", "trial-3.onnx", "trial-30.onnx", "recipes/trial-3.yaml"):
        (folder / name).write_text("x")

    for t, values in zip(trials, TRIALS, strict=False):
        log = trial_log("dash", info, t, folder)
        assert log.params == {k: str(v) for k, v in t.params.items()}
        assert {k: log.metrics[k] for k in ("accuracy", "latency_ms", "size_kb")} == dict(
            zip(("accuracy", "latency_ms", "size_kb"), values, strict=True)
        )
        assert log.tags["state"] == "COMPLETE"
        assert log.tags["feasible"] == ("false" if t.number in INFEASIBLE else "true")
        over = log.metrics["constraint.metric_budget"]
        assert (over > 0) == (t.number in INFEASIBLE)
        assert log.tags["optuna.study"] == "dash"
        assert log.tags["optuna.trial_number"] == str(t.number)
    three = trial_log("dash", info, trials[3], folder)
    assert three.tags["artifact.files"] == f"{folder / 'trial-3.acpk'}, {folder / 'trial-3.onnx'}"
    assert three.recipe == folder / "recipes" / "trial-3.yaml"
    assert three.tags["artifact.recipe"] == str(three.recipe)
    assert "artifact.files" not in trial_log("dash", info, trials[1], folder).tags

    failed, pruned = trials[-2], trials[-1]
    log = trial_log("dash", info, failed, folder)
    assert log.tags["state"] == "FAIL" and log.tags["feasible"] == "false"
    assert log.tags["fail_reason"] == "ValueError: bad shape"
    assert log.params == {"weights.bits": str(failed.params["weights.bits"])}
    assert not {"accuracy", "latency_ms", "size_kb"} & set(log.metrics)
    log = trial_log("dash", info, pruned, None)
    assert log.tags["state"] == "PRUNED" and "fail_reason" not in log.tags
    assert not any(k.startswith("artifact.") for k in log.tags)


def test_run_trials_calls_every_callback_after_each_trial_in_its_final_state(tmp_path, file_store):
    settings = StudySettings(
        workload="tests.tiny_workloads:out_of_memory", space_text=SPACE, space_source="t.yaml",
        sampler="random", seed=1, warm_start=False,
    )  # fmt: skip
    study, used, wl, info = create_or_resume(
        "track", open_storage(f"sqlite:///{tmp_path / 's.db'}"), settings, studies_dir=tmp_path
    )
    study.enqueue_trial(FAILING)
    study.enqueue_trial(COMPLETING)
    seen: list[tuple[int, TrialState]] = []
    callbacks = [lambda s, t: seen.append((t.number, t.state))]
    tracked = importlib.util.find_spec("mlflow") is not None
    if tracked:
        callbacks.append(MLflowTracker(file_store, "track", studies_dir=tmp_path))
    result = run_trials(
        study, used, wl, info, n_trials=1, studies_dir=tmp_path, callbacks=callbacks,
        wrap=lambda objective: RecipeArtifacts(
            objective, wl.model, artifact_dir(tmp_path, study)
        ),
    )  # fmt: skip
    assert (result.completed, result.failed) == (1, 1)
    assert seen == [(0, TrialState.FAIL), (1, TrialState.COMPLETE)]
    if not tracked:
        pytest.skip("mlflow is not installed (the tracking extra): the MLflow half not checked")

    client = _client(file_store)
    experiment = client.get_experiment_by_name("track")
    assert experiment.tags["autocompress.objectives"] == "accuracy, latency_ms, size_kb"
    assert float(experiment.tags["autocompress.baseline.metric"]) == info["baseline"]["metric"]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"trial 0", "trial 1"}
    trials = study.get_trials()

    failed = runs["trial 0"]
    assert failed.info.status == "FAILED"
    assert failed.data.params == {k: str(v) for k, v in FAILING.items()}
    assert failed.data.tags["state"] == "FAIL" and failed.data.tags["feasible"] == "false"
    assert failed.data.tags["fail_reason"] == trials[0].user_attrs["fail_reason"]
    assert "out of memory" in failed.data.tags["fail_reason"]
    assert "accuracy" not in failed.data.metrics

    done = runs["trial 1"]
    assert done.info.status == "FINISHED"
    assert done.data.params == {k: str(v) for k, v in COMPLETING.items()}
    values = trials[1].values
    assert [done.data.metrics[k] for k in ("accuracy", "latency_ms", "size_kb")] == values
    assert done.data.metrics["test_accuracy"] == trials[1].user_attrs["test_metric"]
    assert done.data.metrics["packed_bytes"] == trials[1].user_attrs["packed_bytes"]
    assert done.data.tags["state"] == "COMPLETE" and done.data.tags["feasible"] == "true"
    assert done.data.metrics["constraint.metric_budget"] <= 0
    assert done.data.tags["summary"] == trials[1].user_attrs["summary"]
    packed = Path(done.data.tags["artifact.packed"])
    assert packed.is_absolute() and packed.is_file() and packed.name == "trial-1.acpk"
    assert str(packed) in done.data.tags["artifact.files"]
    recipe = Path(done.data.tags["artifact.recipe"])
    assert recipe.is_file() and recipe.name == "trial-1.yaml"
    uploaded = [a.path for a in client.list_artifacts(done.info.run_id, "recipe")]
    assert uploaded == ["recipe/trial-1.yaml"]


def test_a_trial_that_cannot_be_logged_is_reported_and_the_study_goes_on(tmp_path, file_store):
    _need_mlflow()
    lines: list[str] = []
    tracker = MLflowTracker(file_store, "dash", studies_dir=tmp_path, on_error=lines.append)
    tracker.client.create_run = None  # the server went away
    study = make_study(tmp_path)
    tracker(study, study.get_trials()[0])
    assert len(lines) == 1 and lines[0].startswith("trial 0 was not logged to MLflow (TypeError")


def test_without_mlflow_the_option_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(AutocompressError, match=r"autocompress\[tracking\]"):
        MLflowTracker("file:///nowhere", "x")
    for verb in (["study", "run", "--study", "x", "--n-trials", "1"],
                 ["worker", "x", "--n-trials", "1"], ["demo"]):  # fmt: skip
        result = runner.invoke(app, [*verb, "--mlflow", "sqlite:///m.db"])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            "error: --mlflow sqlite:///m.db: MLflow is not installed; install it with pip "
            "install 'autocompress[tracking]'"
        ]
    assert not (tmp_path / "studies").exists()  # refused before any work


@pytest.mark.parametrize("uri", ["nosuch://x", "file:///tmp/refused-file-store"])
def test_a_store_mlflow_refuses_is_one_line_before_any_work(tmp_path, monkeypatch, uri):
    _need_mlflow()
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # 3.7+ refuses file stores
    run = ["study", "run", "--study", "x", "--n-trials", "1", "--mlflow", uri]
    result = runner.invoke(app, run)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --mlflow {uri}: cannot open")
    assert "MLFLOW_ALLOW_FILE_STORE=true" in lines[0]
    assert not (tmp_path / "studies").exists()


def test_study_run_logs_to_mlflow(tmp_path, file_store):
    client = _client(file_store)
    result = runner.invoke(
        app,
        ["study", "run", "--study", "m", "--workload", "tests.tiny_workloads:tiny", "--space",
         str(Path(__file__).parent.parent / "search_spaces" / "tiny.yaml"), "--n-trials", "1",
         "--no-warm-start", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--mlflow",
         file_store],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"logging trials to MLflow at {file_store}, experiment 'm'" in result.output
    experiment = client.get_experiment_by_name("m")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) >= 1 and {r.data.tags["optuna.study"] for r in runs} == {"m"}
    assert any(r.data.tags["state"] == "COMPLETE" for r in runs)
