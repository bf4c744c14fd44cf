"""A trial's recipe: built from what the study recorded, saved for every feasible trial."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autocompress import __version__
from autocompress.errors import RecipeError
from autocompress.pipeline import CompressionConfig
from autocompress.recipe._document import Recipe, current_versions, save_recipe, weights_sha256
from autocompress.record import (
    allowed_worsening,
    higher_is_better,
    metric_name,
    over_budget,
    recorded_bytes,
    study_info,
)


def _num(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_recipe(study: optuna.Study, trial: FrozenTrial, baseline_model: nn.Module) -> Recipe:
    """The recipe of one completed trial of an autocompress study.

    Raises:
        RecipeError: The trial is not complete or was not recorded by autocompress.
    """
    if trial.state != TrialState.COMPLETE:
        raise RecipeError(f"trial {trial.number} is {trial.state.name}, not COMPLETE")
    return recipe_for(study, trial.number, trial.values, trial.user_attrs, baseline_model)


def recipe_for(
    study: optuna.Study,
    number: int,
    values: Sequence[float],
    attrs: dict[str, Any],
    baseline_model: nn.Module,
) -> Recipe:
    """The recipe of trial ``number`` from its objective values and user attributes.

    Raises:
        RecipeError: The trial was not recorded by autocompress.
    """
    if "config" not in attrs:
        raise RecipeError(f"trial {number} has no autocompress config")
    info = study_info(study)
    settings, base = info["settings"], info["baseline"]
    try:
        config = CompressionConfig.from_dict(attrs["config"])
    except ValueError as e:
        raise RecipeError(f"trial {number}: its configuration cannot be read ({e})") from None
    records = dict(attrs.get("records") or {})
    if not records and attrs.get("pruning_history"):  # recorded by earlier versions
        records["structured"] = {"history": attrs["pruning_history"],
                                 "channels": attrs.get("channels")}  # fmt: skip
    value, latency_ms, size_kb = values
    name = metric_name(info)
    metrics = {
        f"validation_{name}": value,
        f"test_{name}": attrs.get("test_metric", attrs.get("test_accuracy")),
        "worsening": attrs.get("worsening", attrs.get("accuracy_drop")),
        "allowed_worsening": allowed_worsening(info),
        "latency_ms": latency_ms,
        "latency_ratio_to_baseline": attrs.get("latency_ratio"),
        "latency_measured_median_ms": attrs.get("latency_measured_ms"),
        "latency_p90_ms": attrs.get("latency_p90_ms"),
        "packed_bytes": recorded_bytes(attrs, "packed"),
        "deployed_bytes": attrs.get("deployed_bytes"),
        "deployed_kind": attrs.get("deployed_kind"),
        "size_objective": info["size"],
        "size_kb": size_kb,
        "params": attrs.get("params"),
        "macs": attrs.get("macs"),
        "sparsity": attrs.get("sparsity"),
        "effective_bits": attrs.get("effective_bits"),
    }
    return Recipe(
        workload=settings["workload"],
        baseline_seed=int(settings["seed"]),
        baseline_sha256=weights_sha256(baseline_model),
        config=config,
        records=records,
        target={"runtime": "torch", **settings["target"]},
        hardware=dict(info["hardware"]),
        versions={**current_versions(), "autocompress": info.get("version", __version__)},
        source={
            "study": study.study_name,
            "trial": number,
            "summary": attrs.get("summary", config.describe()),
            "metric": name,
            "higher_is_better": higher_is_better(info),
        },
        metrics={k: _num(v) for k, v in metrics.items()},
        baseline={
            k: _num(base.get(k))
            for k in (
                "metric",
                "test_metric",
                "latency_ms",
                "latency_p90_ms",
                "packed_bytes",
                "deployed_bytes",
            )
        },  # fmt: skip
    )


class RecipeArtifacts:
    """Wraps a study's objective: each trial within the budget gets its recipe.

    The recipe is written to ``<study dir>/recipes/trial-N.yaml`` and uploaded as an artifact
    of the trial, while it still runs (a finished trial can no longer be changed), to an
    :class:`optuna.artifacts.FileSystemArtifactStore` in ``<study dir>/artifacts``; so every
    feasible, hence every Pareto, trial offers its recipe for download in optuna-dashboard.
    """

    def __init__(
        self,
        objective: Callable[[optuna.Trial], Sequence[float]],
        baseline_model: nn.Module,
        study_dir: Path,
    ) -> None:
        self.objective = objective
        self.baseline_model = baseline_model
        self.recipe_dir = Path(study_dir) / "recipes"
        artifact_dir = Path(study_dir) / "artifacts"
        artifact_dir.mkdir(parents=True, exist_ok=True)
        self.store = optuna.artifacts.FileSystemArtifactStore(artifact_dir)

    def __call__(self, trial: optuna.Trial) -> Sequence[float]:
        values = self.objective(trial)
        self._save(trial, values)
        return values

    def _save(self, trial: optuna.Trial, values: Sequence[float]) -> None:
        attrs = trial.user_attrs
        info = study_info(trial.study)
        if not values or over_budget(info, float(values[0])):
            return
        try:
            recipe = recipe_for(trial.study, trial.number, values, attrs, self.baseline_model)
            path = save_recipe(recipe, self.recipe_dir / f"trial-{trial.number}.yaml")
            optuna.artifacts.upload_artifact(
                artifact_store=self.store,
                file_path=str(path),
                study_or_trial=trial,
                mimetype="application/yaml",
            )
        except (RecipeError, OSError, ValueError, yaml.YAMLError) as e:
            # A recipe that cannot be written must not fail a measured trial.
            optuna.logging.get_logger("autocompress.recipe").warning(
                "trial %d: recipe not saved: %s", trial.number, e
            )
