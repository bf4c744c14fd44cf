"""optuna-dashboard wiring, through its WSGI app (no server process), and trial notes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.dashboard import dashboard_app, make_dashboard_server, study_url
from autocompress.methods.structured import StructuredPruning
from autocompress.methods.weights import WeightQuantization
from autocompress.pipeline import CompressionConfig
from autocompress.record import (
    ATTR,
    allowed_worsening,
    directions,
    feasible_front,
    normalize_info,
    objective_names,
    study_info,
    worsening,
)
from autocompress.trial_notes import (
    record_constraint,
    save_study_note,
    save_trial_note,
    study_note,
)
from tests.conftest import skip_or_fail
from tests.reliability_helpers import assert_one_line_error

CHROMIUM = Path("/usr/bin/chromium")
BASELINE = {
    "metric": 0.98,
    "test_metric": 0.97,
    "latency_ms": 2.0,
    "size_kb": 400.0,
    "packed_bytes": 400_000,
    "deployed_bytes": 420_000,
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


SETTINGS = {
    "workload": "digits",
    "max_metric_drop": BUDGET,
    "space_source": "search_spaces/tiny.yaml",
    "sampler": "tpe",
    "seed": 7,
    "early_stop": True,
    "warm_start": True,
    "target": {"device": "cpu", "threads": 1, "batch_size": 32, "runtime": "onnxruntime"},
}
HARDWARE = {"cpu": "Test CPU 9000", "logical_cores": 2, "threads": 1, "device": "cpu",
            "torch": "2.0.0", "machine": "x86_64"}  # fmt: skip


def make_study(
    tmp_path: Path,
    name: str = "dash",
    trials=TRIALS,
    *,
    record: dict | None = None,
    extra: dict[int, dict] | None = None,
    in_memory: bool = False,
) -> optuna.Study:
    """A synthetic autocompress study recorded the way the objective records a trial.

    Args:
        tmp_path: Where its database and artifacts go.
        name: The study's name.
        trials: (metric, latency ms, size KB) of each trial.
        record: Replaces parts of the study's record (``task``, ``budget``, ``baseline``, ...).
        extra: More user attributes of some trials, by trial number (``warm_start``,
            ``latency_stable``, ``latency_contended``, ...).
        in_memory: Keep the study in memory (fast, for many trials; no dashboard).
    """
    record = {
        "uid": "0123456789ab",
        "settings": SETTINGS,
        "task": {"name": "classification", "metric": "accuracy", "higher_is_better": True},
        "budget": {"absolute": BUDGET, "relative": None},
        "size": "deployed",
        "baseline": BASELINE,
        "hardware": HARDWARE,
    } | (record or {})
    info = normalize_info(record)
    # no heartbeat (open_storage's): these trials are asked and told, not optimized
    storage = None if in_memory else optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name=name, storage=storage,
                                directions=directions(info["task"]["higher_is_better"]),
                                sampler=optuna.samplers.RandomSampler(seed=0))  # fmt: skip
    study.set_user_attr(ATTR, record)
    study.set_metric_names(objective_names(info))
    folder = tmp_path / f"{name}-0123456789ab" / "artifacts"
    folder.mkdir(parents=True, exist_ok=in_memory)
    store = FileSystemArtifactStore(folder)
    for values in trials:
        trial = study.ask()
        bits = trial.suggest_categorical("weights.bits", [8, 4])
        amount = trial.suggest_float("structured.amount", 0.0, 0.5)
        config = CompressionConfig.of(structured=StructuredPruning(amount),
                                      weights=WeightQuantization(bits))  # fmt: skip
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("summary", config.describe())
        plan = {"0.weight": [8, "per_channel", 0], "3.weight": [bits, "per_channel", 0]}
        trial.set_user_attr(
            "records", {"structured": {"channels": {"0": 6, "3": 12}}, "weights": {"plan": plan}}
        )
        trial.set_user_attr("packed_bytes", int(values[2] * 500))
        trial.set_user_attr("deployed_bytes", int(values[2] * 1000))
        for key, value in (extra or {}).get(trial.number, {}).items():
            trial.set_user_attr(key, value)
        over = worsening(info, values[0]) - allowed_worsening(info)
        record_constraint(trial, "metric_budget", over)
        save_trial_note(trial, values, info, {"0": 8, "3": 16})
        if trial.number == 0:
            recipe = tmp_path / "recipe.yaml"
            recipe.write_text("format_version: 2\n")
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
        assert t.system_attrs["constraints"] == [t.constraints["metric_budget"]]
        assert t.constraints["0"] == t.constraints["metric_budget"]
        assert t.user_attrs["feasible"] is (t.number not in INFEASIBLE)
    assert best == set(FRONT)
    assert [t.number for t in feasible_front(study)] == FRONT


def test_dashboard_lists_the_study_with_our_metric_names(study, studies):
    wsgi_app = dashboard_app(study._storage, studies, studies / "dash-0123456789ab")
    status, body = get(wsgi_app, "/api/studies")
    assert status.startswith("200")
    (summary,) = json.loads(body)["study_summaries"]
    assert summary["study_name"] == "dash"
    status, body = get(wsgi_app, f"/api/studies/{study._study_id}?after=0")
    detail = json.loads(body)
    assert detail["objective_names"] == ["accuracy", "latency_ms", "size_kb"]
    assert json.loads(get(wsgi_app, "/api/meta")[1])["artifact_is_available"] is True


def test_dashboard_marks_infeasible_trials_and_serves_notes_and_artifacts(study, studies):
    wsgi_app = dashboard_app(study._storage, studies, studies / "dash-0123456789ab")
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
    assert "outside the budget (accuracy drop <= 0.01)" in note
    assert "| baseline | 0.9800 | 2.000 | 420.0 |" in note
    assert "| `0` | 6 / 8 (75%) | 8 |" in note
    (artifact,) = trials[0]["artifacts"]
    assert trials[1]["artifacts"] == []
    path = f"/artifacts/{study._study_id}/{trials[0]['trial_id']}/{artifact['artifact_id']}"
    status, body = get(wsgi_app, path)
    assert status.startswith("200") and body == b"format_version: 2\n"


def test_dashboard_best_trials_are_the_feasible_front(study, studies):
    """optuna-dashboard 0.21 computed "Best Trials" ignoring constraints: infeasible trial 1
    (accuracy 0.95, the fastest and smallest) was listed."""
    wsgi_app = dashboard_app(study._storage, studies, studies / "dash-0123456789ab")
    detail = json.loads(get(wsgi_app, f"/api/studies/{study._study_id}?after=0")[1])
    assert sorted(t["number"] for t in detail["best_trials"]) == sorted(FRONT)
    assert detail["objective_names"] == ["accuracy", "latency_ms", "size_kb"]  # axis titles


# (accuracy, latency ms, size KB) against the baseline's (0.98, 2.0 ms, 420 KB deployed); no
# trial here dominates 0, so only the baseline can keep it off the front
AGAINST_BASELINE = [
    (0.98, 1.98, 420.0),  # 0 fine-tuning only: x0.99 speed (noise), same size: off the front
    (0.98, 2.0, 420.0),  # 1 uncompressed: the baseline itself, off
    (0.975, 2.5, 430.0),  # 2 worse everywhere (still feasible): off
    (0.975, 1.5, 420.0),  # 3 25% faster: a real gain
    (0.9801, 2.1, 420.0),  # 4 more accurate (and slower than 0)
    (0.975, 2.2, 300.0),  # 5 smaller
]


def test_a_trial_the_baseline_dominates_is_not_on_the_front(tmp_path):
    study = make_study(tmp_path, "vs-baseline", AGAINST_BASELINE)
    assert all(t.user_attrs["feasible"] for t in study.get_trials())
    assert sorted(t.number for t in feasible_front(study)) == [3, 4, 5]
    wsgi_app = dashboard_app(study._storage, tmp_path)
    detail = json.loads(get(wsgi_app, f"/api/studies/{study._study_id}?after=0")[1])
    assert sorted(t["number"] for t in detail["best_trials"]) == [3, 4, 5]


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_beating_the_baseline_follows_the_metric_direction(higher_is_better):
    from autocompress.record import beats_baseline

    info = normalize_info(
        {
            "task": {"name": "t", "metric": "m", "higher_is_better": higher_is_better},
            "budget": {"absolute": 1.0, "relative": None},
            "size": "packed",
            "baseline": {"metric": 10.0, "latency_ms": 2.0, "packed_bytes": 1000},
        }
    )
    better, worse = (10.5, 9.5) if higher_is_better else (9.5, 10.5)
    assert beats_baseline(info, (better, 2.0, 1.0))
    assert not beats_baseline(info, (worse, 2.0, 1.0))
    assert not beats_baseline(info, (10.0, 2.0 * 0.98, 1.0))  # within timing noise
    assert beats_baseline(info, (10.0, 2.0 * 0.96, 1.0))
    assert beats_baseline(info, (worse, 2.0, 0.999))


def test_dashboard_serves_the_study_note_with_the_settings_in_words(study, studies):
    save_study_note(study)
    wsgi_app = dashboard_app(study._storage, studies, studies / "dash-0123456789ab")
    note = json.loads(get(wsgi_app, f"/api/studies/{study._study_id}?after=0")[1])["note"]
    assert note["body"] == study_note(study_info(study))
    body = note["body"]
    assert (
        "| target | cpu-onnxruntime, batch 32, 1 thread, on Test CPU 9000 (2 logical cores) |"
        in body
    )
    assert "| budget | accuracy drop <= 0.01 |" in body
    assert "| search space | search_spaces/tiny.yaml |" in body
    assert "| sampler | tpe |" in body and "| seed | 7 |" in body
    assert "| 0.9800 | 0.9700 | 2.000 | 420.0 |" in body  # the baseline, deployed size
    assert "{'" not in body
    save_study_note(study, study_info(study))  # a second save is a new version of the same note
    again = json.loads(get(wsgi_app, f"/api/studies/{study._study_id}?after=0")[1])["note"]
    assert again == {"version": note["version"] + 1, "body": body}


def test_study_url_points_at_the_study(study):
    assert study_url("127.0.0.1", 8080) == "http://127.0.0.1:8080/dashboard"
    assert study_url("::1", 80, study) == f"http://[::1]:80/dashboard/studies/{study._study_id}"


def test_dashboard_command_refuses_an_unknown_study(study, studies):
    url = f"sqlite:///{studies / 's.db'}"
    result = CliRunner().invoke(app, ["dashboard", "nope", "--storage", url])
    assert result.exit_code == 2
    assert "no study named 'nope'" in result.output


@pytest.mark.browser
def test_dashboard_page_shows_the_study_in_chromium(tmp_path):
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing (.ci/install-chromium installs it)",
                     "AUTOCOMPRESS_REQUIRE_BROWSER")  # fmt: skip
    study = make_study(tmp_path, name="browser-study")
    server = make_dashboard_server(dashboard_app(study._storage, tmp_path), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = study_url("127.0.0.1", server.server_port, study)
    shot = tmp_path / "dashboard.png"
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
    assert shot.stat().st_size > 10_000


def _http(url: str, method: str, body: bytes = b"") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body or None, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_dashboard_is_read_only_unless_edits_are_allowed(tmp_path):
    study = make_study(tmp_path, "victim", trials=TRIALS[:2])
    storage, study_id = study._storage, study._study_id
    trial_id = study.trials[0]._trial_id
    home = tmp_path / "victim-0123456789ab"
    folder = home / "artifacts"
    artifacts = sorted(folder.iterdir())
    server = make_dashboard_server(dashboard_app(storage, tmp_path, home), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        status, body = _http(f"{base}/api/studies/{study_id}", "DELETE", b"{}")
        assert status == 403
        assert "read-only" in json.loads(body)["reason"]
        edits = [
            ("POST", f"/api/trials/{trial_id}/tell", {"state": "Fail"}),
            ("PUT", f"/api/studies/{study_id}/{trial_id}/note", {"version": 9, "body": "x"}),
            ("POST", f"/api/studies/{study_id}/rename", {"study_name": "renamed"}),
            ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
        ]
        for method, path, payload in edits:
            status, _ = _http(base + path, method, json.dumps(payload).encode())
            assert status == 403, (method, path)
        status, body = _http(f"{base}/api/studies/{study_id}", "GET")
        assert status == 200 and len(json.loads(body)["trials"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    assert optuna.get_all_study_names(storage) == ["victim"]
    trials = optuna.load_study(study_name="victim", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert sorted(folder.iterdir()) == artifacts

    editable = dashboard_app(storage, tmp_path, home, allow_edits=True)
    status, _ = request(editable, "DELETE", f"/api/studies/{study_id}")
    assert status.startswith("204")
    assert optuna.get_all_study_names(storage) == []


def request(wsgi_app, method: str, path: str) -> tuple[str, bytes]:
    """Call a WSGI app with a body-less request; return the status line and the body."""
    environ: dict = {"PATH_INFO": path, "QUERY_STRING": "", "REQUEST_METHOD": method}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    status: list[str] = []
    body = b"".join(wsgi_app(environ, lambda s, h, exc_info=None: status.append(s)))
    return status[0], body


@pytest.mark.parametrize(
    "option, fragment",
    [
        (["--port", "70000"], "--port 70000: use 0 to 65535"),
        (["--port", "-1"], "--port -1: use 0 to 65535"),
        (["--host", "not a host"], "--host 'not a host' is not an IP address or host name"),
        (["--host", ""], "--host '' is not an IP address or host name"),
    ],
    ids=["port-high", "port-negative", "host-spaces", "host-empty"],
)
def test_dashboard_command_refuses_a_bad_address(study, studies, option, fragment):
    url = f"sqlite:///{studies / 's.db'}"
    result = CliRunner().invoke(app, ["dashboard", "dash", "--storage", url, *option])
    assert_one_line_error(result, fragment)
