"""Bad input: one line naming what is wrong and where, exit code 2, no traceback, and the
stored study untouched. Trial-level faults: the trial fails with its reason, the study goes on.
"""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.errors import AutocompressError
from autocompress.objective import FAILURES_BEFORE_WITHDRAWAL, Objective
from autocompress.record import ATTR, study_info
from autocompress.study import StudySettings, create_or_resume, load_study, open_storage
from autocompress.workers import run_worker
from autocompress.workload import load_workload
from tests.reliability_helpers import SPACE, create_study, snapshot
from tests.reliability_helpers import assert_one_line_error as _assert_one_line_error

GOOD = "good"
TINY = "tests.tiny_workloads:tiny"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A storage holding study ``good`` with one completed trial; cwd-independent paths."""
    root = tmp_path_factory.mktemp("bad-input")
    url = f"sqlite:///{root / 'studies.db'}"
    study = create_study(root, GOOD, url)
    info = study_info(study)
    settings = StudySettings.from_dict(info["settings"])
    wl = load_workload(settings.workload, cache_dir=None)
    objective = Objective(wl, settings, info, root / "studies")
    run_worker(study, objective, n_trials=1)
    return root, url


def _invoke(monkeypatch, root: Path, args: list[str]):
    monkeypatch.chdir(root)
    return CliRunner().invoke(app, args)


SPACES = {
    "malformed-yaml": ("structured: [none, structured\n", ["bad.yaml", "malformed YAML at line"]),
    "unknown-key": ("structured:\n  methd: [none]\n", ["bad.yaml", "unknown key structured.methd"]),
    "wrong-type": ("finetune:\n  epochs: [one, 2]\n", ["finetune.epochs", "expected an integer"]),
    "impossible-range": (
        "finetune:\n  lr: {low: 0.1, high: 0.01}\n",
        ["finetune.lr", "low (0.1) is greater than high (0.01)"],
    ),
    "empty-space": ("structured:\n  enabled: false\n", ["bad.yaml", "the search space is empty"]),
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
    args = [
        "study",
        "run",
        "--study",
        "new",
        "--storage",
        url,
        "--workload",
        "nope",
        "--n-trials",
        "1",
    ]
    result = _invoke(monkeypatch, root, ["--debug", *args])
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "WorkloadError"
    import traceback

    shown = "".join(traceback.format_exception(result.exception))
    assert "Traceback" in shown and "load_workload" in shown  # the whole stack, for a bug report
    plain = _invoke(monkeypatch, root, args)
    assert "Traceback" not in plain.output and plain.exception.__class__.__name__ == "SystemExit"


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
    args = ["worker", "hw", "--storage", url, "--n-trials", "1", "--workload", TINY]
    result = _invoke(monkeypatch, tmp_path, args)
    _assert_one_line_error(result, "is not the one study 'hw' measured latency on", "Other CPU")
    assert snapshot("hw", url) == []
    result = _invoke(
        monkeypatch,
        tmp_path,
        [*args, "--allow-other-hardware"],
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
    study, settings, wl, info = create_or_resume(
        "faults", open_storage(url), settings, studies_dir=tmp_path / "studies"
    )
    return study, Objective(wl, settings, info, tmp_path / "studies")


def test_untraceable_model_fails_then_structured_is_withdrawn(tmp_path):
    study, objective = _objective_study(tmp_path, "tests.tiny_workloads:untraceable")
    for _ in range(FAILURES_BEFORE_WITHDRAWAL):
        study.enqueue_trial({"structured.enabled": True})
    result = run_worker(study, objective, n_trials=4)
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [0, 1]
    for t in failed:
        assert t.user_attrs["fail_reason"].startswith("structured failed: TypeError")
        assert "cannot follow (simulated)" in t.user_attrs["fail_reason"]
        assert t.user_attrs["failed_method"] == "structured"
    later = trials[FAILURES_BEFORE_WITHDRAWAL:]
    assert result.completed == 4 and len(later) == 4
    assert all("structured" not in t.user_attrs["config"]["methods"] for t in later)
    assert all("no longer offered" in t.user_attrs["note"] for t in later)


def _cut_attention_width(self, model, ctx):
    """What torch-pruning did to a ViT whose blocks it did not know: 3 of the 16 residual
    channels cut, nn.MultiheadAttention's width with them (13, for 4 heads)."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=ctx.example_input)
    graph.get_pruning_group(model.embed, tp.prune_linear_out_channels, idxs=[0, 1, 2]).prune()


def test_a_method_that_breaks_the_model_is_blamed_not_fine_tuning(tmp_path, monkeypatch):
    """The model a method leaves is checked before the next step: the failure (which would
    surface in fine-tuning's first batch) is blamed on the method, and only it is withdrawn."""
    from autocompress.methods.structured import StructuredPruning
    from autocompress.objective import withdrawn_methods

    monkeypatch.setattr(StructuredPruning, "apply", _cut_attention_width)
    study, objective = _objective_study(tmp_path, "tests.tiny_workloads:head_first_vit")
    for _ in range(FAILURES_BEFORE_WITHDRAWAL):
        study.enqueue_trial({"structured.enabled": True})
    run_worker(study, objective, n_trials=2)
    trials = study.get_trials(deepcopy=False)
    failed = trials[:FAILURES_BEFORE_WITHDRAWAL]
    for t in failed:
        assert t.state == TrialState.FAIL
        assert t.user_attrs["failed_method"] == "structured"
        assert t.user_attrs["fail_reason"].startswith(
            "structured left a model that does not run: attention blocks.0.attn: embed_dim 13"
        )
    assert set(withdrawn_methods(study)) == {"structured"}
    later = trials[FAILURES_BEFORE_WITHDRAWAL:]
    assert len(later) == 2 and all(t.state == TrialState.COMPLETE for t in later)
    assert all("finetune" in t.user_attrs["config"]["methods"] for t in later)


def test_structured_pruning_runs_on_a_head_first_vit(tmp_path):
    study, objective = _objective_study(tmp_path, "tests.tiny_workloads:head_first_vit")
    for amount in (0.3, 0.45):  # 16 x 0.7 = 11, 16 x 0.55 = 8: where the width was cut
        study.enqueue_trial({"structured.enabled": True, "structured.amount": amount})
    run_worker(study, objective, n_trials=2)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        channels = t.user_attrs["records"]["structured"]["channels"]
        assert channels["embed"] == 16 and channels["blocks.0.attn.out_proj"] == 16
        assert channels["blocks.0.mlp.0"] < 32


def test_out_of_memory_fails_the_trial_and_the_study_goes_on(tmp_path):
    study, objective = _objective_study(tmp_path, "tests.tiny_workloads:out_of_memory")
    study.enqueue_trial({"finetune.batch_size": 64, "structured.enabled": False})
    study.enqueue_trial({"finetune.batch_size": 16, "structured.enabled": False})
    run_worker(study, objective, n_trials=1)
    first, second = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"].startswith("out of memory in finetune: OutOfMemoryError")
    assert second.state == TrialState.COMPLETE


def test_nan_loss_fails_trials_and_a_worker_gives_up(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    create_study(tmp_path, "nan", url, workload="tests.tiny_workloads:nan_loss")
    args = ["worker", "nan", "--storage", url, "--n-trials", "2"]
    result = _invoke(monkeypatch, tmp_path, [*args, "--workload", "tests.tiny_workloads:nan_loss"])
    _assert_one_line_error(result, "did not complete in a row", "study status nan")
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


CORES = os.cpu_count() or 1
RUN = ["study", "run", "--study", "new", "--workload", "tests.tiny_workloads:tiny"]
NUMBERS = {
    "n-trials-0": (RUN + ["--n-trials", "0"], "--n-trials 0: use 1 or more"),
    "n-trials-negative": (RUN + ["--n-trials", "-3"], "--n-trials -3: use 1 or more"),
    "timeout-0": (RUN + ["--timeout", "0"], "--timeout 0.0: use a positive number of seconds"),
    "timeout-negative": (RUN + ["--timeout", "-5"], "--timeout -5.0: use a positive number"),
    "timeout-nan": (RUN + ["--timeout", "nan"], "--timeout nan: use a positive number"),
    "timeout-inf": (RUN + ["--timeout", "inf"], "--timeout inf: use a positive number"),
    "seed-negative": (RUN + ["--n-trials", "1", "--seed", "-1"], "--seed -1: use a whole"),
    "seed-2**32": (RUN + ["--n-trials", "1", "--seed", str(2**32)], "from 0 to 4294967295"),
    "threads-0": (RUN + ["--n-trials", "1", "--threads", "0"], f"has {CORES} cores; use 1 to"),
    "threads-too-many": (
        RUN + ["--n-trials", "1", "--threads", str(CORES + 1)],
        f"--threads {CORES + 1}: this machine has {CORES} cores; use 1 to {CORES}",
    ),
    "batch-size-0": (RUN + ["--n-trials", "1", "--batch-size", "0"], "--batch-size 0: use 1"),
    "batch-size-huge": (
        RUN + ["--n-trials", "1", "--batch-size", "100000"],
        "--batch-size 100000: use 1 to 4096",
    ),
    "accuracy-drop-negative": (
        RUN + ["--n-trials", "1", "--max-accuracy-drop", "-1"],
        "--max-accuracy-drop -1.0: use a finite number >= 0",
    ),
    "worker-n-trials-0": (["worker", "good", "--n-trials", "0"], "--n-trials 0: use 1 or more"),
    "worker-timeout-nan": (["worker", "good", "--timeout", "nan"], "--timeout nan: use a"),
    "demo-total-0": (["demo", "--total", "0"], "--total 0: use 1 or more"),
    "demo-threads-too-many": (["demo", "--threads", str(CORES + 1)], f"has {CORES} cores"),
}


@pytest.mark.parametrize("case", list(NUMBERS))
def test_impossible_numbers_are_refused_before_anything_is_written(monkeypatch, tmp_path, case):
    args, fragment = NUMBERS[case]
    db = tmp_path / "studies.db"
    result = _invoke(monkeypatch, tmp_path, [*args, "--storage", f"sqlite:///{db}"])
    _assert_one_line_error(result, fragment)
    assert list(tmp_path.iterdir()) == []  # no database, no study, no baseline cache


OUT_VERBS = {
    "report": (["report", GOOD], "report"),
    "export": (["export", GOOD, "--trial", "0", "--workload", TINY], "recipe"),
}


def _out_directory(tmp_path: Path, make_read_only) -> tuple[Path, str]:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder, "it is a directory; give a file path with --out"


def _out_dev_full(tmp_path: Path, make_read_only) -> tuple[Path, str]:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    return Path("/dev/full"), "No space left on device; choose another --out"


def _out_read_only_folder(tmp_path: Path, make_read_only) -> tuple[Path, str]:
    locked = tmp_path / "locked"
    locked.mkdir()
    make_read_only(locked)
    return locked / "missing" / "out.file", "; choose another --out"


OUTS = {
    "directory": _out_directory,
    "dev-full": _out_dev_full,
    "read-only-folder": _out_read_only_folder,
}


@pytest.mark.parametrize("where", list(OUTS))
@pytest.mark.parametrize("verb", list(OUT_VERBS))
def test_an_output_that_cannot_be_written_is_one_line(
    monkeypatch, store, tmp_path, make_read_only, verb, where
):
    root, url = store
    args, what = OUT_VERBS[verb]
    out, fragment = OUTS[where](tmp_path, make_read_only)
    result = _invoke(monkeypatch, root, [*args, "--storage", url, "--out", str(out)])
    _assert_one_line_error(result, f"cannot write {what} to {out}", fragment)
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary left behind


@pytest.mark.parametrize("verb", list(OUT_VERBS))
def test_an_output_replaces_the_old_file_whole(monkeypatch, store, tmp_path, verb):
    root, url = store
    args, _ = OUT_VERBS[verb]
    out = tmp_path / "sub" / "out.file"
    out.parent.mkdir()
    out.write_text("old")
    out.chmod(0o640)
    result = _invoke(monkeypatch, root, [*args, "--storage", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() != "old" and len(out.read_text()) > 100
    assert [p.name for p in out.parent.iterdir()] == ["out.file"]  # the temporary is gone
    assert out.stat().st_mode & 0o777 == 0o640


# --- The study record is input: validated before use, never a path, never an import ---------


def _tampered(store, tmp_path: Path, change) -> str:
    """A copy of the ``good`` study's database whose record ``change(record)`` edited, as
    anyone who can write a shared database could."""
    root, url = store
    db = tmp_path / "tampered.db"
    db.write_bytes((root / "studies.db").read_bytes())
    copy = f"sqlite:///{db}"
    study = optuna.load_study(study_name=GOOD, storage=copy)
    record = dict(study.user_attrs[ATTR])
    change(record)
    study.set_user_attr(ATTR, record)
    return copy


RECORDS = {
    "uid-is-a-path": (lambda r: r.update(uid="../../../../tmp/planted"), "uid"),
    "baseline-latency-0": (
        lambda r: r.update(baseline={**r["baseline"], "latency_ms": 0}),
        "baseline.latency_ms is 0, expected a time > 0",
    ),
    "higher-is-better-a-string": (
        lambda r: r.update(task={**r["task"], "higher_is_better": "no"}),
        "task.higher_is_better",
    ),
    "budget-nan": (
        lambda r: r.update(budget={"absolute": float("nan"), "relative": None}),
        "budget.absolute",
    ),
    "target-threads-a-string": (
        lambda r: r.update(settings={**r["settings"], "target": {"threads": "1; rm"}}),
        "settings.target.threads",
    ),
}


@pytest.mark.parametrize("case", list(RECORDS))
@pytest.mark.parametrize("verb", ["status", "pareto", "worker"])
def test_a_damaged_record_is_refused_by_every_verb(monkeypatch, store, tmp_path, case, verb):
    change, fragment = RECORDS[case]
    url = _tampered(store, tmp_path, change)
    args = {"status": ["study", "status", GOOD], "pareto": ["pareto", GOOD]}.get(
        verb, ["worker", GOOD, "--n-trials", "1", "--workload", TINY]
    )
    result = _invoke(monkeypatch, tmp_path, [*args, "--storage", url])
    _assert_one_line_error(result, f"study '{GOOD}': its stored record is not valid", fragment)
    assert not Path("/tmp/planted").exists()
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no folder was made


def test_a_study_name_from_the_database_is_never_a_path(tmp_path):
    from autocompress.study import artifact_dir

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="../../escape", storage=url)
    study.set_user_attr(ATTR, {"uid": "0123456789ab", "settings": {"workload": "digits"},
                               "baseline": {"metric": 0.9, "latency_ms": 1.0}})  # fmt: skip
    with pytest.raises(AutocompressError, match="is not allowed"):
        artifact_dir(tmp_path / "studies", study)


EVIL = "import pathlib\npathlib.Path('code-ran').touch()\ndef run():\n    raise SystemExit(3)\n"


@pytest.mark.parametrize("verb", ["worker", "study-run", "export"])
def test_a_workload_named_by_the_database_is_never_imported(monkeypatch, store, tmp_path, verb):
    (tmp_path / "evil_mod.py").write_text(EVIL)
    url = _tampered(
        store, tmp_path, lambda r: r.update(settings={**r["settings"], "workload": "evil_mod:run"})
    )
    args = {
        "worker": ["worker", GOOD, "--n-trials", "1"],
        "study-run": ["study", "run", "--study", GOOD, "--n-trials", "1"],
        "export": ["export", GOOD, "--trial", "0", "--out", "r.yaml"],
    }[verb]
    result = _invoke(monkeypatch, tmp_path, [*args, "--storage", url])
    _assert_one_line_error(
        result, "was made with workload 'evil_mod:run', which is code", "--workload evil_mod:run"
    )
    assert not (tmp_path / "code-ran").exists()
    assert not (tmp_path / "r.yaml").exists()


def test_a_settings_record_with_an_unknown_field_is_one_line(monkeypatch, store, tmp_path):
    url = _tampered(store, tmp_path, lambda r: r.update(settings={**r["settings"], "extra": 1}))
    args = ["worker", GOOD, "--n-trials", "1", "--workload", TINY, "--storage", url]
    result = _invoke(monkeypatch, tmp_path, args)
    _assert_one_line_error(result, "settings have a field this autocompress does not know")


# --- Files the tool reads or writes are checked for what they are ----------------------------


def _key_path(tmp_path: Path, kind: str) -> tuple[Path, str]:
    if kind == "dev-zero":
        return Path("/dev/zero"), "it is a device, not a file"
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)  # reading it would wait for a writer: forever
    return fifo, "it is a FIFO (named pipe), not a file"


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
@pytest.mark.parametrize("flag", ["--sign-key", "--verify-key"])
def test_a_key_file_goes_through_the_bounded_reader(monkeypatch, store, tmp_path, flag, kind):
    root, url = store
    key, words = _key_path(tmp_path, kind)
    if flag == "--sign-key":
        args = ["export", GOOD, "--trial", "0", "--workload", TINY, "--storage", url]
        args += ["--out", str(tmp_path / "r.yaml"), flag, str(key)]
    else:
        recipe = tmp_path / "r.yaml"
        made = _invoke(monkeypatch, root, ["export", GOOD, "--trial", "0", "--workload", TINY,
                                           "--storage", url, "--out", str(recipe)])  # fmt: skip
        assert made.exit_code == 0, made.output
        args = ["apply", str(recipe), "--workload", TINY, "--out", str(tmp_path / "o"), flag]
        args.append(str(key))
    result = _invoke(monkeypatch, root, args)
    _assert_one_line_error(result, f"cannot read the key of {flag} {key}: {words}")


@pytest.mark.parametrize("verb", ["export", "report"])
def test_an_output_never_replaces_the_study_database(monkeypatch, store, tmp_path, verb):
    root, url = store
    db = tmp_path / "copy.db"
    db.write_bytes((root / "studies.db").read_bytes())
    copy = f"sqlite:///{db}"
    before = db.read_bytes()
    args = {
        "export": ["export", GOOD, "--trial", "0", "--workload", TINY],
        "report": ["report", GOOD],
    }
    result = _invoke(monkeypatch, tmp_path, [*args[verb], "--storage", copy, "--out", str(db)])
    what = "recipe" if verb == "export" else "report"
    _assert_one_line_error(result, f"cannot write {what} to {db}: it is a study database")
    assert db.read_bytes() == before
    assert snapshot(GOOD, copy) == snapshot(GOOD, url)


@pytest.fixture(scope="module")
def recipe_file(store, tmp_path_factory):
    """A recipe of the ``good`` study's trial 0."""
    root, url = store
    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    result = CliRunner().invoke(app, ["export", GOOD, "--trial", "0", "--workload", TINY,
                                      "--storage", url, "--out", str(path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    return path


def test_apply_replaces_symlinks_planted_in_its_folder_never_follows_them(
    monkeypatch, store, recipe_file, tmp_path
):
    root, _ = store
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    out = tmp_path / "deploy"
    out.mkdir()
    for name in ("model.acpk", "model.pt", "model.onnx", "recipe.yaml"):
        (out / name).symlink_to(outside)
    result = _invoke(
        monkeypatch, root, ["apply", str(recipe_file), "--workload", TINY, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert outside.read_text() == "precious"
    for name in ("model.acpk", "model.pt", "recipe.yaml"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".staged-")]
    assert str(out / "model.pt") in result.output and ".staged-" not in result.output


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "model.pt")


def test_a_full_disk_during_apply_is_one_line_and_leaves_nothing(
    monkeypatch, store, recipe_file, tmp_path
):
    root, _ = store
    # where PyTorch's writer aborted the process (exit 134) and left a 0-byte model.pt
    monkeypatch.setattr("autocompress.runtimes._torchscript_tools._save_torchscript", _no_space)
    out = tmp_path / "deploy"
    result = _invoke(
        monkeypatch, root, ["apply", str(recipe_file), "--workload", TINY, "--out", str(out)]
    )
    _assert_one_line_error(
        result,
        f"cannot write the model to {out}: No space left on device (model.pt)",
        "nothing was moved into it",
    )
    assert list(out.iterdir()) == []  # nothing that looks applied


def test_a_full_disk_in_a_trial_stops_the_run_with_the_trial_failed(monkeypatch, store, tmp_path):
    url = _tampered(store, tmp_path, lambda r: None)
    monkeypatch.setattr("autocompress.objective.compress", _no_space)
    result = _invoke(
        monkeypatch,
        tmp_path,
        ["worker", GOOD, "--n-trials", "3", "--workload", TINY, "--storage", url],
    )
    _assert_one_line_error(
        result,
        "trial 1 stopped: no space left on the device (model.pt)",
        "it is recorded as failed",
    )
    trials = load_study(GOOD, url).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]  # no more tried
    assert trials[1].user_attrs["fail_reason"].startswith("stopped by the machine: no space")


def test_a_full_database_when_a_trial_is_recorded_is_one_line(monkeypatch, store, tmp_path):
    import sqlalchemy.exc

    url = _tampered(store, tmp_path, lambda r: None)
    tell = optuna.Study.tell

    def full_when_values_are_told(self, trial, values=None, state=None, **kwargs):
        if values is not None:
            raise sqlalchemy.exc.OperationalError(
                "UPDATE", {}, Exception("database or disk is full")
            )
        return tell(self, trial, values, state, **kwargs)

    monkeypatch.setattr(optuna.Study, "tell", full_when_values_are_told)
    result = _invoke(
        monkeypatch,
        tmp_path,
        ["worker", GOOD, "--n-trials", "1", "--workload", TINY, "--storage", url],
    )
    _assert_one_line_error(
        result, "trial 1 stopped: no space left for the study database", "it is recorded as failed"
    )
    states = [t.state for t in load_study(GOOD, url).get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]  # never left RUNNING


def test_a_database_damaged_past_its_schema_is_one_line(monkeypatch, store, tmp_path):
    """The file opens (its schema pages are whole); a table read later is garbage."""
    import sqlite3

    root, _ = store
    db = tmp_path / "damaged.db"
    data = bytearray((root / "studies.db").read_bytes())
    con = sqlite3.connect(root / "studies.db")
    page = con.execute("PRAGMA page_size").fetchone()[0]
    (first,) = con.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'trial_user_attributes'"
    ).fetchone()
    con.close()
    data[(first - 1) * page : first * page] = b"\xff" * page
    db.write_bytes(bytes(data))
    result = _invoke(
        monkeypatch, tmp_path, ["study", "status", GOOD, "--storage", f"sqlite:///{db}"]
    )
    _assert_one_line_error(result, "the study database is damaged (malformed); restore it")


@pytest.mark.parametrize(
    "option, fragment",
    [
        (["--max-accuracy-drop", "5"], "an accuracy drop of 5 can never bind"),
        (["--max-metric-drop", "1"], "an accuracy drop of 1 can never bind"),
        (["--max-relative-drop", "2"], "--max-relative-drop 2 can never bind"),
    ],
    ids=["accuracy-drop-5", "metric-drop-1", "relative-drop-2"],
)
def test_a_budget_that_can_never_bind_is_refused(monkeypatch, tmp_path, option, fragment):
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = _invoke(monkeypatch, tmp_path, [*RUN, "--n-trials", "1", "--storage", url, *option])
    _assert_one_line_error(result, fragment, "every trial would be feasible"
                           if "relative" not in fragment else "allows every trial")  # fmt: skip
    assert optuna.get_all_study_names(open_storage(url)) == []


# --- Silent effects: what a space, a filter or a model would do unseen is said or refused -----


def test_a_space_none_of_whose_methods_applies_is_refused(monkeypatch, tmp_path):
    (tmp_path / "heads.yaml").write_text("heads:\n  amount: [0.25, 0.5]\n")
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = _invoke(
        monkeypatch, tmp_path, [*RUN, "--n-trials", "1", "--storage", url, "--space", "heads.yaml"]
    )
    _assert_one_line_error(
        result, "none of the search space's methods applies to this model",
        "heads: no attention heads found", "every trial would be the uncompressed model",
    )  # fmt: skip
    assert optuna.get_all_study_names(open_storage(url)) == []


def test_export_refuses_a_trial_number_with_a_rule(monkeypatch, store, tmp_path):
    root, url = store
    out = tmp_path / "r.yaml"
    result = _invoke(monkeypatch, root, ["export", GOOD, "--trial", "0", "--min-accuracy", "0.99",
                                         "--storage", url, "--out", str(out)])  # fmt: skip
    _assert_one_line_error(result, "--trial 0 names the trial, so a rule over the front")
    assert not out.exists()


def test_export_refuses_a_baseline_other_than_the_studys(monkeypatch, store, tmp_path):
    url = _tampered(
        store, tmp_path, lambda r: r.update(baseline={**r["baseline"], "weights_sha256": "0" * 64})
    )
    out = tmp_path / "r.yaml"
    result = _invoke(monkeypatch, tmp_path, ["export", GOOD, "--trial", "0", "--workload", TINY,
                                             "--storage", url, "--out", str(out)])  # fmt: skip
    _assert_one_line_error(result, "is not the one study 'good' was created with")
    assert not out.exists()


@pytest.mark.parametrize(
    "ref, fragment",
    [
        ("tests.tiny_workloads:exits", "the model cannot run on the validation data"),
        ("tests.tiny_workloads:lambda_model", "model_factory() returned a function, not a"),
        ("tests.tiny_workloads:fixed_batch", "the model's output shape depends on the batch"),
    ],
    ids=["system-exit-in-forward", "lambda-as-model", "output-rows-fixed"],
)
def test_a_model_that_misbehaves_is_refused_in_one_line(monkeypatch, tmp_path, ref, fragment):
    url = f"sqlite:///{tmp_path / 's.db'}"
    args = ["study", "run", "--study", "new", "--workload", ref, "--n-trials", "1"]
    result = _invoke(monkeypatch, tmp_path, [*args, "--storage", url])
    _assert_one_line_error(result, fragment)
    assert optuna.get_all_study_names(open_storage(url)) == []


# --- Time and signals ----------------------------------------------------------------------


def test_status_shows_a_trial_whose_worker_died_as_lost(monkeypatch, store, tmp_path):
    import sqlalchemy

    url = _tampered(store, tmp_path, lambda r: None)
    storage = open_storage(url)
    study = optuna.load_study(study_name=GOOD, storage=storage)
    trial = study.ask()  # a worker took it, beat once, then died
    storage.record_heartbeat(trial._trial_id)
    with storage.engine.begin() as conn:
        conn.execute(sqlalchemy.text(
            "UPDATE trial_heartbeats SET heartbeat = datetime('now', '-40 minutes')"
        ))  # fmt: skip
    result = _invoke(monkeypatch, tmp_path, ["study", "status", GOOD, "--storage", url])
    assert result.exit_code == 0, result.output
    assert (
        "COMPLETE 1, LOST 1" in result.output
        and "RUNNING" not in result.output.split("by state:")[1].splitlines()[0]
    )
    assert (
        f"trial {trial.number} lost: stored as RUNNING, but its worker has sent no heartbeat"
        in (" ".join(result.output.split()))
    )
    state = optuna.load_study(study_name=GOOD, storage=url).trials[-1].state
    assert state == TrialState.RUNNING  # a reading verb changed nothing


def test_a_command_started_with_sigint_ignored_still_stops_on_it(store, tmp_path):
    """`cmd &` in a script starts it with SIGINT ignored; kill -INT must still stop it."""
    import signal
    import subprocess
    import sys
    import time

    from tests.reliability_helpers import cli_env

    _, url = store
    proc = subprocess.Popen(
        [sys.executable, "-m", "autocompress.cli", "dashboard", GOOD]
        + ["--storage", url, "--port", "0"],
        cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # serving from here on
        assert "optuna-dashboard at" in line, line + proc.stderr.read()
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is not None, "SIGINT was ignored"
        err = proc.stderr.read()
        assert proc.returncode in (0, 130) and "Traceback" not in err, (proc.returncode, err)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_recipe_with_a_long_summary_applies_and_prints_it_short(
    monkeypatch, store, recipe_file, tmp_path
):
    """300 KB of summary (under the 1 MB limit): printing it took minutes (rich's highlighter
    and markup parser take time that grows faster than the text); now cut and escaped."""
    import yaml

    from autocompress.recipe import content_hash

    root, _ = store
    doc = yaml.safe_load(recipe_file.read_text())
    doc["source"]["summary"] = "[bold]" + "x" * 300_000
    doc["content_sha256"] = content_hash(doc)
    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "deploy"
    result = _invoke(monkeypatch, root, ["apply", str(long), "--workload", TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output[-2000:]
    assert "([bold]xxx" in result.output and "x" * 400 not in result.output


def test_a_read_only_working_folder_is_one_line(monkeypatch, tmp_path, make_read_only):
    here = tmp_path / "here"
    here.mkdir()
    make_read_only(here)  # studies/ (the study's files) would be made here
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = _invoke(monkeypatch, here, [*RUN, "--n-trials", "1", "--storage", url])
    _assert_one_line_error(result, "studies", "run from a folder you can write")
    assert optuna.get_all_study_names(open_storage(url)) == []
