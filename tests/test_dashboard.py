"""optuna-dashboard wiring, through its WSGI app (no server process), and trial notes."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import threading
import warnings
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.dashboard import (
    artifact_dir,
    dashboard_app,
    make_dashboard_server,
    record_constraint,
    save_trial_note,
    study_url,
    trial_note,
)
from autocompress.pipeline import CompressionConfig
from autocompress.steps.prune import PruneConfig
from autocompress.steps.quantize import QuantizeConfig
from autocompress.study import ATTR, DIRECTIONS, METRIC_NAMES, feasible_front, open_storage
from tests.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
BASELINE = {
    "accuracy": 0.98,
    "test_accuracy": 0.97,
    "latency_ms": 2.0,
    "size_kb": 400.0,
    "size_bytes": 400_000,
    "params": 10_000,
}
BUDGET = 0.01
# (accuracy, latency ms, size KB); feasible when accuracy >= 0.97
TRIALS = [
    (0.985, 1.0, 50.0),  # 0 front
    (0.95, 0.5, 20.0),  # 1 infeasible, would dominate 0 and 4 without the constraint
    (0.975, 1.5, 100.0),  # 2 feasible, dominated by 0
    (0.99, 1.8, 300.0),  # 3 front: most accurate
    (0.972, 0.8, 40.0),  # 4 front
    (0.90, 3.0, 500.0),  # 5 infeasible
]
FRONT = [3, 0, 4]
INFEASIBLE = {1, 5}


def make_study(tmp_path: Path, name: str = "dash", trials=TRIALS) -> optuna.Study:
    """A synthetic autocompress study recorded the way the objective records a trial."""
    # no heartbeat (open_storage's): these trials are asked and told, not optimized
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=DIRECTIONS,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.set_metric_names(METRIC_NAMES)
    study.set_user_attr(
        ATTR,
        {
            "settings": {
                "workload": "digits",
                "max_accuracy_drop": BUDGET,
                "target": {"device": "cpu", "threads": 1, "batch_size": 32},
            },
            "baseline": BASELINE,
            "hardware": {"cpu": "test cpu"},
        },
    )
    store = FileSystemArtifactStore(artifact_dir(tmp_path, name))
    artifact_dir(tmp_path, name).mkdir(parents=True)
    for values in trials:
        trial = study.ask()
        bits = trial.suggest_categorical("quantization.weight_bits", [32, 8, 4])
        amount = trial.suggest_float("pruning.amount", 0.0, 0.5)
        config = CompressionConfig(
            prune=PruneConfig(method="structured", amount=amount),
            quantize=QuantizeConfig(weight_bits=bits),
        )
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("summary", config.describe())
        trial.set_user_attr("channels", {"0": 6, "3": 12})
        trial.set_user_attr("weight_bits", {"0.weight": 8, "3.weight": bits, "7.weight": 8})
        record_constraint(trial, "accuracy_drop", BASELINE["accuracy"] - values[0] - BUDGET)
        save_trial_note(trial, values, BASELINE, BUDGET)
        if trial.number == 0:
            recipe = tmp_path / "recipe.yaml"
            recipe.write_text("format_version: 1\n")
            upload_artifact(artifact_store=store, file_path=str(recipe), study_or_trial=trial)
        study.tell(trial, values)
    return study


def get(wsgi_app, path: str) -> tuple[str, bytes]:
    """Call a WSGI app with a GET request; return the status line and the body."""
    path, _, query = path.partition("?")
    environ: dict = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    status: list[str] = []
    body = b"".join(wsgi_app(environ, lambda s, h, exc_info=None: status.append(s)))
    return status[0], body


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The directory of the module's synthetic study: its database and artifacts."""
    return tmp_path_factory.mktemp("studies")


@pytest.fixture(scope="module")
def study(studies):
    return make_study(studies)


def test_constraint_is_recorded_in_both_forms_and_feasibility_agrees(study):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Overwrite an old format constraint" would fail here
        trials = study.get_trials()
        best = {t.number for t in study.best_trials}
    for t in trials:
        assert t.system_attrs["constraints"] == [t.constraints["accuracy_drop"]]
        assert t.constraints["0"] == t.constraints["accuracy_drop"]
        assert t.user_attrs["feasible"] is (t.number not in INFEASIBLE)
    assert best == set(FRONT)
    assert [t.number for t in feasible_front(study)] == FRONT


def test_dashboard_lists_the_study_with_our_metric_names(study, studies):
    wsgi_app = dashboard_app(study._storage, studies, "dash")
    status, body = get(wsgi_app, "/api/studies")
    assert status.startswith("200")
    (summary,) = json.loads(body)["study_summaries"]
    assert summary["study_name"] == "dash"
    status, body = get(wsgi_app, f"/api/studies/{study._study_id}?after=0")
    detail = json.loads(body)
    assert detail["objective_names"] == METRIC_NAMES
    assert json.loads(get(wsgi_app, "/api/meta")[1])["artifact_is_available"] is True


def test_dashboard_marks_infeasible_trials_and_serves_notes_and_artifacts(study, studies):
    wsgi_app = dashboard_app(study._storage, studies, "dash")
    detail = json.loads(get(wsgi_app, f"/api/studies/{study._study_id}?after=0")[1])
    trials = {t["number"]: t for t in detail["trials"]}
    assert len(trials) == len(TRIALS)
    for number, t in trials.items():
        # the dashboard greys out a trial when any of these is > 0
        assert (max(t["constraints"]) > 0) is (number in INFEASIBLE)
        feasible = next(a for a in t["user_attrs"] if a["key"] == "feasible")
        assert feasible["value"] == str(number not in INFEASIBLE)
        assert ("INFEASIBLE" in t["note"]["body"]) is (number in INFEASIBLE)
    note = trials[1]["note"]["body"]
    assert "accuracy drop 3.00 pt > budget 1.00 pt" in note
    assert "| baseline | 0.9800 | 2.000 | 400.0 |" in note
    assert "`0` | 6 | 8 |" in note
    (artifact,) = trials[0]["artifacts"]
    assert trials[1]["artifacts"] == []
    path = f"/artifacts/{study._study_id}/{trials[0]['trial_id']}/{artifact['artifact_id']}"
    status, body = get(wsgi_app, path)
    assert status.startswith("200") and body == b"format_version: 1\n"


def test_note_describes_layers_against_the_baseline():
    config = CompressionConfig(
        prune=PruneConfig(method="structured", amount=0.25),
        quantize=QuantizeConfig(weight_bits=4, int8_activations=True),
    )
    note = trial_note(
        7,
        {
            "config": config.to_dict(),
            "summary": config.describe(),
            "channels": {"0": 6, "3": 12},
            "weight_bits": {"0.weight": 8, "3.weight": 4},
            "sparsity": 0.0,
            "params": 5_000,
        },
        (0.975, 4.0, 100.0),
        BASELINE,
        BUDGET,
        {"0": 8, "3": 16},
    )
    assert note.startswith("## Trial 7: feasible\n")
    assert "Structured pruning removes 25% of each layer's channels." in note
    assert "int8 activations" in note
    assert "| `0` | 6 / 8 (75%) | 8 |" in note
    assert "| `3` | 12 / 16 (75%) | 4 |" in note
    assert "0.9750 (-0.50 pt)" in note and "2.00x slower" in note and "4.00x smaller" in note
    assert "params 5,000 (-50.0%)" in note


def test_study_url_points_at_the_study(study):
    assert study_url("127.0.0.1", 8080) == "http://127.0.0.1:8080/dashboard"
    assert study_url("::1", 80, study) == f"http://[::1]:80/dashboard/studies/{study._study_id}"


def test_dashboard_command_refuses_an_unknown_study(study, studies):
    url = f"sqlite:///{studies / 's.db'}"
    result = CliRunner().invoke(app, ["dashboard", "nope", "--storage", url])
    assert result.exit_code == 2
    assert "no study named 'nope'" in result.output


def test_objective_records_note_and_dashboard_constraints(digits, tmp_path):
    from autocompress.study import StudySettings, Target, create_or_resume, run_study
    from tests.conftest import TINY_SPACE

    settings = StudySettings(
        space_text=TINY_SPACE.read_text(), target=Target(batch_size=16), seed=5
    )
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, used, wl, base = create_or_resume(
        "real", storage, settings, studies_dir=tmp_path, workload=digits
    )
    run_study(study, used, wl, base, n_trials=1, studies_dir=tmp_path)
    (t,) = study.get_trials(states=(TrialState.COMPLETE,))
    assert t.system_attrs["constraints"] == [t.constraints["accuracy_drop"]]
    assert t.user_attrs["feasible"] is (t.constraints["accuracy_drop"] <= 0)
    assert set(t.user_attrs["weight_bits"]) == {f"{n}.weight" for n in ("0", "3", "7", "12", "14")}
    detail = json.loads(get(dashboard_app(storage, tmp_path), f"/api/studies/{study._study_id}")[1])
    body = detail["trials"][0]["note"]["body"]
    assert body.startswith("## Trial 0: ")
    assert re.search(r"\| `0` \| \d+ / 32 \(\d+%\) \| (8|32) \|", body), body


@pytest.mark.browser
def test_dashboard_page_shows_the_study_in_chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (.ci/install-chromium installs it)")
    study = make_study(tmp_path, name="browser-study")
    server = make_dashboard_server(dashboard_app(study._storage, tmp_path), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = study_url("127.0.0.1", server.server_port, study)
    shot = REPO / "studies" / "screenshots" / "dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    common = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-quic", "--no-first-run",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        "--window-size=1280,900", "--virtual-time-budget=10000",
    ]  # fmt: skip
    try:
        dom = subprocess.run(
            [*common, f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        subprocess.run(
            [*common, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", url],
            capture_output=True, timeout=120,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(tmp_path / "profile1", ignore_errors=True)
    assert "browser-study" in dom
    assert "accuracy" in dom and "latency_ms" in dom
    assert shot.stat().st_size > 10_000  # kept at studies/screenshots/dashboard.png
