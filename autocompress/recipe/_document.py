"""The recipe document: its fields, commented YAML form, content hash and validated loading."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import torch_pruning as tp
import yaml
from torch import nn

from autocompress import __version__
from autocompress.errors import RecipeError
from autocompress.hardware import hardware_fingerprint, same_hardware
from autocompress.pipeline import CompressionConfig
from autocompress.steps.finetune import DistillConfig, FinetuneConfig
from autocompress.steps.prune import PruneConfig
from autocompress.steps.quantize import QuantizeConfig

FORMAT_VERSION = 1
STEP_TYPES = ("prune", "finetune", "quantize")  # also the order the pipeline applies them in
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
