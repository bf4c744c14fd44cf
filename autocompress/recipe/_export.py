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
from autocompress.steps.quantize import weight_bit_plan
from autocompress.study import study_info


def deployed_form(config: CompressionConfig, runtime: str) -> str:
    """What is deployed on the runtime, in the words of autocompress.deploy."""
    int8 = config.quantize.int8_activations
    if runtime == "onnxruntime":
        return "onnx-qdq-int8" if int8 else "onnx-fp32"
    return "torchscript-fx-int8" if int8 else "torchscript"


def _num(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_recipe(study: optuna.Study, trial: FrozenTrial, baseline_model: nn.Module) -> Recipe:
    """The recipe of one completed trial of an autocompress study.

    Args:
        study: The study the trial belongs to.
        trial: A COMPLETE trial.
        baseline_model: The workload's baseline (fingerprinted; its layers name the bit plan).

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
    config = CompressionConfig.from_dict(attrs["config"])
    structured = config.prune.method == "structured" and config.prune.amount > 0
    accuracy, latency_ms, size_kb = values
    metrics = {
        "validation_accuracy": accuracy,
        "test_accuracy": attrs.get("test_accuracy"),
        "accuracy_drop": attrs.get("accuracy_drop"),
        "latency_ms": latency_ms,
        "latency_ratio_to_baseline": attrs.get("latency_ratio"),
        "latency_measured_median_ms": attrs.get("latency_measured_ms"),
        "latency_p90_ms": attrs.get("latency_p90_ms"),
        "size_bytes": attrs.get("size_bytes"),
        "size_kb": size_kb,
        "params": attrs.get("params"),
        "macs": attrs.get("macs"),
        "sparsity": attrs.get("sparsity"),
    }
    return Recipe(
        workload=settings["workload"],
        baseline_seed=int(settings["seed"]),
        baseline_sha256=weights_sha256(baseline_model),
        config=config,
        target={
            "runtime": "torch",
            **settings["target"],
            "deployed": attrs.get(
                "deployed_kind", deployed_form(config, settings["target"].get("runtime", "torch"))
            ),
        },
        hardware=dict(info["hardware"]),
        versions={**current_versions(), "autocompress": info.get("version", __version__)},
        source={
            "study": study.study_name,
            "trial": number,
            "summary": attrs.get("summary", config.describe()),
        },
        metrics={k: _num(v) for k, v in metrics.items()},
        baseline={
            k: _num(base.get(k))
            for k in ("accuracy", "test_accuracy", "latency_ms", "latency_p90_ms", "size_bytes")
        },
        kept_channels=dict(attrs["channels"]) if structured and attrs.get("channels") else None,
        pruning_history=attrs.get("pruning_history") if structured else None,
        bits_per_layer=weight_bit_plan(baseline_model, config.quantize),
    )


class RecipeArtifacts:
    """Wraps the study's objective: each trial within the accuracy budget gets its recipe.

    The recipe is written to ``<study dir>/recipes/trial-N.yaml`` and uploaded as an artifact
    of the trial, while it still runs (a finished trial can no longer be changed), to an
    :class:`optuna.artifacts.FileSystemArtifactStore` in ``<study dir>/artifacts``; so every
    feasible, hence every Pareto, trial offers its recipe for download in optuna-dashboard
    (``optuna-dashboard URL --artifact-dir studies/NAME/artifacts``).
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
        budget = study_info(trial.study)["settings"]["max_accuracy_drop"]
        if not attrs.get("accuracy_drop", math.inf) <= budget:
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
