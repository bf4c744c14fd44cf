"""A study: atomic creation with its baseline, resume, trials recorded, the one feasibility rule."""

import math
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from autocompress.errors import AutocompressError, StorageError
from autocompress.record import ATTR, feasible_front, is_feasible, objective_names, study_info
from autocompress.study import (
    StudySettings,
    Target,
    artifact_dir,
    create_or_resume,
    load_study,
    open_storage,
    prepare_objective,
    run_trials,
    startup_trials,
    summarize,
    validate_study_name,
)
from tests.conftest import TINY_SPACE


@pytest.fixture
def settings():
    return StudySettings(
        workload="digits",
        space_text=TINY_SPACE.read_text(),
        space_source=str(TINY_SPACE),
        target=Target(batch_size=16),
        max_metric_drop=0.02,
        seed=3,
    )


def test_three_trial_study_then_resume(digits, tmp_path, settings):
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url)
    study, used, wl, info = create_or_resume(
        "t", storage, settings, studies_dir=tmp_path, workload=digits
    )
    assert used == settings
    run_trials(study, used, wl, info, n_trials=3, studies_dir=tmp_path)

    study = load_study("t", url)  # as a new process would see it
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3 and all(len(t.values) == 3 for t in done)
    info = study_info(study)
    assert study.metric_names == objective_names(info) == ["accuracy", "latency_ms", "size_kb"]
    assert info["task"] == {
        "name": "classification",
        "metric": "accuracy",
        "higher_is_better": True,
    }
    assert info["baseline"]["metric"] > 0.95
    assert info["baseline"]["packed_bytes"] > 300_000
    assert info["baseline"]["deployed_bytes"] > 300_000
    assert info["size"] == "deployed" and info["budget"] == {"absolute": 0.02, "relative": None}
    folder = artifact_dir(tmp_path, study)
    assert folder.name == f"t-{info['uid']}"
    for t in done:
        assert "metric_budget" in t.constraints
        for key in (
            "test_metric",
            "latency_p90_ms",
            "params",
            "macs",
            "sparsity",
            "effective_bits",
            "config",
            "latency_ratio",
            "records",
            "deployed_kind",
        ):
            assert key in t.user_attrs, key
        assert (folder / f"trial-{t.number}.acpk").stat().st_size == t.user_attrs["packed_bytes"]
        # TorchScript .pt, or PT2E's .pt2 where int8 kept that form
        (deployed,) = folder.glob(f"trial-{t.number}.pt*")
        assert deployed.stat().st_size == t.user_attrs["deployed_bytes"]
        assert t.values[2] == pytest.approx(t.user_attrs["deployed_bytes"] / 1000)
        # the latency objective is the interleaved ratio times the stored baseline latency
        assert t.values[1] == pytest.approx(
            t.user_attrs["latency_ratio"] * info["baseline"]["latency_ms"]
        )

    # resume: same name, nothing given -> the stored settings, more trials in the same study
    study2, used2, wl2, info2 = create_or_resume(
        "t", open_storage(url), {}, studies_dir=tmp_path, workload=digits
    )
    assert used2 == settings and info2["baseline"] == info["baseline"]
    run_trials(study2, used2, wl2, info2, n_trials=2, studies_dir=tmp_path)
    study = load_study("t", url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5
    assert summarize(study)["counts"]["COMPLETE"] == 5
    assert all(is_feasible(t) for t in feasible_front(study))


def test_resume_with_other_options_is_refused_listing_each(digits, tmp_path, settings):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    create_or_resume("t", storage, settings, studies_dir=tmp_path, workload=digits)
    given = {
        "workload": "mnist-mlp",
        "target": {"runtime": "onnxruntime", "batch_size": 16},
        "sampler": "random",
        "max_metric_drop": 0.02,
    }
    with pytest.raises(AutocompressError) as err:
        create_or_resume("t", storage, given, studies_dir=tmp_path)
    message = str(err.value)
    assert "--workload (study: digits)" in message and "--sampler (study: tpe)" in message
    assert "--target (study: cpu-torch)" in message
    assert "batch" not in message and "drop" not in message  # given values equal to the study's


def test_a_changed_baseline_is_refused_on_resume(digits, tmp_path, settings):
    import torch

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    create_or_resume("t", storage, settings, studies_dir=tmp_path, workload=digits)
    changed = digits.with_model(__import__("copy").deepcopy(digits.model))
    with torch.no_grad():
        next(changed.model.parameters())[0].flatten()[0] += 1.0
    with pytest.raises(AutocompressError, match="not the one study 't' was created with"):
        create_or_resume("t", storage, {}, studies_dir=tmp_path, workload=changed)


def test_a_study_whose_workload_now_measures_another_metric_is_refused_on_resume(
    digits, tmp_path, settings
):
    # minilm's metric changed (topic_recall_at_10 -> source_recall_at_10) with its data
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, *_ = create_or_resume("t", storage, settings, studies_dir=tmp_path, workload=digits)
    info = study.user_attrs[ATTR]
    assert info["baseline"]["metric_se"] is not None and info["baseline"]["metric_items"] > 300
    study.set_user_attr(ATTR, {**info, "task": {**info["task"], "metric": "topic_recall_at_10"}})
    with pytest.raises(AutocompressError, match="measured topic_recall_at_10, but workload"):
        create_or_resume("t", storage, {}, studies_dir=tmp_path, workload=digits)


def test_a_failing_trial_is_recorded_and_the_study_goes_on(digits, tmp_path, settings, monkeypatch):
    import autocompress.objective as objective_mod

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, used, wl, info = create_or_resume(
        "f", storage, replace(settings, warm_start=False), studies_dir=tmp_path, workload=digits
    )
    real, calls = objective_mod.compress, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise AssertionError("simulated bug in a user's model")  # not a RuntimeError
        if calls["n"] == 2:
            raise IndexError("index 7 is out of bounds")
        return real(*args, **kwargs)

    monkeypatch.setattr(objective_mod, "compress", flaky)
    result = run_trials(study, used, wl, info, n_trials=1, studies_dir=tmp_path)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    reasons = [t.user_attrs["fail_reason"] for t in study.get_trials()[:2]]
    assert reasons == [
        "AssertionError: simulated bug in a user's model",
        "IndexError: index 7 is out of bounds",
    ]
    assert (result.completed, result.failed) == (1, 2)


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


@pytest.mark.parametrize("name", ["", "../../x", "/abs", ".hidden", "a" * 129, "sp ace", "x/y"])
def test_study_names_that_are_not_folder_names_are_refused(name):
    with pytest.raises(AutocompressError, match="is not allowed"):
        validate_study_name(name)


def test_settings_validation():
    with pytest.raises(AutocompressError, match="--sampler"):
        StudySettings(sampler="cmaes")
    with pytest.raises(AutocompressError, match="--max-metric-drop"):
        StudySettings(max_metric_drop=-1)
    with pytest.raises(AutocompressError, match="not both"):
        StudySettings(max_metric_drop=0.1, max_relative_drop=0.1)
    with pytest.raises(AutocompressError, match="--seed"):
        StudySettings(seed=-5)
    with pytest.raises(AutocompressError, match="--threads"):
        Target(threads=0)
    assert StudySettings().budget("language-modeling") == {"absolute": None, "relative": 0.05}


def test_hopeless_trial_stops_early_and_stays_off_the_front(digits, tmp_path, settings):
    space = (
        "structured:\n  amount: 0.9\n"
        "finetune:\n  epochs: 3\n  lr: {low: 1.0e-6, high: 2.0e-6, log: true}\n"
    )
    s = replace(settings, space_text=space, max_metric_drop=0.01, warm_start=False)
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, used, wl, info = create_or_resume("e", storage, s, studies_dir=tmp_path, workload=digits)
    run_trials(study, used, wl, info, n_trials=1, studies_dir=tmp_path, timeout=120)
    trial = study.get_trials()[0]
    assert trial.state == TrialState.PRUNED
    assert "stopped early after epoch 1" in trial.user_attrs["stopped_reason"]
    assert trial.user_attrs["partial_metric"] < info["baseline"]["metric"] - 0.11
    assert feasible_front(study) == []
    assert summarize(study)["stopped"][0][0] == trial.number


def test_a_run_where_every_trial_is_stopped_ends(digits, tmp_path, settings):
    space = (
        "structured:\n  amount: 0.9\nfinetune:\n  epochs: 2\n  lr: {low: 1.0e-6, high: 2.0e-6}\n"
    )
    s = replace(settings, space_text=space, warm_start=False)
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, used, wl, info = create_or_resume("p", storage, s, studies_dir=tmp_path, workload=digits)
    result = run_trials(study, used, wl, info, n_trials=1, studies_dir=tmp_path)
    assert result.stopped_because == "failures" and result.pruned == 10
    assert len(study.get_trials()) == 10


def test_warm_starts_are_the_first_trials(digits, tmp_path, settings):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, used, wl, info = create_or_resume(
        "w", storage, settings, studies_dir=tmp_path, workload=digits
    )
    waiting = study.get_trials(states=(TrialState.WAITING,))
    # int8 alone, structured + int8; not unstructured + 4-bit: cpu-torch deploys it as float
    assert len(waiting) == 2
    assert not any(t.params.get("unstructured.enabled") for t in waiting)
    run_trials(study, used, wl, info, n_trials=1, studies_dir=tmp_path)
    first = study.trials[0]
    assert first.user_attrs["warm_start"] is True
    assert first.params["int8.enabled"] is True and first.params["structured.enabled"] is False
    assert "int8" in first.user_attrs["config"]["methods"]
    # the model takes over two random trials after the two warm starts, not after eight
    assert study.sampler._n_startup_trials == 4
    cold, used, wl, info = create_or_resume(
        "c", storage, replace(settings, warm_start=False), studies_dir=tmp_path, workload=digits
    )
    prepare_objective(cold, used, wl, info, studies_dir=tmp_path)
    assert cold.sampler._n_startup_trials == 8


def test_startup_trials_shrink_with_warm_starts_but_never_grow():
    assert [startup_trials(n) for n in (0, 1, 3, 6, 20)] == [8, 3, 5, 8, 8]


def test_a_half_created_study_is_replaced_not_refused(digits, tmp_path, settings):
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="h", storage=url)  # killed before its record was written
    study, *_ = create_or_resume(
        "h", open_storage(url), settings, studies_dir=tmp_path, workload=digits
    )
    assert ATTR in study.user_attrs


def test_old_study_records_are_read(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(
        study_name="old", storage=url, directions=["maximize", "minimize", "minimize"]
    )
    study.set_user_attr(
        ATTR,
        {
            "settings": {
                "workload": "digits",
                "max_accuracy_drop": 0.01,
                "seed": 0,
                "target": {"device": "cpu", "threads": 1, "batch_size": 32, "runtime": "torch"},
            },
            "baseline": {
                "accuracy": 0.99,
                "test_accuracy": 0.98,
                "latency_ms": 2.0,
                "size_kb": 300,
                "size_bytes": 300_000,
            },
            "hardware": {},
        },
    )
    info = study_info(load_study("old", url))
    assert info["baseline"]["metric"] == 0.99 and info["size"] == "packed"
    assert info["budget"]["absolute"] == 0.01
    assert math.isclose(summarize(load_study("old", url))["n_trials"], 0)


FINE_TUNE_ONLY = {
    "structured.enabled": False,
    "unstructured.enabled": False,
    "weights.enabled": False,
    "int8.enabled": False,
    "finetune.enabled": True,
    "finetune.lr": 1e-3,
    "finetune.schedule": "constant",
    "distillation.enabled": False,
}


@pytest.mark.parametrize("cheap_first", [True, False])
def test_a_candidate_that_cannot_reach_the_front_is_stopped_before_fine_tuning(
    digits, tmp_path, settings, cheap_first
):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    s = replace(settings, warm_start=False, cheap_first=cheap_first)
    study, used, wl, info = create_or_resume(
        "cf", storage, s, studies_dir=tmp_path, workload=digits
    )
    # a completed trial better than any candidate can be on every objective
    study.add_trial(
        optuna.trial.create_trial(
            values=[1.0, 1e-6, 1e-6],
            user_attrs={"worsening": -1.0},
            constraints={"metric_budget": -1.0},
        )
    )
    study.enqueue_trial(FINE_TUNE_ONLY)
    run_trials(study, used, wl, info, n_trials=1, studies_dir=tmp_path)
    trial = study.trials[1]  # the enqueued one (a stopped trial is not a completed one)
    if cheap_first:
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["fidelity"] == "cheap"
        assert "stopped before fine-tuning: trial 0 is faster" in trial.user_attrs["stopped_reason"]
        assert 0.0 <= trial.user_attrs["cheap_metric"] <= 1.0
        assert trial.user_attrs["cheap_size_kb"] > 0 and trial.user_attrs["cheap_latency_ms"] > 0
        assert not list(artifact_dir(tmp_path, study).glob("tmp*"))  # cheap files cleaned up
    else:
        assert trial.state == TrialState.COMPLETE and "cheap_metric" not in trial.user_attrs
    assert trial.number not in [t.number for t in feasible_front(study)]


def test_fine_tuned_trials_record_both_fidelities_and_untuned_ones_one(digits, tmp_path, settings):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    s = replace(settings, warm_start=False, cheap_first=True)
    study, used, wl, info = create_or_resume(
        "cf2", storage, s, studies_dir=tmp_path, workload=digits
    )
    study.enqueue_trial(FINE_TUNE_ONLY)
    study.enqueue_trial({**FINE_TUNE_ONLY, "finetune.enabled": False, "int8.enabled": True})
    run_trials(study, used, wl, info, n_trials=2, studies_dir=tmp_path)
    tuned, untuned = study.trials
    assert tuned.state == TrialState.COMPLETE and tuned.user_attrs["fidelity"] == "full"
    assert tuned.user_attrs["cheap_worsening"] is not None
    # same shapes and formats before and after fine-tuning: the same file size, give or take
    # the archive's metadata
    assert tuned.user_attrs["cheap_size_kb"] == pytest.approx(tuned.values[2], rel=1e-3)
    assert "cheap_metric" not in untuned.user_attrs


def test_an_exact_repeat_without_fine_tuning_is_not_run_again(digits, tmp_path, settings):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    s = replace(settings, warm_start=False, cheap_first=False)  # the repeat rule alone
    study, used, wl, info = create_or_resume(
        "dup", storage, s, studies_dir=tmp_path, workload=digits
    )
    int8_only = {**FINE_TUNE_ONLY, "finetune.enabled": False, "int8.enabled": True}
    for params in (int8_only, int8_only, FINE_TUNE_ONLY, FINE_TUNE_ONLY):
        study.enqueue_trial(params)
    run_trials(study, used, wl, info, n_trials=3, studies_dir=tmp_path)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
                      TrialState.COMPLETE]  # fmt: skip
    assert study.trials[1].user_attrs["duplicate_of"] == 0
    assert "not run again" in study.trials[1].user_attrs["stopped_reason"]
    assert "duplicate_of" not in study.trials[3].user_attrs  # fine-tuning is seeded per trial


def test_a_baseline_that_cannot_deploy_names_the_other_targets_of_its_device(
    tiny, tmp_path, monkeypatch
):
    import autocompress.study as study_module
    from autocompress.errors import WorkloadError
    from autocompress.settings import Target

    def refuse(*args, **kwargs):
        raise RuntimeError("no kernel for this op")

    monkeypatch.setattr(study_module, "deploy_for_target", refuse)
    with pytest.raises(WorkloadError, match="no kernel for this op") as err:
        study_module.measure_baseline(tiny, Target(runtime="onnxruntime"), tmp_path)
    hint = str(err.value).split("try --target ", 1)[1]
    assert "cpu-torch" in hint and "cpu-onnxruntime" not in hint and "cuda" not in hint


def test_production_limits_are_constraints_of_the_study(digits, tmp_path, settings):
    url = f"sqlite:///{tmp_path / 's.db'}"
    limited = replace(settings, max_size_kb=300.0, max_memory_mb=10_000.0)
    study, used, wl, info = create_or_resume(
        "t", open_storage(url), limited, studies_dir=tmp_path, workload=digits
    )
    assert info["baseline"]["resident_memory_bytes"] > 0  # measured once, with the baseline
    run_trials(study, used, wl, info, n_trials=3, studies_dir=tmp_path)
    done = load_study("t", url).get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    for t in done:
        size_kb = t.user_attrs["deployed_bytes"] / 1000
        assert t.constraints["max_size_kb"] == pytest.approx(size_kb - 300.0)
        memory_mb = t.user_attrs["resident_memory_bytes"] / 1e6
        assert t.constraints["max_memory_mb"] == pytest.approx(memory_mb - 10_000.0)
        within = size_kb <= 300.0 and t.constraints["metric_budget"] <= 0
        assert is_feasible(t) == within
    front = feasible_front(load_study("t", url))
    assert all(t.values[2] <= 300.0 for t in front)
    # the baseline (>300 KB deployed) is over the size limit: nothing that large is feasible
    assert info["baseline"]["deployed_bytes"] / 1000 > 300.0
    # stored with the study and checked on resume
    assert used.max_size_kb == 300.0 and study_info(study)["settings"]["max_size_kb"] == 300.0
    with pytest.raises(AutocompressError, match=r"--max-size-kb \(study: 300.0\)"):
        create_or_resume("t", open_storage(url), {"max_size_kb": 500.0}, studies_dir=tmp_path)


def test_a_latency_limit_no_trial_meets_leaves_the_front_empty(digits, tmp_path, settings):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study, used, wl, info = create_or_resume(
        "t",
        open_storage(url),
        replace(settings, max_latency_ms=1e-6),
        studies_dir=tmp_path,
        workload=digits,
    )
    run_trials(study, used, wl, info, n_trials=2, studies_dir=tmp_path)
    done = load_study("t", url).get_trials(states=(TrialState.COMPLETE,))
    assert done and all(t.constraints["max_latency_ms"] > 0 for t in done)
    assert feasible_front(load_study("t", url)) == []


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("max_latency_ms", 0.0, "--max-latency-ms"),
        ("max_size_kb", -1.0, "--max-size-kb"),
        ("max_memory_mb", math.inf, "--max-memory-mb"),
        ("max_latency_ms", math.nan, "--max-latency-ms"),
    ],
)
def test_production_limits_must_be_positive_numbers(field, value, flag):
    with pytest.raises(AutocompressError, match=f"^{flag} "):
        StudySettings(**{field: value})
