"""The Python API as users call it: create, run, read the front, export, apply, resume from the
CLI and back."""

import math

import pytest
import torch
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

import autocompress as ac
from autocompress.cli import app
from autocompress.errors import AutocompressError, WorkloadError
from autocompress.record import is_feasible
from autocompress.workload import PYTHON_OBJECT
from tests.conftest import TINY_SPACE, tiny_workload

runner = CliRunner()


def _create(tmp_path, name="api", workload=tiny_workload, **kw):
    return ac.create_study(
        name,
        workload=workload,
        storage=f"sqlite:///{tmp_path / 's.db'}",
        space=TINY_SPACE,
        studies_dir=tmp_path / "studies",
        batch_size=16,
        max_metric_drop=0.05,
        **kw,
    )


def test_public_names_are_importable_from_the_package():
    assert {"create_study", "load_study", "Study", "FrontTrial", "Workload", "apply_recipe"} <= set(
        ac.__all__
    )
    assert all(getattr(ac, name) is not None for name in ac.__all__)


def test_create_run_front_export_apply_then_resume_from_the_cli(tmp_path):
    study = _create(tmp_path)
    settings = study.info["settings"]
    # a module-level function is recorded as module:function, so the CLI can rebuild it
    assert settings["workload"] == "tests.conftest:tiny_workload"
    seen = []
    result = study.run(n_trials=2, callbacks=[lambda s, t: seen.append(t.number)])
    assert result.completed == 2 and seen == [0, 1]

    front = study.front()
    trials = {t.number: t for t in study.optuna.get_trials(states=(TrialState.COMPLETE,))}
    # the front's records are the study's own feasible, non-dominated trials, with their values
    assert front and all(is_feasible(trials[f.number]) for f in front)
    for record in front:
        value, latency, size = trials[record.number].values
        assert (record.metric, record.latency_ms, record.size_kb) == (value, latency, size)
        base = study.info["baseline"]
        assert record.speedup == pytest.approx(base["latency_ms"] / latency)
        assert record.smaller == pytest.approx(base["deployed_bytes"] / 1000 / size)
    assert study.front_table()[0]["trial"] == "baseline"

    out = tmp_path / "best.yaml"
    recipe = study.export(out, trial=front[0].number)
    doc = yaml.safe_load(out.read_text())
    assert doc["source"]["trial"] == front[0].number == recipe.source["trial"]

    # apply the exported recipe to the same baseline, from Python
    workload = study._loaded_workload()
    small = ac.apply_recipe(workload.model, out, (workload.train.x, workload.train.y))
    assert isinstance(small, torch.nn.Module)

    # the CLI resumes the same study (the reference is importable from here) and reads it
    url = study.storage
    # (a study's code workload is imported only when the user names it: --workload)
    cli = runner.invoke(
        app,
        ["study", "run", "--study", "api", "--storage", url, "--n-trials", "1",
         "--workload", "tests.conftest:tiny_workload"],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    again = ac.load_study("api", url, studies_dir=tmp_path / "studies")
    assert len(again.optuna.get_trials(states=(TrialState.COMPLETE,))) == 3


def test_a_workload_object_study_says_the_cli_cannot_resume_it(tmp_path):
    made = tiny_workload()
    study = _create(tmp_path, name="obj", workload=made)
    assert study.info["settings"]["workload"] == PYTHON_OBJECT
    cli = runner.invoke(
        app, ["study", "run", "--study", "obj", "--storage", study.storage, "--n-trials", "1"]
    )
    assert cli.exit_code == 2
    assert "given as a Python object" in cli.output and "load_study" in cli.output
    # without the object, Python says the same; with it, the study resumes
    bare = ac.load_study("obj", study.storage, studies_dir=tmp_path / "studies")
    with pytest.raises(WorkloadError, match="Workload object"):
        bare.run(n_trials=1)
    resumed = ac.load_study("obj", study.storage, workload=made, studies_dir=tmp_path / "studies")
    assert resumed.run(n_trials=1).completed == 1


def test_limits_and_budgets_are_validated_as_in_the_cli(tmp_path):
    with pytest.raises(AutocompressError, match=r"^--target 'cpu-nope'"):
        _create(tmp_path, target="cpu-nope")
    with pytest.raises(AutocompressError, match=r"^--max-latency-ms -1"):
        _create(tmp_path, max_latency_ms=-1.0)
    study = _create(tmp_path, max_size_kb=1e9)
    with pytest.raises(AutocompressError, match="give --n-trials N, --total N or --timeout S"):
        study.run()
    # a resume that differs from the study's settings is refused with the difference named
    with pytest.raises(AutocompressError, match=r"--max-size-kb \(study: 1000000000.0\)"):
        _create(tmp_path, max_size_kb=5.0)


def test_front_records_keep_lower_is_better_metrics_as_they_are(tmp_path):
    from autocompress.api import _front_record

    info = {
        "baseline": {"latency_ms": 2.0, "deployed_bytes": 4000, "test_metric": 10.0,
                     "metric": 10.0},
        "size": "deployed",
        "task": {"higher_is_better": False, "metric": "perplexity"},
        "budget": {"absolute": None, "relative": 0.05},
    }  # fmt: skip

    class Trial:
        number, values, params = 7, [10.2, 1.0, 2.0], {"x": 1}
        user_attrs = {"test_metric": 11.0, "summary": "s"}

    record = _front_record(info, Trial())
    assert (record.metric, record.speedup, record.smaller) == (10.2, 2.0, 2.0)
    # test perplexity 11.0 is 1.0 above the baseline's: over the 5% (0.5) budget
    assert record.test_metric == 11.0 and "test over budget" in record.flags
    assert not math.isnan(record.smaller)


def test_arguments_left_out_keep_the_study_s_values_on_resume(tmp_path):
    study = _create(tmp_path, target="cpu-onnxruntime", seed=5)
    again = ac.create_study(
        "api", storage=study.storage, studies_dir=tmp_path / "studies",
        workload="tests.conftest:tiny_workload",
    )  # fmt: skip
    settings = again.info["settings"]
    assert settings["target"]["runtime"] == "onnxruntime" and settings["seed"] == 5
    with pytest.raises(AutocompressError, match=r"--target \(study: cpu-onnxruntime\)"):
        ac.create_study("api", storage=study.storage, target="cpu-torch",
                        studies_dir=tmp_path / "studies")  # fmt: skip
