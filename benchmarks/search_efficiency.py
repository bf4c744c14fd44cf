"""Search efficiency: feasible hypervolume after N trials, default sampler vs NSGA-II vs random.

Every study of one workload shares one reference point (the metric at the budget's limit, 1.1 x
the baseline's latency, 1.1 x its size), with latency as each trial's interleaved ratio to the
baseline and size as a ratio to the baseline's (so studies run in different processes are on
one scale). The size objective is the studies' default, the deployed file (results from before
the methods restructure used the packed artifact in KB: their hypervolumes are not comparable).
The aim: the default sampler (TPE) reaches random sampling's hypervolume at 2N within N trials.
Each (workload, seed) pair runs in its own process on one thread; ``--jobs`` sets how many at
once; ``--keep DIR`` keeps the studies.

    python -m benchmarks.search_efficiency --workloads digits mnist-mlp --n-trials 40 \
        --seeds 0 1 2 --jobs 2 --data-dir ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from autocompress.report import hypervolume_history, reference_point
from autocompress.study import StudySettings, Target, create_or_resume, open_storage, run_trials
from autocompress.workload import load_workload
from benchmarks.common import RESULTS, write_results

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


DEFAULT_SPACES = {"digits": SPACES / "default.yaml", "mnist-mlp": SPACES / "mnist.yaml"}


def _on_ratio_scale(trials: list[Any], info: dict[str, Any]) -> list[Any]:
    """Trials with latency and size as ratios to the study's baseline.

    Studies run in different processes time their baselines separately; the interleaved ratio
    is the one latency figure on the same scale in all of them. The baseline's deployed file
    differs by a few bytes between studies too (its form is chosen by timing), so size is
    divided by the study's own baseline size.
    """
    base_kb = float(info["baseline"]["size_kb"])
    out = []
    for t in trials:
        values = [t.values[0], t.user_attrs["latency_ratio"], t.values[2] / base_kb]
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


def slug(workload: str) -> str:
    """A workload reference as study and file names allow (``pkg.mod:fn`` -> ``pkg.mod_fn``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", workload)


def ratio_scale_info(info: dict[str, Any]) -> dict[str, Any]:
    """A study's record with the baseline's latency and size set to 1: the reference point of
    :func:`autocompress.report.reference_point` then takes both as ratios to the baseline."""
    return {**info, "baseline": {**info["baseline"], "latency_ms": 1.0, "size_kb": 1.0}}


def run_seed(
    wname: str,
    seed: int,
    n_trials: int,
    samplers: list[str],
    space: Path,
    data_dir: str | None,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Every sampler's study for one workload and seed, in this process, on one thread.

    Args:
        keep: A folder to keep the studies in (``<keep>/<slug>-<seed>.db``, study
            ``<slug>-<sampler>-<seed>``, :func:`slug` of the workload); by default deleted.

    Returns:
        ``{"reference_point": ..., "runs": [...]}``; the reference point is (metric at the
        budget's limit, 1.1, 1.1): latency and size are ratios to each study's baseline, so it
        is the same in every study and process.
    """
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wl = load_workload(wname, data_dir=data_dir)
    runs, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) if keep is None else Path(keep)
        folder.mkdir(parents=True, exist_ok=True)
        storage = open_storage(f"sqlite:///{folder / f'{slug(wname)}-{seed}.db'}")
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
            started = time.time()
            study, settings, wl, info = create_or_resume(
                f"{slug(wname)}-{sampler}-{seed}",
                storage,
                settings,
                studies_dir=folder,
                workload=wl,
            )
            reference = reference_point(ratio_scale_info(info))
            run_trials(study, settings, wl, info, n_trials=budget, studies_dir=folder)
            done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
            history = hypervolume_history(_on_ratio_scale(done, info), reference, info)
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
            print(wname, runs[-1], flush=True)
    return {"reference_point": np.asarray(reference).tolist(), "runs": runs}


def run(
    workloads: list[str],
    n_trials: int,
    seeds: list[int],
    samplers: list[str],
    space: Path | None,
    data_dir: str | None,
    out_dir: Path,
    jobs: int = 1,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Run every study, ``jobs`` (workload, seed) pairs at once, and summarise hypervolumes.

    Args:
        space: One space for every workload, or None for each workload's own
            (``DEFAULT_SPACES``, else ``default.yaml``).
        jobs: Processes at once; each runs one workload and seed on one thread.
        keep: A folder to keep the studies in (see :func:`run_seed`); by default deleted.
    """
    pairs = [(w, seed) for w in workloads for seed in seeds]

    def args(w: str, seed: int) -> tuple[Any, ...]:
        chosen = space or DEFAULT_SPACES.get(w, SPACES / "default.yaml")
        return (w, seed, n_trials, samplers, chosen, data_dir, keep)

    if jobs <= 1:
        outputs = [run_seed(*args(w, seed)) for w, seed in pairs]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [pool.submit(run_seed, *args(w, seed)) for w, seed in pairs]
            outputs = [f.result() for f in futures]
    results: dict[str, Any] = {}
    for wname in workloads:
        mine = [o for (w, _), o in zip(pairs, outputs, strict=True) if w == wname]
        runs = [r for o in mine for r in o["runs"]]
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
        if "random" in samplers:
            # Paired by seed: the default sampler at N against random at 2N.
            random_2n = {r["seed"]: r["hv_at_2n"] for r in runs if r["sampler"] == "random"}
            for sampler in samplers:
                if sampler != "random":
                    summary[sampler]["seeds_at_or_above_random_2n"] = sum(
                        r["hv_at_n"] >= random_2n[r["seed"]]
                        for r in runs
                        if r["sampler"] == sampler
                    )
        results[wname] = {
            "reference_point": mine[0]["reference_point"],
            "space": str(args(wname, seeds[0])[4].name),
            "runs": runs,
            "summary": summary,
        }
    return results


def table(results: dict[str, Any], n: int) -> str:
    lines = [
        "| workload (space) | sampler | hypervolume at N | hypervolume at 2N | "
        "seeds at N >= random at 2N |",
        "|---|---|---|---|---|",
    ]
    for wname, r in results.items():
        seeds = len({run["seed"] for run in r["runs"]})
        for sampler, s in r["summary"].items():
            two = (
                f"{s['hv_at_2n_mean']:.4g} ± {s['hv_at_2n_sd']:.2g}"
                if "hv_at_2n_mean" in s
                else "-"
            )
            wins = s.get("seeds_at_or_above_random_2n")
            lines.append(
                f"| {wname} ({r.get('space', '?')}) | {sampler} "
                f"| {s['hv_at_n_mean']:.4g} ± {s['hv_at_n_sd']:.2g} | {two} "
                f"| {'-' if wins is None else f'{wins} of {seeds}'} |"
            )
    return f"N = {n} trials\n\n" + "\n".join(lines) + "\n"


def summary(results: dict[str, Any], n: int, default: str = "tpe") -> dict[str, Any]:
    """The issue's one-line verdict per workload: the default sampler at N against random at 2N.

    Keyed by workload (``workload:space`` when the space is not the workload's default), with
    ``default_at_n`` and ``random_at_2n`` the means over seeds and ``seeds_default_ahead`` the
    number of seeds where the default sampler at N reached at least random's hypervolume at 2N.
    """
    out: dict[str, Any] = {}
    for wname, r in results.items():
        s = r["summary"]
        if default not in s or "random" not in s:
            continue
        own = DEFAULT_SPACES.get(wname, SPACES / "default.yaml").name
        key = wname if r.get("space") == own else f"{wname}:{Path(str(r.get('space'))).stem}"
        out[key] = {
            "n": n,
            "seeds": len({run["seed"] for run in r["runs"]}),
            "default_at_n": s[default]["hv_at_n_mean"],
            "random_at_2n": s["random"]["hv_at_2n_mean"],
            "seeds_default_ahead": s[default]["seeds_at_or_above_random_2n"],
            "default_sampler": default,
        }
    return out


def write_summary(entries: dict[str, Any], out_dir: Path) -> Path:
    """Merge ``entries`` into ``search_efficiency-summary.json`` (one key per workload)."""
    path = out_dir / "search_efficiency-summary.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(entries)
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["digits"])
    parser.add_argument("--n-trials", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random"])
    parser.add_argument(
        "--space", type=Path, default=None, help="one space for all (default: per workload)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="(workload, seed) pairs at once")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep the studies in this folder (one db each)"
    )
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
        jobs=args.jobs,
        keep=args.keep,
    )
    name = "search_efficiency-" + "-".join(args.workloads)
    if args.space is not None:  # one file per space: never overwrite the default space's results
        name += f"-{args.space.stem}"
    path = write_results(name, {"n_trials": args.n_trials, "results": results}, args.out)
    (args.out / f"{name}.md").write_text(table(results, args.n_trials))
    print(table(results, args.n_trials))
    print(f"wrote {path}")
    if "random" in args.samplers:
        print(f"wrote {write_summary(summary(results, args.n_trials), args.out)}")


if __name__ == "__main__":
    main()
