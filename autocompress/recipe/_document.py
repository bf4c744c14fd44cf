"""The recipe document: its fields, commented YAML form, content hash, signature, loading.

A recipe is data: loading uses ``yaml.safe_load`` only, accepts only the methods of
:data:`autocompress.methods.METHODS` with their own settings, and never imports anything.
``content_sha256`` proves the file is intact (anyone can recompute it, so it proves nothing
about who wrote it); ``signature`` (HMAC-SHA256 with a key the user keeps) proves it came from
someone holding that key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import optuna
import torch
import torch_pruning as tp
import yaml
from torch import nn

from autocompress import __version__
from autocompress.errors import RecipeError
from autocompress.hardware import hardware_fingerprint, same_hardware
from autocompress.methods import METHODS
from autocompress.pipeline import CompressionConfig
from autocompress.safe_input import load_yaml, read_text
from autocompress.workload import state_sha256

FORMAT_VERSION = 2
READABLE_VERSIONS = (2,)
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
_OPTIONAL = ("signature",)
_COMMENTS = {
    "format_version": "Recipe format; this autocompress reads version 2.",
    "versions": "Libraries the study ran with (applying under other versions warns).",
    "source": "The study and trial this recipe was exported from.",
    "workload": "The original model: built-in name or package.module:function (never imported\n"
    "from a recipe: `apply` runs it only when you name it with --workload), the seed its\n"
    "baseline was trained with, and sha256 of the baseline's weights.",
    "target": "Where latency was measured: runtime, device, threads, batch size.",
    "measured_on": "The machine latency was measured on (applying elsewhere warns).",
    "seed": "Seed of fine-tuning and of every random choice in the steps.",
    "steps": "Applied in this order to a fresh copy of the original model: each a method\n"
    "with its settings; `record` is what it decided (channels removed, bits per weight) so\n"
    "that applying it reproduces the same model exactly.",
    "metrics": "Measured in the study on the validation split (test reported, never searched):\n"
    "latency is ms per batch of the deployed form, sizes are bytes on disk.",
    "baseline": "The uncompressed model, measured the same way.",
    "content_sha256": "sha256 of the canonical JSON of everything above: editing any field\n"
    "invalidates the recipe. It proves integrity, not origin.",
    "signature": "HMAC-SHA256 of content_sha256 with a key its author keeps\n"
    "(`export --sign-key FILE`); `apply --verify-key FILE` checks it.",
}


@dataclass(frozen=True)
class Recipe:
    """One trial's compression, where it came from and what it measured.

    Attributes:
        workload: Built-in workload name or ``package.module:function`` (data, never run).
        baseline_seed: Seed the workload's baseline was trained with.
        baseline_sha256: sha256 of the baseline's weights.
        config: The methods and their settings.
        records: What each method decided, by method name (replayed exactly).
        target: Runtime, device, threads and batch size latency was measured with.
        hardware: Fingerprint of the machine latency was measured on.
        versions: autocompress, torch, torch-pruning and optuna versions of the study.
        source: Study name and trial number (and the trial's one-line summary).
        metrics: The trial's measured metrics.
        baseline: The uncompressed model's metrics.
        signature: An HMAC-SHA256 of the content hash, when the recipe was signed.
    """

    workload: str
    baseline_seed: int
    baseline_sha256: str
    config: CompressionConfig
    records: dict[str, Any]
    target: dict[str, Any]
    hardware: dict[str, Any]
    versions: dict[str, str]
    source: dict[str, Any]
    metrics: dict[str, Any]
    baseline: dict[str, Any] = field(default_factory=dict)
    signature: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.workload, str) or not self.workload:
            raise RecipeError("recipe: workload reference is empty")
        if not isinstance(self.baseline_sha256, str) or len(self.baseline_sha256) != 64:
            raise RecipeError("recipe: workload.baseline_weights_sha256 is not a sha256 hex digest")
        if self.config.get("structured") is not None and "structured" not in self.records:
            raise RecipeError("recipe: structured pruning needs its record (history) to replay")

    def to_document(self) -> dict[str, Any]:
        """The recipe as a plain mapping in file order, with its content hash (and signature)."""
        doc = _plain(self._body())
        doc["content_sha256"] = content_hash(doc)
        if self.signature:
            doc["signature"] = self.signature
        return cast(dict[str, Any], doc)

    def _body(self) -> dict[str, Any]:
        steps = []
        for name, method in self.config.methods.items():
            step: dict[str, Any] = {"type": name, **method.params()}
            if name in self.records:
                step["record"] = self.records[name]
            steps.append(step)
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
            "seed": self.config.seed,
            "steps": steps,
            "metrics": self.metrics,
            "baseline": self.baseline,
        }

    def signed(self, key: bytes) -> Recipe:
        """This recipe with its HMAC-SHA256 signature under ``key``."""
        digest = content_hash(_plain(self._body()))
        mac = hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
        return _replace(self, signature=f"hmac-sha256:{mac}")

    def verify(self, key: bytes) -> None:
        """Check the signature under ``key``.

        Raises:
            RecipeError: Unsigned, or signed with another key, or edited since.
        """
        if not self.signature:
            raise RecipeError("recipe is not signed; export it with --sign-key, or apply it "
                              "without --verify-key")  # fmt: skip
        digest = content_hash(_plain(self._body()))
        want = "hmac-sha256:" + hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, self.signature):
            raise RecipeError("recipe signature does not match this key: it was signed with "
                              "another key or edited; do not apply it")  # fmt: skip


def _replace(recipe: Recipe, **changes: Any) -> Recipe:
    from dataclasses import replace

    return replace(recipe, **changes)


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
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``doc`` without hash/signature."""
    body = {k: v for k, v in doc.items() if k not in ("content_sha256", "signature")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the model's state dict: names, dtypes, shapes and raw bytes, in order."""
    return state_sha256(model.state_dict())


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

    def represent_list(self, data: Iterable[Any]) -> yaml.SequenceNode:
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
    """Write the recipe's YAML to ``path`` (parent folders created). The CLI writes through
    :func:`autocompress.safe_output.atomic_output`, which makes the write whole or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(recipe), encoding="utf-8")
    return path


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe file.

    Raises:
        RecipeError: Unreadable, malformed, unknown version, unknown step or hash mismatch.
    """
    text = read_text(path, "recipe", RecipeError)
    return loads(text, source=str(path))


def loads(text: str, source: str = "<recipe>") -> Recipe:
    """Parse and validate recipe YAML (``yaml.safe_load``: never constructs objects).

    Raises:
        RecipeError: Malformed, unknown version, missing field, unknown step or hash mismatch.
    """
    doc = load_yaml(text, f"recipe {source}", RecipeError)
    if not isinstance(doc, dict):
        raise RecipeError(f"recipe {source}: expected a mapping at the top level")
    version = doc.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise RecipeError(
            f"recipe {source}: unknown format_version {version!r}; this autocompress "
            f"({__version__}) reads format_version {', '.join(map(str, READABLE_VERSIONS))}"
        )
    missing = [k for k in _TOP_LEVEL if k not in doc]
    if missing:
        raise RecipeError(f"recipe {source}: missing field {missing[0]!r}")
    unknown = [k for k in doc if k not in _TOP_LEVEL + _OPTIONAL]
    if unknown:
        raise RecipeError(f"recipe {source}: unknown field {str(unknown[0])!r}")
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


def _steps_v2(doc: dict[str, Any], source: str) -> tuple[CompressionConfig, dict[str, Any]]:
    steps = doc["steps"]
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise RecipeError(f"recipe {source}: steps must be a list of mappings")
    methods, records = {}, {}
    for step in steps:
        name = step.get("type")
        if name not in METHODS:
            raise RecipeError(
                f"recipe {source}: unknown step type {name!r}; known: {', '.join(METHODS)}"
            )
        if name in methods:
            raise RecipeError(f"recipe {source}: step {name} appears twice")
        params = {k: v for k, v in step.items() if k not in ("type", "record")}
        try:
            methods[name] = METHODS[name].from_params(params)
        except (TypeError, ValueError) as e:
            raise RecipeError(f"recipe {source}: step {name}: {e}") from None
        if "record" in step:
            if not isinstance(step["record"], dict):
                raise RecipeError(f"recipe {source}: step {name}: record must be a mapping")
            records[name] = step["record"]
    seed = doc["seed"]
    if type(seed) is not int:
        raise RecipeError(f"recipe {source}: seed must be an integer, got {seed!r}")
    config = CompressionConfig(methods, seed)
    if [s["type"] for s in steps] != list(config.methods):
        order = ", ".join(config.methods)
        raise RecipeError(f"recipe {source}: steps must be in pipeline order: {order}")
    return config, records


def _from_document(doc: dict[str, Any], source: str) -> Recipe:
    config, records = _steps_v2(doc, source)
    workload = doc["workload"]
    if not isinstance(workload, dict):
        raise RecipeError(f"recipe {source}: workload must be a mapping")
    for key in ("versions", "source", "target", "measured_on", "metrics"):
        if not isinstance(doc[key], dict):
            raise RecipeError(f"recipe {source}: {key} must be a mapping")
    signature = doc.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise RecipeError(f"recipe {source}: signature must be text")
    return Recipe(
        workload=str(workload["reference"]),
        baseline_seed=int(workload["baseline_seed"]),
        baseline_sha256=str(workload["baseline_weights_sha256"]),
        config=config,
        records=records,
        target=dict(doc["target"]),
        hardware=dict(doc["measured_on"]),
        versions={str(k): str(v) for k, v in doc["versions"].items()},
        source=dict(doc["source"]),
        metrics=dict(doc["metrics"]),
        baseline=dict(doc["baseline"] or {}),
        signature=signature,
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
