"""Recipes: one trial's compression as a versioned, hashed YAML file that can be applied anywhere.

A recipe names the original model (workload reference plus a sha256 of the baseline's
weights), the target and hardware its latency was measured on, every step with all its
parameters in the order the pipeline applies them, the metrics the study measured, and a
content hash over all of that. Loading uses ``yaml.safe_load`` only, accepts only known step
types and refuses an unknown ``format_version`` or a hash mismatch (:class:`RecipeError`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import torch_pruning as tp
import yaml
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autocompress import __version__
from autocompress.errors import RecipeError
from autocompress.hardware import hardware_fingerprint, same_hardware
from autocompress.pipeline import CompressionConfig
from autocompress.steps.finetune import DistillConfig, FinetuneConfig
from autocompress.steps.prune import PruneConfig
from autocompress.steps.quantize import QuantizeConfig, weight_bit_plan
from autocompress.study import feasible_front, study_info

FORMAT_VERSION = 1
STEP_TYPES = ("prune", "finetune", "quantize")  # also the order the pipeline applies them in
OPTIMIZE = ("accuracy", "latency", "size")
_IMPORTANCE = {
    "none": "none",
    "unstructured": "l1_magnitude_global",
    "structured": "l2_magnitude_per_layer",
}
_TOP_LEVEL = (
    "format_version",
    "versions",
    "source",
    "workload",
    "target",
    "measured_on",
    "seed",
    "steps",
    "metrics",
    "baseline",
    "content_sha256",
)
_COMMENTS = {
    "format_version": "Recipe format; this autocompress reads version 1 only.",
    "versions": "Libraries the study ran with (applying under other versions warns).",
    "source": "The study and trial this recipe was exported from.",
    "workload": "The original model: built-in name or package.module:function, the seed its\n"
    "baseline was trained with, and sha256 of the baseline's weights.",
    "target": "Where latency was measured: runtime, device, threads, batch size.",
    "measured_on": "The machine latency was measured on (applying elsewhere warns).",
    "seed": "Seed of fine-tuning and of every random choice in the steps.",
    "steps": "Applied in this order to a fresh copy of the original model. Pruning keeps\n"
    "`kept_channels` output channels per layer; `history` is torch-pruning's record\n"
    "[layer, output-channels?, removed indices] that replays it exactly.",
    "metrics": "Measured in the study: accuracies are fractions, latency is ms per batch of\n"
    "the deployed form, size is the packed artifact on disk.",
    "baseline": "The uncompressed model, measured the same way.",
    "content_sha256": "sha256 of the canonical JSON of everything above: editing any field\n"
    "invalidates the recipe.",
}


@dataclass(frozen=True)
class Recipe:
    """One trial's compression, where it came from and what it measured.

    Attributes:
        workload: Built-in workload name or ``package.module:function``.
        baseline_seed: Seed the workload's baseline was trained with.
        baseline_sha256: sha256 of the baseline's weights (see :func:`weights_sha256`).
        config: The steps' parameters, as :func:`autocompress.pipeline.compress` takes them.
        target: Runtime, device, threads and batch size latency was measured with.
        hardware: Fingerprint of the machine latency was measured on.
        versions: autocompress, torch, torch-pruning and optuna versions of the study.
        source: Study name and trial number (and the trial's one-line summary).
        metrics: The trial's measured metrics.
        baseline: The uncompressed model's metrics.
        kept_channels: Output channels per conv/linear layer after structured pruning.
        pruning_history: torch-pruning's history of a structured pruning.
        bits_per_layer: Bits of each conv/linear weight.
    """

    workload: str
    baseline_seed: int
    baseline_sha256: str
    config: CompressionConfig
    target: dict[str, Any]
    hardware: dict[str, Any]
    versions: dict[str, str]
    source: dict[str, Any]
    metrics: dict[str, Any]
    baseline: dict[str, Any] = field(default_factory=dict)
    kept_channels: dict[str, int] | None = None
    pruning_history: list[list[Any]] | None = None
    bits_per_layer: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.workload:
            raise RecipeError("recipe: workload reference is empty")
        if len(self.baseline_sha256) != 64:
            raise RecipeError("recipe: workload.baseline_weights_sha256 is not a sha256 hex digest")
        if self.config.prune.method == "structured" and self.config.prune.amount > 0:
            if not self.kept_channels or not self.pruning_history:
                raise RecipeError(
                    "recipe: structured pruning needs kept_channels and history to replay"
                )

    def to_document(self) -> dict[str, Any]:
        """The recipe as a plain mapping in file order, with its content hash last."""
        doc = _plain(self._body())
        doc["content_sha256"] = content_hash(doc)
        return doc

    def _body(self) -> dict[str, Any]:
        c = self.config
        prune = {
            "type": "prune",
            "method": c.prune.method,
            "amount": c.prune.amount,
            "importance": _IMPORTANCE[c.prune.method],
            "kept_channels": self.kept_channels,
            "history": self.pruning_history,
        }
        finetune = {
            "type": "finetune",
            **vars(c.finetune),
            "distillation": vars(c.distill) if c.distill else None,
        }
        quantize = {"type": "quantize", **vars(c.quantize), "bits_per_layer": self.bits_per_layer}
        return {
            "format_version": FORMAT_VERSION,
            "versions": self.versions,
            "source": self.source,
            "workload": {
                "reference": self.workload,
                "baseline_seed": self.baseline_seed,
                "baseline_weights_sha256": self.baseline_sha256,
            },
            "target": self.target,
            "measured_on": self.hardware,
            "seed": c.seed,
            "steps": [prune, finetune, quantize],
            "metrics": self.metrics,
            "baseline": self.baseline,
        }


def _plain(obj: Any) -> Any:
    """JSON-shaped copy: tuples become lists, numbers plain Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, str):
        return str(obj)  # torch.__version__ is a str subclass YAML cannot represent
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    raise RecipeError(f"recipe: value {obj!r} of type {type(obj).__name__} cannot be stored")


def content_hash(doc: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``doc`` without its hash."""
    body = {k: v for k, v in doc.items() if k != "content_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the model's state dict: names, dtypes, shapes and raw bytes, in order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def current_versions() -> dict[str, str]:
    """The library versions in this process."""
    return {
        "autocompress": __version__,
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "optuna": optuna.__version__,
    }


class _Dumper(yaml.SafeDumper):
    """Block mappings; short lists (indices, one history entry each) on one line."""

    def represent_list(self, data: list[Any]) -> yaml.Node:
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=_depth(data) <= 2)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 99  # never inline a list of mappings
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


_Dumper.add_representer(list, _Dumper.represent_list)


def dumps(recipe: Recipe) -> str:
    """The recipe as commented YAML."""
    doc = recipe.to_document()
    lines = [
        "# autocompress recipe: how to rebuild one compressed model from the original one,",
        "# and what it measured. Apply it with: autocompress apply THIS_FILE --out DIR",
    ]
    for key, value in doc.items():
        lines.append("")
        lines += [f"# {line}" for line in _COMMENTS[key].splitlines()]
        lines.append(yaml.dump({key: value}, Dumper=_Dumper, sort_keys=False, width=100).rstrip())
    return "\n".join(lines) + "\n"


def save_recipe(recipe: Recipe, path: str | os.PathLike[str]) -> Path:
    """Write the recipe's YAML to ``path`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(recipe), encoding="utf-8")
    return path


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe file.

    Raises:
        RecipeError: Unreadable, malformed, unknown version, unknown step or hash mismatch.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"cannot read recipe {str(path)!r}: {e.strerror or e}") from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "<recipe>") -> Recipe:
    """Parse and validate recipe YAML (``yaml.safe_load``: never constructs objects).

    Raises:
        RecipeError: Malformed, unknown version, missing field, unknown step or hash mismatch.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {source}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise RecipeError(f"recipe {source}: expected a mapping at the top level")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise RecipeError(
            f"recipe {source}: unknown format_version {version!r}; this autocompress "
            f"({__version__}) reads format_version {FORMAT_VERSION}"
        )
    missing = [k for k in _TOP_LEVEL if k not in doc]
    if missing:
        raise RecipeError(f"recipe {source}: missing field {missing[0]!r}")
    unknown = [k for k in doc if k not in _TOP_LEVEL]
    if unknown:
        raise RecipeError(f"recipe {source}: unknown field {unknown[0]!r}")
    if content_hash(doc) != doc["content_sha256"]:
        raise RecipeError(
            f"recipe {source}: content_sha256 does not match its content (edited or "
            "corrupted); export it again from the study"
        )
    try:
        return _from_document(doc, source)
    except RecipeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
        raise RecipeError(f"recipe {source}: {what}") from None


def _steps(doc: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    steps = doc["steps"]
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise RecipeError(f"recipe {source}: steps must be a list of mappings")
    types = [s.get("type") for s in steps]
    for t in types:
        if t not in STEP_TYPES:
            raise RecipeError(
                f"recipe {source}: unknown step type {t!r}; known: {', '.join(STEP_TYPES)}"
            )
    if types != list(STEP_TYPES):
        raise RecipeError(
            f"recipe {source}: steps must be {', '.join(STEP_TYPES)} once each, in that "
            f"order; got {', '.join(map(str, types))}"
        )
    return {s["type"]: {k: v for k, v in s.items() if k != "type"} for s in steps}


def _take(step: dict[str, Any], name: str, keys: tuple[str, ...], source: str) -> dict[str, Any]:
    missing = [k for k in keys if k not in step]
    if missing:
        raise RecipeError(f"recipe {source}: step {name} is missing field {missing[0]!r}")
    extra = [k for k in step if k not in keys]
    if extra:
        raise RecipeError(f"recipe {source}: step {name} has unknown field {extra[0]!r}")
    return step


def _fields(cls: type) -> tuple[str, ...]:
    return tuple(cls.__dataclass_fields__)


def _from_document(doc: dict[str, Any], source: str) -> Recipe:
    steps = _steps(doc, source)
    prune = _take(
        steps["prune"],
        "prune",
        ("method", "amount", "importance", "kept_channels", "history"),
        source,
    )
    finetune = _take(
        steps["finetune"], "finetune", (*_fields(FinetuneConfig), "distillation"), source
    )
    quantize = _take(
        steps["quantize"], "quantize", (*_fields(QuantizeConfig), "bits_per_layer"), source
    )
    prune_config = PruneConfig(method=prune["method"], amount=prune["amount"])
    if prune["importance"] != _IMPORTANCE[prune_config.method]:
        raise RecipeError(
            f"recipe {source}: pruning importance {prune['importance']!r} is not supported for "
            f"{prune_config.method} pruning (expected {_IMPORTANCE[prune_config.method]!r})"
        )
    distill = finetune.pop("distillation")
    config = CompressionConfig(
        prune=prune_config,
        finetune=FinetuneConfig(**finetune),
        distill=DistillConfig(**distill) if distill else None,
        quantize=QuantizeConfig(**{k: v for k, v in quantize.items() if k != "bits_per_layer"}),
        seed=int(doc["seed"]),
    )
    workload = doc["workload"]
    return Recipe(
        workload=str(workload["reference"]),
        baseline_seed=int(workload["baseline_seed"]),
        baseline_sha256=str(workload["baseline_weights_sha256"]),
        config=config,
        target=dict(doc["target"]),
        hardware=dict(doc["measured_on"]),
        versions=dict(doc["versions"]),
        source=dict(doc["source"]),
        metrics=dict(doc["metrics"]),
        baseline=dict(doc["baseline"] or {}),
        kept_channels=prune["kept_channels"],
        pruning_history=prune["history"],
        bits_per_layer=dict(quantize["bits_per_layer"] or {}),
    )


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


@dataclass(frozen=True)
class Selection:
    """Which trial to export: a number, or a rule over the feasible Pareto front.

    Attributes:
        trial: A trial number (any COMPLETE trial); the rule below is then not used.
        min_accuracy: Keep front trials with validation accuracy at least this.
        max_latency_ms: Keep front trials with latency at most this.
        max_size_kb: Keep front trials with size at most this.
        optimize: Among those kept, the best by ``accuracy`` (max), ``latency`` or ``size`` (min).
    """

    trial: int | None = None
    min_accuracy: float | None = None
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    optimize: str = "accuracy"

    def __post_init__(self) -> None:
        if self.optimize not in OPTIMIZE:
            raise RecipeError(f"cannot optimize {self.optimize!r}; use one of {OPTIMIZE}")
        if self.trial is not None and self.trial < 0:
            raise RecipeError(f"--trial {self.trial}: trial numbers start at 0")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise RecipeError(f"--min-accuracy {self.min_accuracy}: use a fraction in [0, 1]")

    def describe(self) -> str:
        """The rule in words."""
        if self.trial is not None:
            return f"trial {self.trial}"
        limits = [
            f"accuracy >= {self.min_accuracy}" if self.min_accuracy is not None else "",
            f"latency <= {self.max_latency_ms} ms" if self.max_latency_ms is not None else "",
            f"size <= {self.max_size_kb} KB" if self.max_size_kb is not None else "",
        ]
        best = "most accurate" if self.optimize == "accuracy" else f"smallest {self.optimize}"
        where = " and ".join(x for x in limits if x)
        return f"{best} feasible Pareto trial" + (f" with {where}" if where else "")


def select_trial(study: optuna.Study, selection: Selection) -> FrozenTrial:
    """The trial ``selection`` picks.

    Raises:
        RecipeError: No such complete trial, or no front trial meets the rule.
    """
    if selection.trial is not None:
        for t in study.get_trials(deepcopy=False):
            if t.number == selection.trial:
                if t.state != TrialState.COMPLETE:
                    raise RecipeError(
                        f"trial {t.number} of study {study.study_name!r} is {t.state.name}; "
                        "only COMPLETE trials have a recipe"
                    )
                return t
        raise RecipeError(f"study {study.study_name!r} has no trial {selection.trial}")
    front = feasible_front(study)
    kept = [
        t
        for t in front
        if (selection.min_accuracy is None or t.values[0] >= selection.min_accuracy)
        and (selection.max_latency_ms is None or t.values[1] <= selection.max_latency_ms)
        and (selection.max_size_kb is None or t.values[2] <= selection.max_size_kb)
    ]
    if not kept:
        raise RecipeError(
            f"no trial of study {study.study_name!r} is the {selection.describe()} "
            f"({len(front)} on the feasible front); relax the rule or pass --trial N"
        )
    order = {
        "accuracy": lambda t: (-t.values[0], t.values[1], t.values[2]),
        "latency": lambda t: (t.values[1], -t.values[0], t.values[2]),
        "size": lambda t: (t.values[2], -t.values[0], t.values[1]),
    }[selection.optimize]
    return min(kept, key=order)


def environment_warnings(recipe: Recipe, device: str | None = None) -> list[str]:
    """Differences between the recipe's measuring environment and this one, in words."""
    warnings: list[str] = []
    here = current_versions()
    for lib, version in recipe.versions.items():
        if lib in here and here[lib] != version:
            warnings.append(
                f"recipe made with {lib} {version}, this is {here[lib]}: results may differ"
            )
    target = recipe.target
    mine = hardware_fingerprint(device or target.get("device", "cpu"), target.get("threads", 1))
    if not same_hardware(recipe.hardware, mine):
        warnings.append(
            f"recipe latency was measured on {recipe.hardware.get('cpu', '?')} "
            f"({recipe.hardware.get('logical_cores', '?')} cores), this is {mine['cpu']} "
            f"({mine['logical_cores']} cores): compare latency ratios, not milliseconds"
        )
    return warnings


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
            optuna.logging.get_logger(__name__).warning(
                "trial %d: recipe not saved: %s", trial.number, e
            )
