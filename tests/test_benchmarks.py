"""Smoke runs of every benchmark script on a tiny budget (figures come from real runs, not here)."""

import json

import numpy as np

from benchmarks import deep_compression, early_stopping, quant_aware, search_efficiency, targets
from tests.conftest import TINY_SPACE
from tests.test_workload import write_idx


def test_targets_quick(tmp_path):
    path = targets.run(quick=True, out_dir=tmp_path)
    rows = json.loads(path.read_text())["rows"]
    measured = [r for r in rows if "speedup" in r]
    assert {r["runtime"] for r in measured} == {"torch", "onnxruntime"}
    assert {r["batch"] for r in measured} == {1, 32}
    assert all(r["speedup"] > 0 and r["size_bytes"] > 0 for r in measured)
    assert "| digits-cnn | fp32 |" in (tmp_path / "targets.md").read_text()


def test_deep_compression_tiny(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(
        tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (5200, 28, 28), np.uint8)
    )
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 5200, np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (50, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 50, np.uint8))
    result = deep_compression.run_network(
        "mnist-mlp",
        str(tmp_path),
        minutes=5,
        storage=f"sqlite:///{tmp_path / 'b.db'}",
        studies_dir=tmp_path,
        seed=0,
        sampler="random",
        n_trials=1,
    )
    assert result["trials"] == 1
    assert result["fp32_bytes"] == 266_610 * 4
    assert "LeNet-300-100" in deep_compression.report([result])


def test_search_efficiency_tiny(tmp_path, digits):
    results = search_efficiency.run(
        ["digits"],
        n_trials=1,
        seeds=[0, 1],
        samplers=["tpe", "random"],
        space=TINY_SPACE,
        data_dir=None,
        out_dir=tmp_path,
        jobs=2,
    )
    runs = results["digits"]["runs"]
    assert sorted((r["seed"], r["sampler"], r["trials"]) for r in runs) == [
        (0, "random", 2),
        (0, "tpe", 1),
        (1, "random", 2),
        (1, "tpe", 1),
    ]
    assert all(r["hv_at_n"] >= 0 for r in runs)
    assert results["digits"]["reference_point"][1] == 1.1  # latency as a ratio to the baseline
    assert results["digits"]["summary"]["tpe"]["seeds_at_or_above_random_2n"] in (0, 1, 2)
    assert "| digits (tiny.yaml) | random |" in search_efficiency.table(results, 1)


def test_early_stopping_tiny():
    results = early_stopping.run(
        "tests.conftest:tiny_workload", None, minutes=0.05, seed=0, space=TINY_SPACE
    )
    assert set(results) == {"early stop + caching", "neither"}
    assert all(r["trials"] >= 1 and r["trials_per_hour"] > 0 for r in results.values())


def test_target_studies_tiny(tmp_path, tiny):
    from autocompress.study import StudySettings, Target, create_or_resume, open_storage, run_study
    from benchmarks import target_studies

    url = f"sqlite:///{tmp_path / 't.db'}"
    settings = StudySettings(
        workload="tests.conftest:tiny_workload",
        space_text=TINY_SPACE.read_text(),
        target=Target(runtime="onnxruntime", batch_size=8),
        max_accuracy_drop=1.0,
    )
    study, settings, wl, baseline = create_or_resume(
        "ort", open_storage(url), settings, studies_dir=tmp_path, workload=tiny
    )
    run_study(study, settings, wl, baseline, n_trials=2, studies_dir=tmp_path)
    row = target_studies.measure_study("ort", url, None)
    assert row["speedup_vs_eager_fp32"] > 0 and row["speedup_vs_ort_fp32"] > 0
    assert row["trial"] in (0, 1)
    assert "| ort | cpu-onnxruntime b=8" in target_studies.table([row])


def test_quant_aware_tiny():
    rows = quant_aware.run("tests.conftest:tiny_workload", None, epochs=1)
    assert len(rows) == 2 * len(quant_aware.POINTS)
    assert [r["quant_aware"] for r in rows[:2]] == [False, True]
    assert all(0 <= r["test_error"] <= 1 and r["compression"] > 1 for r in rows)
    assert "| 92% | 2 |" in quant_aware.table(rows)
