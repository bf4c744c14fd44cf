"""Bad input: one line naming what is wrong and where, exit code 2, no traceback, and the
stored study untouched. Trial-level faults: the trial fails with its reason, the study goes on.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.study import (
    ATTR,
    STRUCTURED_FAILURES_LIMIT,
    Objective,
    StudySettings,
    create_or_resume,
    load_study,
    open_storage,
)
from autocompress.workers import run_worker
from autocompress.workload import load_workload
from tests.reliability_helpers import SPACE, create_study, snapshot

GOOD = "good"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A storage holding study ``good`` with one completed trial; cwd-independent paths."""
    root = tmp_path_factory.mktemp("bad-input")
    url = f"sqlite:///{root / 'studies.db'}"
    study = create_study(root, GOOD, url)
    settings = StudySettings.from_dict(study.user_attrs[ATTR]["settings"])
    wl = load_workload(settings.workload, cache_dir=None)
    objective = Objective(wl, settings, study.user_attrs[ATTR]["baseline"], root / "studies")
    run_worker(study, objective, n_trials=1)
    return root, url


def _invoke(monkeypatch, root: Path, args: list[str]):
    monkeypatch.chdir(root)
    return CliRunner().invoke(app, args)


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in " ".join(result.output.split()), result.output


SPACES = {
    "malformed-yaml": ("pruning: [none, structured\n", ["bad.yaml", "malformed YAML at line"]),
    "unknown-key": ("pruning:\n  methd: [none]\n", ["bad.yaml", "unknown key pruning.methd"]),
    "wrong-type": ("finetune:\n  epochs: [one, 2]\n", ["finetune.epochs", "expected an integer"]),
    "impossible-range": (
        "finetune:\n  lr: {low: 0.1, high: 0.01}\n",
        ["finetune.lr", "low (0.1) is greater than high (0.01)"],
    ),
    "empty-space": ("pruning:\n  method: none\n", ["bad.yaml", "the search space is empty"]),
}


@pytest.mark.parametrize("case", list(SPACES))
def test_bad_search_space(monkeypatch, store, case):
    root, url = store
    text, fragments = SPACES[case]
    (root / "bad.yaml").write_text(text)
    before = snapshot(GOOD, url)
    result = _invoke(
        monkeypatch,
        root,
        ["study", "run", "--study", "new", "--storage", url, "--space", "bad.yaml"]
        + ["--workload", "tests.tiny_workloads:tiny", "--n-trials", "1"],
    )
    _assert_one_line_error(result, *fragments)
    assert snapshot(GOOD, url) == before
    assert "new" not in optuna.get_all_study_names(open_storage(url))


WORKLOADS = {
    "unknown": ("nope", ["unknown workload 'nope'"]),
    "no-module": ("tests.no_such_module:make", ["cannot import module 'tests.no_such_module'"]),
    "no-function": ("tests.tiny_workloads:nothing", ["has no function 'nothing'"]),
    "wrong-return": (
        "tests.tiny_workloads:not_a_workload",
        ["not_a_workload() returned dict", "expected autocompress.workload.Workload"],
    ),
    "wrong-shape": ("tests.tiny_workloads:wrong_shape", ["cannot run on the validation data"]),
}


@pytest.mark.parametrize("case", list(WORKLOADS))
def test_bad_workload(monkeypatch, store, case):
    root, url = store
    ref, fragments = WORKLOADS[case]
    before = snapshot(GOOD, url)
    result = _invoke(
        monkeypatch,
        root,
        ["study", "run", "--study", "new", "--storage", url, "--space", str(SPACE)]
        + ["--workload", ref, "--n-trials", "1"],
    )
    _assert_one_line_error(result, *fragments)
    assert snapshot(GOOD, url) == before
    assert "new" not in optuna.get_all_study_names(open_storage(url))


def test_debug_shows_the_traceback(monkeypatch, store):
    root, url = store
    result = _invoke(
        monkeypatch,
        root,
        ["--debug", "study", "run", "--study", "new", "--storage", url, "--workload", "nope"]
        + ["--n-trials", "1"],
    )
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "WorkloadError"


@pytest.mark.parametrize(
    "url, fragments",
    [
        ("notadb://x/y", ["storage URL 'notadb://x/y' is not valid"]),
        ("postgresql://postgres@127.0.0.1:1/test", ["cannot reach storage"]),
        ("mysql+nodriver://u@h/db", ["is not valid"]),
    ],
    ids=["malformed", "unreachable", "unknown-driver"],
)
@pytest.mark.parametrize("command", ["status", "pareto", "worker"])
def test_bad_storage_url(monkeypatch, store, url, fragments, command):
    root, _ = store
    args = {"status": ["study", "status", GOOD], "pareto": ["pareto", GOOD]}.get(
        command, ["worker", GOOD, "--n-trials", "1"]
    )
    result = _invoke(monkeypatch, root, [*args, "--storage", url])
    _assert_one_line_error(result, *fragments)


@pytest.mark.parametrize("command", ["status", "pareto", "worker"])
def test_unknown_study_name(monkeypatch, store, command):
    root, url = store
    args = {"status": ["study", "status", "nosuch"], "pareto": ["pareto", "nosuch"]}.get(
        command, ["worker", "nosuch", "--n-trials", "1"]
    )
    before = snapshot(GOOD, url)
    result = _invoke(monkeypatch, root, [*args, "--storage", url])
    _assert_one_line_error(result, "no study named 'nosuch'", f"studies there: {GOOD}")
    assert snapshot(GOOD, url) == before


def test_worker_on_other_hardware_refuses(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = create_study(tmp_path, "hw", url)
    info = study.user_attrs[ATTR]
    study.set_user_attr(ATTR, {**info, "hardware": {**info["hardware"], "cpu": "Other CPU 9000"}})
    result = _invoke(monkeypatch, tmp_path, ["worker", "hw", "--storage", url, "--n-trials", "1"])
    _assert_one_line_error(result, "is not the one study 'hw' measured latency on", "Other CPU")
    assert snapshot("hw", url) == []
    result = _invoke(
        monkeypatch,
        tmp_path,
        ["worker", "hw", "--storage", url, "--n-trials", "1", "--allow-other-hardware"],
    )
    assert result.exit_code == 0, result.output
    assert [s for _, s, *_ in snapshot("hw", url)] == ["COMPLETE"]


def _objective_study(tmp_path: Path, workload: str) -> tuple[optuna.Study, Objective]:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    settings = StudySettings(
        workload=workload,
        space_text=SPACE.read_text(),
        space_source=str(SPACE),
        sampler="random",
        warm_start=False,
    )
    study, settings, wl, baseline = create_or_resume(
        "faults", open_storage(url), settings, studies_dir=tmp_path / "studies"
    )
    return study, Objective(wl, settings, baseline, tmp_path / "studies")


def test_untraceable_model_fails_then_structured_is_disabled(tmp_path):
    study, objective = _objective_study(tmp_path, "tests.tiny_workloads:untraceable")
    for _ in range(STRUCTURED_FAILURES_LIMIT):
        study.enqueue_trial({"pruning.method": "structured"})
    result = run_worker(study, objective, n_trials=4)
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [0, 1]
    for t in failed:
        assert t.user_attrs["fail_reason"].startswith("structured pruning failed")
        assert "cannot follow (simulated)" in t.user_attrs["fail_reason"]
    later = trials[STRUCTURED_FAILURES_LIMIT:]
    assert result.completed == 4 and len(later) == 4
    assert all(t.user_attrs["config"]["prune"]["method"] != "structured" for t in later)
    assert all("structured pruning disabled" in t.user_attrs["note"] for t in later)


def test_out_of_memory_fails_the_trial_and_the_study_goes_on(tmp_path):
    study, objective = _objective_study(tmp_path, "tests.tiny_workloads:out_of_memory")
    study.enqueue_trial({"finetune.batch_size": 64, "pruning.method": "none"})
    study.enqueue_trial({"finetune.batch_size": 16, "pruning.method": "none"})
    run_worker(study, objective, n_trials=1)
    first, second = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"].startswith("out of memory: OutOfMemoryError")
    assert second.state == TrialState.COMPLETE


def test_nan_loss_fails_trials_and_a_worker_gives_up(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    create_study(tmp_path, "nan", url, workload="tests.tiny_workloads:nan_loss")
    result = _invoke(monkeypatch, tmp_path, ["worker", "nan", "--storage", url, "--n-trials", "2"])
    _assert_one_line_error(result, "stopped after 10 failed trials in a row", "study status nan")
    trials = load_study("nan", url).get_trials(deepcopy=False)
    assert len(trials) == 10 and all(t.state == TrialState.FAIL for t in trials)
    assert all("fine-tuning loss became nan" in t.user_attrs["fail_reason"] for t in trials)
    status = _invoke(monkeypatch, tmp_path, ["study", "status", "nan", "--storage", url])
    assert "trial 9 failed: fine-tuning loss became nan" in status.output


class _Planted:
    """Unpickling this (without weights_only) would create a file: proof it never runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("content", ["garbage", "pickle"])
def test_corrupt_baseline_cache_is_retrained(tmp_path, content):
    cache = tmp_path / "baselines"
    first = load_workload("tests.tiny_workloads:trainable", cache_dir=cache)
    (path,) = cache.glob("*.pt")
    marker = tmp_path / "code-ran"
    if content == "garbage":
        path.write_bytes(b"\x00not a torch file" * 10)
    else:
        path.write_bytes(pickle.dumps({"fc1.weight": _Planted(marker)}))
    again = load_workload("tests.tiny_workloads:trainable", cache_dir=cache)
    assert not marker.exists()
    for key, value in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value), key
    assert torch.load(path, weights_only=True).keys() == first.model.state_dict().keys()
