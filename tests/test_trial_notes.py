"""What each trial records: its constraint in both forms, and a note that says what ran."""

import json
import re

from optuna.trial import TrialState

from autocompress.dashboard import dashboard_app
from autocompress.study import StudySettings, Target, create_or_resume, open_storage, run_trials
from autocompress.trial_notes import trial_note
from tests.conftest import TINY_SPACE
from tests.test_dashboard import BASELINE, get

INFO = {
    "task": {"name": "classification", "metric": "accuracy", "higher_is_better": True},
    "budget": {"absolute": 0.01, "relative": None},
    "size": "deployed",
    "baseline": BASELINE,
}


def test_note_describes_layers_sizes_and_flags_against_the_baseline():
    note = trial_note(
        7,
        {
            "summary": "structured 25% | 4-bit per-channel | int8 static",
            "records": {
                "structured": {"channels": {"0": 6, "3": 12}},
                "weights": {
                    "plan": {"0.weight": [8, "per_channel", 0], "3.weight": [4, "per_channel", 0]}
                },
            },  # fmt: skip
            "sparsity": 0.0,
            "params": 5_000,
            "packed_bytes": 30_000,
            "deployed_bytes": 105_000,
            "deployed_kind": "torchscript-fx-int8",
            "warm_start": True,
            "latency_stable": False,
            "test_metric": 0.95,
        },
        (0.975, 4.0, 105.0),
        INFO,
        {"0": 8, "3": 16},
    )
    assert note.startswith("## Trial 7: feasible\n")
    assert "`structured 25% | 4-bit per-channel | int8 static`" in note
    assert "| `0` | 6 / 8 (75%) | 8 |" in note and "| `3` | 12 / 16 (75%) | 4 |" in note
    assert "2.00x slower" in note and "4.00x smaller" in note
    assert (
        "packed artifact 30,000 B" in note
        and "deployed file 105,000 B (torchscript-fx-int8)" in note
    )
    assert "warm start" in note and "latency unstable" in note and "test over budget" in note


def test_objective_records_note_and_dashboard_constraints(digits, tmp_path):
    settings = StudySettings(space_text=TINY_SPACE.read_text(), target=Target(batch_size=16),
                             seed=5, warm_start=False)  # fmt: skip
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, used, wl, info = create_or_resume("real", storage, settings, studies_dir=tmp_path,
                                             workload=digits)  # fmt: skip
    run_trials(study, used, wl, info, n_trials=1, studies_dir=tmp_path)
    (t,) = study.get_trials(states=(TrialState.COMPLETE,))
    assert t.system_attrs["constraints"] == [t.constraints["metric_budget"]]
    assert t.user_attrs["feasible"] is (t.constraints["metric_budget"] <= 0)
    detail = json.loads(get(dashboard_app(storage, tmp_path), f"/api/studies/{study._study_id}")[1])
    body = detail["trials"][0]["note"]["body"]
    assert body.startswith("## Trial 0: ")
    assert re.search(r"\| `0` \| \d+ / 32 \(\d+%\) \| (8|32) \|", body), body
