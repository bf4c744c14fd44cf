"""Compute where it pays: trials per hour with and without cheap fidelities, early stopping
and per-process caching.

Runs the same study (same sampler seed, same space) for a fixed wall-clock budget on
``mnist-lenet5`` in two arms at once, each in its own process on its own core (so both see the
same machine load). The arms (``--arms``, two of):

- ``cheap first``: with ``--cheap-first``: every fine-tuning trial is first measured without
  fine-tuning and fine-tuned only if it could still reach the front
  (:mod:`autocompress.fidelity`); otherwise as the default;
- ``early stop + caching``: as autocompress runs by default: hopeless trials stopped after a
  fine-tuning epoch; the teacher's outputs, the int8 calibration batches and the deployed
  baseline built once per process;
- ``neither``: every epoch run, those three re-built in every trial.

The default pair compares cheap fidelities on and off. Reports trials per hour and the
feasible hypervolume each way (the size objective is the default, the deployed file). The
default space (``search_spaces/mnist_long.yaml``) fine-tunes every trial for 1 to 4 epochs.

    python -m benchmarks.early_stopping --data-dir ../shared/datasets/mnist --minutes 60
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from autocompress.data import input_batches
from autocompress.measure import deploy_for_target
from autocompress.objective import CALIBRATION_ROWS, Objective
from autocompress.record import is_feasible
from autocompress.report import hypervolume_history, reference_point
from autocompress.study import StudySettings, Target, create_or_resume, open_storage, run_trials
from autocompress.training import TeacherOutputs
from autocompress.workload import load_workload
from autocompress.zoo.vision import MNIST_ENV
from benchmarks.common import RESULTS, write_results

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "mnist_long.yaml"


CACHED = ("teacher", "calibration", "baseline_deployed")  # what Objective builds once


@contextmanager
def no_caching() -> Iterator[None]:
    """Make the objective rebuild what it caches per process (the teacher's outputs, the int8
    calibration batches, the deployed baseline) every time a trial asks for it."""
    saved = {name: getattr(Objective, name) for name in CACHED}
    Objective.teacher = property(  # type: ignore[method-assign,assignment]
        lambda self: TeacherOutputs(self.workload.model, self.workload.train)
    )
    Objective.calibration = property(  # type: ignore[method-assign,assignment]
        lambda self: input_batches(self.workload.train, CALIBRATION_ROWS)
    )
    Objective.baseline_deployed = property(  # type: ignore[method-assign,assignment]
        lambda self: deploy_for_target(
            self.workload, self.workload.model, self.artifact_dir / "baseline", self.settings.target
        )
    )
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(Objective, name, value)


# label: (cheap fidelity first, early stopping and per-process caching)
ARMS = {
    "cheap first": (True, True),
    "early stop + caching": (False, True),
    "neither": (False, False),
}
DEFAULT_ARMS = ("cheap first", "early stop + caching")


def run_arm(
    label: str, workload: str, data_dir: str | None, minutes: float, seed: int, space: Path
) -> dict[str, Any]:
    """One arm in its own process and study, on one thread, for ``minutes`` of wall clock."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cheap_first, smart = ARMS[label]
    wl = load_workload(workload, data_dir=data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/es.db")
        settings = StudySettings(
            workload=workload,
            space_text=space.read_text(),
            space_source=str(space),
            target=Target(threads=1, batch_size=32),
            seed=seed,
            data_dir=data_dir,
            early_stop=smart,
            cheap_first=cheap_first,
            warm_start=False,
        )
        study, settings, wl, info = create_or_resume(
            re.sub(r"[^A-Za-z0-9]+", "-", label),  # study names allow no spaces or '+'
            storage,
            settings,
            studies_dir=Path(tmp),
            workload=wl,
        )
        reference = reference_point(info)
        started = time.time()
        with nullcontext() if smart else no_caching():
            run_trials(
                study,
                settings,
                wl,
                info,
                n_trials=None,
                timeout=minutes * 60,
                studies_dir=Path(tmp),
            )
        hours = (time.time() - started) / 3600
        trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    history = hypervolume_history(done, reference, info)
    result = {
        "trials": len(trials),
        "complete": len(done),
        "feasible": sum(is_feasible(t) for t in done),
        "stopped_early": sum(t.state == TrialState.PRUNED for t in trials),
        "stopped_before_fine_tuning": sum(
            t.state == TrialState.PRUNED and t.user_attrs.get("fidelity") == "cheap" for t in trials
        ),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "hours": hours,
        "trials_per_hour": len(trials) / hours,
        "hypervolume": history[-1][1] if history else 0.0,
        # The share of the reference box (set by this arm's own baseline), comparable across
        # arms whose baselines were timed separately.
        "hypervolume_fraction": history[-1][2] if history else 0.0,
        "fine_tune_epochs_run": sum(_epochs(t) for t in done),
        "stop_reasons": [
            t.user_attrs.get("stopped_reason", "") for t in trials if t.state == TrialState.PRUNED
        ],
    }
    print(label, {k: v for k, v in result.items() if k != "stop_reasons"}, flush=True)
    return result


def _epochs(trial: FrozenTrial) -> int:
    """Fine-tuning epochs of a trial's configuration (searched or fixed by the space)."""
    methods = (trial.user_attrs.get("config") or {}).get("methods") or {}
    return int((methods.get("finetune") or {}).get("epochs", 0))


def run(
    workload: str,
    data_dir: str | None,
    minutes: float,
    seed: int,
    space: Path,
    arms: tuple[str, ...] = DEFAULT_ARMS,
) -> dict[str, Any]:
    """The arms at once, each in its own process on its own core, same seed and space."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(arms), mp_context=context) as pool:
        futures = {
            label: pool.submit(run_arm, label, workload, data_dir, minutes, seed, space)
            for label in arms
        }
        return {label: future.result() for label, future in futures.items()}


def table(results: dict[str, Any], minutes: float) -> str:
    lines = [
        f"{minutes:.0f} minutes each way\n",
        "| run | trials | trials/hour | complete | feasible | stopped (of which before "
        "fine-tuning) | fine-tuning epochs run (complete trials) | final hypervolume (share of "
        "reference box) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['trials']} | {r['trials_per_hour']:.0f} | {r['complete']} "
            f"| {r['feasible']} | {r['stopped_early']} ({r.get('stopped_before_fine_tuning', 0)}) "
            f"| {r['fine_tune_epochs_run']} "
            f"| {r['hypervolume']:.4g} ({r.get('hypervolume_fraction', 0.0):.3f}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mnist-lenet5")
    parser.add_argument("--data-dir", default=os.environ.get(MNIST_ENV))
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget each way")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--space", type=Path, default=SPACE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--arms", nargs=2, choices=list(ARMS), default=list(DEFAULT_ARMS), help="the two arms"
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = run(
        args.workload, args.data_dir, args.minutes, args.seed, args.space, tuple(args.arms)
    )
    path = write_results(
        "early_stopping",
        {
            "minutes": args.minutes,
            "workload": args.workload,
            "seed": args.seed,
            "results": results,
        },  # fmt: skip
        args.out,
    )
    (args.out / "early_stopping.md").write_text(table(results, args.minutes))
    print(table(results, args.minutes))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
