import optuna
import pytest
from optuna.trial import TrialState

from autocompress.errors import AutocompressError, StorageError
from autocompress.study import (
    ATTR,
    METRIC_NAMES,
    StudySettings,
    Target,
    create_or_resume,
    feasible_front,
    load_study,
    open_storage,
    run_study,
    summarize,
)
from tests.conftest import TINY_SPACE


@pytest.fixture
def settings():
    return StudySettings(
        workload="digits",
        space_text=TINY_SPACE.read_text(),
        space_source=str(TINY_SPACE),
        target=Target(batch_size=16),
        max_accuracy_drop=0.02,
        seed=3,
    )


def test_three_trial_study_then_resume(digits, tmp_path, settings):
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url)
    study, used, wl, baseline = create_or_resume(
        "t", storage, settings, studies_dir=tmp_path, workload=digits
    )
    assert used == settings
    run_study(study, used, wl, baseline, n_trials=3, studies_dir=tmp_path)

    # a new process would see this: reload from the file
    study = load_study("t", url)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(len(t.values) == 3 for t in trials)
    assert study.metric_names == METRIC_NAMES
    info = study.user_attrs[ATTR]
    assert info["baseline"]["accuracy"] > 0.95
    assert info["baseline"]["size_bytes"] > 300_000
    assert info["hardware"]["threads"] == 1
    for t in trials:
        assert "accuracy_drop" in t.constraints
        for key in (
            "test_accuracy",
            "latency_p90_ms",
            "params",
            "macs",
            "sparsity",
            "effective_bits",
            "config",
            "latency_ratio",
        ):
            assert key in t.user_attrs, key
        assert (tmp_path / "t" / f"trial-{t.number}.acpk").stat().st_size == t.user_attrs[
            "size_bytes"
        ]
        assert t.values[2] == pytest.approx(t.user_attrs["size_bytes"] / 1000)

    # resume: same name, same storage -> more trials in the same study
    study2, used2, wl2, baseline2 = create_or_resume(
        "t",
        open_storage(url),
        StudySettings(workload="digits"),
        studies_dir=tmp_path,
        workload=digits,
    )
    assert used2 == settings and baseline2 == baseline
    run_study(study2, used2, wl2, baseline2, n_trials=2, studies_dir=tmp_path)
    assert len(load_study("t", url).trials) == 5
    assert {t.number for t in load_study("t", url).trials} == set(range(5))
    s = summarize(load_study("t", url))
    assert s["counts"]["COMPLETE"] == 5
    front = feasible_front(load_study("t", url))
    assert all(t.constraints["accuracy_drop"] <= 0 for t in front)


def test_resume_with_another_workload_is_refused(digits, tmp_path, settings):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    create_or_resume("t", storage, settings, studies_dir=tmp_path, workload=digits)
    with pytest.raises(AutocompressError, match="compresses workload 'digits'"):
        create_or_resume("t", storage, StudySettings(workload="mnist-mlp"), studies_dir=tmp_path)


def test_failing_trial_is_recorded_and_study_goes_on(digits, tmp_path, settings, monkeypatch):
    import autocompress.objective as objective_mod  # Objective calls compress from there

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, used, wl, baseline = create_or_resume(
        "f", storage, settings, studies_dir=tmp_path, workload=digits
    )
    real = objective_mod.compress
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated kernel failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(objective_mod, "compress", flaky)
    run_study(study, used, wl, baseline, n_trials=2, studies_dir=tmp_path)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.WAITING]  # 1 warm start left
    assert "simulated kernel failure" in study.trials[0].user_attrs["fail_reason"]


def test_missing_study_lists_what_exists(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="other", storage=url)
    with pytest.raises(StorageError, match="no study named 'nope'.*other"):
        load_study("nope", url)


@pytest.mark.parametrize(
    "url, message",
    [
        ("notaurl", "is not valid"),
        ("postgresql://postgres@127.0.0.1:1/none", "cannot reach storage"),
    ],
)
def test_bad_storage_urls(url, message):
    with pytest.raises(StorageError, match=message):
        open_storage(url)


def test_settings_validation():
    with pytest.raises(AutocompressError, match="--sampler"):
        StudySettings(sampler="cmaes")
    with pytest.raises(AutocompressError, match="--max-accuracy-drop"):
        StudySettings(max_accuracy_drop=5)
    with pytest.raises(AutocompressError, match="--threads"):
        Target(threads=0)


def test_hopeless_trial_stops_early_and_stays_off_the_front(digits, tmp_path, settings):
    space = (
        "pruning:\n  method: structured\n  amount: 0.9\n"
        "finetune:\n  epochs: 3\n  lr: {low: 1.0e-6, high: 2.0e-6, log: true}\n"
    )
    s = StudySettings(**{**settings.__dict__, "space_text": space, "max_accuracy_drop": 0.01})
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, used, wl, baseline = create_or_resume(
        "e", storage, s, studies_dir=tmp_path, workload=digits
    )
    run_study(study, used, wl, baseline, n_trials=1, studies_dir=tmp_path)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.PRUNED
    assert "stopped early after epoch 1" in trial.user_attrs["stopped_reason"]
    assert trial.user_attrs["partial_accuracy"] < baseline["accuracy"] - 0.11
    assert feasible_front(study) == []
    assert summarize(study)["stopped"][0][0] == trial.number


def test_warm_starts_are_the_first_trials(digits, tmp_path, settings):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, used, wl, baseline = create_or_resume(
        "w", storage, settings, studies_dir=tmp_path, workload=digits
    )
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == len(used.space().warm_starts()) == 3
    run_study(study, used, wl, baseline, n_trials=1, studies_dir=tmp_path)
    first = study.trials[0]
    assert first.user_attrs["warm_start"] is True
    assert first.params["pruning.method"] == "none"
    assert first.user_attrs["config"]["quantize"]["int8_activations"] is True
