"""The sensitivity profile: carved from training data only, measured once per study and kept
with it, and it finds the fragile layer; a per-layer study allocates within its budgets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from autocompress.pipeline import CompressionConfig
from autocompress.record import SENSITIVITY, study_info
from autocompress.search_space import parse_search_space_text
from autocompress.sensitivity import (
    ProfileRequest,
    calibration_batches,
    measure_profile,
    profile_for,
    request_for,
)
from autocompress.study import StudySettings, create_or_resume, open_storage, run_trials
from autocompress.tasks import Classification
from autocompress.workload import load_workload
from tests.tiny_workloads import N_CLASSES, N_FEATURES, _data

SPACE = """
unstructured:
  enabled: [false, true]
  amount: {low: 0.2, high: 0.8}
  per_layer: true
weights:
  bits: [8, 4, 3, 2]
  per_layer: true
  budget_bits: {low: 2.0, high: 6.0}
"""


class _Forbidden:
    """A split that must not be read."""

    def batches(self, *args, **kwargs):
        raise AssertionError("the profile read a split other than train")

    def __len__(self) -> int:
        raise AssertionError("the profile read a split other than train")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_workload("tests.tiny_workloads:tiny", cache_dir=tmp_path_factory.mktemp("c"))


def test_requests_follow_the_space():
    space = parse_search_space_text(SPACE)
    request = request_for(space)
    assert request.bits == (8, 4, 3, 2) and request.prune and not request.channels
    assert request.granularity == "per_channel"
    sampled = parse_search_space_text(
        SPACE.replace("per_layer: true", "allocation: sampled\n  per_layer: true")
    )
    assert request_for(sampled).empty
    assert request_for(parse_search_space_text("weights:\n  bits: [8, 4]\n")).empty
    with pytest.raises(ValueError, match="rows"):
        ProfileRequest(rows=0)
    with pytest.raises(ValueError, match="bits"):
        ProfileRequest(bits=(16,))


def test_the_profile_reads_the_training_split_only(tiny):
    guarded = dataclasses.replace(tiny, val=_Forbidden(), test=_Forbidden())
    profile = profile_for(parse_search_space_text(SPACE), guarded)
    assert profile["calibration"] == {"split": "train", "rows": len(tiny.train)}  # 96 < 256
    rows = torch.cat([b[0] for b in calibration_batches(tiny.train, 64)])
    assert len(rows) == 64
    train, val = tiny.train.x, tiny.val.x
    for row in rows:
        assert (train == row).all(dim=1).any()
        assert not (val == row).all(dim=1).any()
    assert set(profile["bits"]) == {"fc1.weight", "fc2.weight"}
    assert set(profile["bits"]["fc1.weight"]) == {"8", "4", "3", "2"}
    assert profile["seconds"] >= 0 and profile["base_loss"] >= 0


def test_measuring_is_deterministic_and_leaves_the_model_alone(tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    space = parse_search_space_text(SPACE)
    first, second = profile_for(space, tiny), profile_for(space, tiny)
    assert {k: v for k, v in first.items() if k != "seconds"} == {
        k: v for k, v in second.items() if k != "seconds"
    }
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    prune = first["prune"]["fc1.weight"]
    assert prune["0.95"] >= prune["0.25"]  # pruning more costs more


class _ThreeLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(N_FEATURES, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _fragile_model() -> nn.Module:
    """A trained three-layer MLP whose middle layer is fragile: each of its rows holds one huge
    weight on a hidden unit that is always zero, so the model computes the same function but
    its per-channel grid is far too coarse for the weights that matter."""
    torch.manual_seed(0)
    model, data = _ThreeLayers(), _data(256, 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(data.x), data.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.fc1.weight[0] = 0.0
        model.fc1.bias[0] = -10.0  # unit 0 never fires
        model.fc2.weight[:, 0] = 100.0 * model.fc2.weight.abs().max()
    return model.eval()


def test_a_fragile_layer_is_ranked_most_sensitive():
    model, train = _fragile_model(), _data(256, 0)
    request = ProfileRequest(bits=(8, 6, 4, 3, 2), prune=True)
    profile = measure_profile(model, Classification(), train, train.x[:4], request)
    for bits in ("6", "4", "3"):
        ranked = sorted(profile["bits"], key=lambda n: profile["bits"][n][bits])
        assert ranked[-1] == "fc2.weight", (bits, profile["bits"])
    assert set(profile["prune"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}


def test_the_profile_is_stored_with_the_study_and_never_measured_again(tiny, tmp_path, monkeypatch):
    """The end-to-end check: a two-trial per-layer study, its profile reused on resume, and its
    trials' per-layer bits within their budget and replayable from their configuration."""
    settings = StudySettings(
        workload="tests.tiny_workloads:tiny",
        space_text=SPACE,
        space_source="per-layer.yaml",
        sampler="random",
        seed=1,
        warm_start=False,
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    study, used, wl, info = create_or_resume(
        "p", open_storage(url), settings, studies_dir=tmp_path, workload=tiny
    )
    profile = info[SENSITIVITY]
    assert set(profile["bits"]) == {"fc1.weight", "fc2.weight"} and "prune" in profile
    run_trials(study, used, wl, info, n_trials=2, studies_dir=tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("the profile was measured again")

    monkeypatch.setattr("autocompress.study.profile_for", never)
    study2, used2, wl2, info2 = create_or_resume(
        "p", open_storage(url), {}, studies_dir=tmp_path, workload=tiny
    )
    assert info2[SENSITIVITY] == profile == study_info(study2)[SENSITIVITY]
    run_trials(study2, used2, wl2, info2, n_trials=1, studies_dir=tmp_path)

    done = study2.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    sizes = {"fc1.weight": 16 * N_FEATURES, "fc2.weight": N_CLASSES * 16}
    assert profile["params"] == sizes  # what `autocompress sensitivity` shows
    for t in done:
        config = CompressionConfig.from_dict(t.user_attrs["config"])
        assert config.to_dict() == t.user_attrs["config"]  # replays exactly
        weights = config.get("weights")
        assert weights.budget_bits == pytest.approx(t.params["weights.budget_bits"], abs=1e-4)
        bits = weights.layer_bits
        assert set(bits) == set(sizes)
        average = sum(bits[n] * sizes[n] for n in sizes) / sum(sizes.values())
        assert average <= max(weights.budget_bits, 2.0) + 1e-9
        plan = t.user_attrs["records"]["weights"]["plan"]
        assert {n: plan[n][0] for n in sizes} == bits  # what ran is what was allocated
        assert "by sensitivity" in t.user_attrs["summary"]
