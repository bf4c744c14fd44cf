"""Search efficiency: feasible hypervolume after N trials, default sampler vs NSGA-II vs random.

Every study of one workload shares one reference point, taken from the first study's baseline
(accuracy - budget, 1.1 x latency, 1.1 x size), and latencies are put on one scale through each
trial's interleaved ratio to the baseline, so hypervolumes are comparable across studies. The
aim: the default sampler (TPE) reaches random sampling's hypervolume at 2N within N trials.

    python -m benchmarks.search_efficiency --workloads digits --n-trials 15 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from autocompress.report import hypervolume_history, reference_point
from autocompress.study import StudySettings, Target, create_or_resume, open_storage, run_study
from autocompress.workload import load_workload
from benchmarks.common import RESULTS, write_results

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def _rescaled(trials: list[Any], latency_ms: float) -> list[Any]:
    """Trials with latency = ratio x the common baseline latency (one scale for all studies)."""
    out = []
    for t in trials:
        values = [t.values[0], t.user_attrs["latency_ratio"] * latency_ms, t.values[2]]
        out.append(
            optuna.trial.create_trial(
                values=values,
                params={},
                distributions={},
                user_attrs=t.user_attrs,
                system_attrs=t.system_attrs,
            )
        )
        out[-1].number = t.number
    return out


def run(
    workloads: list[str],
    n_trials: int,
    seeds: list[int],
    samplers: list[str],
    space: Path,
    data_dir: str | None,
    out_dir: Path,
) -> dict[str, Any]:
    """Run every study and compute hypervolumes after N (and 2N for random) trials."""
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/se.db")
        for wname in workloads:
            wl = load_workload(wname, data_dir=data_dir)
            reference, common_latency, runs = None, None, []
            for seed in seeds:
                for sampler in samplers:
                    budget = 2 * n_trials if sampler == "random" else n_trials
                    settings = StudySettings(
                        workload=wname,
                        space_text=space.read_text(),
                        space_source=str(space),
                        target=Target(threads=1, batch_size=32),
                        sampler=sampler,
                        seed=seed,
                        data_dir=data_dir,
                        warm_start=False,  # compare the samplers alone
                    )
                    name = f"{wname}-{sampler}-{seed}"
                    started = time.time()
                    study, settings, wl, baseline = create_or_resume(
                        name, storage, settings, studies_dir=Path(tmp), workload=wl
                    )
                    if reference is None:
                        reference = reference_point(baseline, settings.max_accuracy_drop)
                        common_latency = baseline["latency_ms"]
                    run_study(study, settings, wl, baseline, n_trials=budget, studies_dir=Path(tmp))
                    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
                    history = hypervolume_history(_rescaled(done, common_latency), reference)
                    by_count = [hv for _, hv, _ in history]

                    def at(k: int, by_count: list[float] = by_count) -> float:
                        return by_count[min(k, len(by_count)) - 1] if by_count else 0.0

                    runs.append(
                        {
                            "sampler": sampler,
                            "seed": seed,
                            "trials": len(study.trials),
                            "hv_at_n": at(n_trials),
                            "hv_at_2n": at(2 * n_trials) if sampler == "random" else None,
                            "minutes": (time.time() - started) / 60,
                        }
                    )
                    print(runs[-1], flush=True)
            summary = {}
            for sampler in samplers:
                at_n = [r["hv_at_n"] for r in runs if r["sampler"] == sampler]
                summary[sampler] = {
                    "hv_at_n_mean": statistics.mean(at_n),
                    "hv_at_n_sd": statistics.pstdev(at_n),
                }
                if sampler == "random":
                    at_2n = [r["hv_at_2n"] for r in runs if r["sampler"] == "random"]
                    summary[sampler].update(
                        hv_at_2n_mean=statistics.mean(at_2n), hv_at_2n_sd=statistics.pstdev(at_2n)
                    )
            results[wname] = {
                "reference_point": np.asarray(reference).tolist(),
                "runs": runs,
                "summary": summary,
            }
    return results


def table(results: dict[str, Any], n: int) -> str:
    lines = ["| workload | sampler | hypervolume at N | hypervolume at 2N |", "|---|---|---|---|"]
    for wname, r in results.items():
        for sampler, s in r["summary"].items():
            two = (
                f"{s['hv_at_2n_mean']:.4g} ± {s['hv_at_2n_sd']:.2g}"
                if "hv_at_2n_mean" in s
                else "-"
            )
            lines.append(
                f"| {wname} | {sampler} | {s['hv_at_n_mean']:.4g} ± {s['hv_at_n_sd']:.2g} | {two} |"
            )
    return f"N = {n} trials\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["digits"])
    parser.add_argument("--n-trials", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random"])
    parser.add_argument("--space", type=Path, default=SPACES / "default.yaml")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = run(
        args.workloads,
        args.n_trials,
        args.seeds,
        args.samplers,
        args.space,
        args.data_dir,
        args.out,
    )
    path = write_results(
        "search_efficiency", {"n_trials": args.n_trials, "results": results}, args.out
    )
    (args.out / "search_efficiency.md").write_text(table(results, args.n_trials))
    print(table(results, args.n_trials))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
