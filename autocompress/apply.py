"""Apply a recipe: rebuild the compressed model from the original one, export it, re-measure it.

The rebuild is :func:`autocompress.pipeline.compress` with the recipe's configuration and seed,
so it runs the very code the study ran. Structured pruning is checked against the recipe: if
torch-pruning's magnitude choice removes other channels than the recipe recorded (another
torch-pruning version, other baseline weights), the recorded history is replayed instead.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autocompress.artifact import load_packed, save_packed
from autocompress.data import TensorData, predict_logits
from autocompress.errors import RecipeError
from autocompress.measure import deploy_for_target, measure_trial
from autocompress.pipeline import CompressedModel, CompressionConfig, compress
from autocompress.recipe import Recipe, environment_warnings, load_recipe, weights_sha256
from autocompress.steps.prune import PruneConfig, prunable_layers
from autocompress.steps.quantize import weight_bit_plan
from autocompress.study import TRIAL_LATENCY, Target
from autocompress.workload import Workload


class RecipeWarning(UserWarning):
    """The recipe applies, but its numbers may not reproduce here (other machine or versions)."""


@dataclass
class Rebuilt:
    """A recipe applied to a workload.

    Attributes:
        compressed: The compressed model, its deployable form and packed artifact.
        pruning: How structured pruning was reproduced: ``magnitude`` (recomputed, identical
            to the recipe), ``history`` (replayed from the recipe) or ``none``.
        warnings: Why the numbers may differ from the recipe's.
    """

    compressed: CompressedModel
    pruning: str
    warnings: list[str]


def kept_channels(model: nn.Module) -> dict[str, int]:
    """Output channels (or features) of every conv/linear layer, by layer name."""
    return {
        name: m.out_features if isinstance(m, nn.Linear) else m.out_channels
        for name, m in prunable_layers(model)
    }


def replay_pruning(model: nn.Module, history: list[list[Any]], example: torch.Tensor) -> None:
    """Remove exactly the channels in torch-pruning's ``history`` from ``model``, in place.

    Raises:
        RecipeError: The history names layers or channels this model does not have.
    """
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        graph.load_pruning_history(
            [(str(n), bool(o), [int(i) for i in idx]) for n, o, idx in history]
        )
    except (AttributeError, IndexError, KeyError, RuntimeError, ValueError) as e:
        raise RecipeError(
            f"the recipe's pruning history does not fit this model: {type(e).__name__}: {e}"
        ) from None


def _check_channels(model: nn.Module, recipe: Recipe) -> None:
    if recipe.kept_channels is None:
        return
    got = kept_channels(model)
    if got != recipe.kept_channels:
        diff = [
            f"{name}: {got.get(name)} != {want}"
            for name, want in recipe.kept_channels.items()
            if got.get(name) != want
        ] or [f"layers {sorted(got)} != {sorted(recipe.kept_channels)}"]
        raise RecipeError(f"replayed layer shapes differ from the recipe's: {'; '.join(diff)}")


def _compress_replaying(
    workload: Workload,
    config: CompressionConfig,
    recipe: Recipe,
    path: Path,
    teacher: torch.Tensor | None,
) -> CompressedModel:
    pruned = copy.deepcopy(workload.model).eval()
    replay_pruning(pruned, recipe.pruning_history or [], workload.example_input)
    _check_channels(pruned, recipe)
    unpruned = dataclasses.replace(config, prune=PruneConfig())
    compressed = compress(
        dataclasses.replace(workload, model=pruned), unpruned, path, teacher_logits=teacher
    )
    # Rewrite the artifact with the recipe's own config in its metadata, as the study wrote it.
    _, metadata = load_packed(path)
    metadata["config"] = config.to_dict()
    compressed.size_bytes = save_packed(
        path,
        compressed.model.state_dict(),
        weight_bits=weight_bit_plan(compressed.model, config.quantize),
        granularity=config.quantize.granularity,
        metadata=metadata,
    )
    compressed.report["channels"] = kept_channels(compressed.model)
    compressed.report["pruning_history"] = recipe.pruning_history
    return compressed


def rebuild(
    workload: Workload,
    recipe: Recipe,
    artifact_path: str | os.PathLike[str],
    *,
    replay_history: bool = False,
) -> Rebuilt:
    """Rebuild the recipe's compressed model from ``workload``'s baseline.

    Args:
        workload: The original model and its data (training split for fine-tuning and
            calibration).
        recipe: The recipe to apply.
        artifact_path: Where the packed model is written.
        replay_history: Replay structured pruning from the recipe's history without first
            trying torch-pruning's magnitude choice.

    Raises:
        RecipeError: The pruning does not fit the model or replays to other layer shapes.
    """
    notes = environment_warnings(recipe)
    if weights_sha256(workload.model) != recipe.baseline_sha256:
        notes.append(
            "the original model's weights differ from the recipe's baseline (sha256 "
            f"{recipe.baseline_sha256[:12]}...): the rebuilt model will not match its metrics"
        )
    config = recipe.config
    teacher = predict_logits(workload.model, workload.train.x) if config.distill else None
    path = Path(artifact_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    structured = recipe.pruning_history is not None
    threads = torch.get_num_threads()
    # Same thread count as the study: float sums in fine-tuning then round the same way.
    torch.set_num_threads(int(recipe.target.get("threads", threads)))
    try:
        if structured and replay_history:
            return Rebuilt(
                _compress_replaying(workload, config, recipe, path, teacher), "history", notes
            )
        compressed = compress(workload, config, path, teacher_logits=teacher)
        if not structured:
            return Rebuilt(compressed, "none", notes)
        same = compressed.report.get("pruning_history") == recipe.pruning_history
        if same and compressed.report.get("channels") == recipe.kept_channels:
            return Rebuilt(compressed, "magnitude", notes)
        notes.append("torch-pruning chose other channels here: replayed the recipe's history")
        return Rebuilt(
            _compress_replaying(workload, config, recipe, path, teacher), "history", notes
        )
    finally:
        torch.set_num_threads(threads)


def recipe_target(recipe: Recipe) -> Target:
    """The recipe's target (runtime, device, threads, batch size)."""
    t = recipe.target
    return Target(
        device=str(t.get("device", "cpu")),
        threads=int(t.get("threads", 1)),
        batch_size=int(t.get("batch_size", 32)),
        runtime=str(t.get("runtime", "torch")),
    )


def remeasure(
    workload: Workload,
    compressed: CompressedModel,
    recipe: Recipe,
    out_dir: str | os.PathLike[str],
) -> dict[str, Any]:
    """Deploy on the recipe's target; accuracy, size on disk, latency against the baseline."""
    out = Path(out_dir)
    target = recipe_target(recipe)
    baseline = deploy_for_target(workload, workload.model, out / "baseline", target)
    deployed, measured = measure_trial(
        workload, compressed, recipe.config, target, baseline, out / "model", TRIAL_LATENCY
    )
    (out / Path(baseline.path).name).unlink(missing_ok=True)
    lat = measured["latency"]
    return {
        "validation_accuracy": measured["accuracy"],
        "test_accuracy": measured["test_accuracy"],
        "size_bytes": Path(compressed.artifact_path).stat().st_size,
        "deployed": deployed.path,
        "latency_ratio_to_baseline": lat.ratio_to_reference,
        "latency_measured_median_ms": lat.median_ms,
        "latency_p90_ms": lat.p90_ms,
    }


def export_deployables(
    workload: Workload,
    compressed: CompressedModel,
    config: CompressionConfig,
    out_dir: str | os.PathLike[str],
) -> dict[str, str]:
    """Write the TorchScript (``model.pt``) and ONNX (``model.onnx``) deployable forms.

    int8 models are written as the FX int8 module (TorchScript) and as ORT static QDQ int8
    (ONNX), calibrated like the study's.

    Returns:
        For each format, the written path or ``skipped: <reason>``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, str] = {}
    for fmt, runtime in (("torchscript", "torch"), ("onnx", "onnxruntime")):
        try:
            # The ONNX exporter is chatty on stdout; its outcome is reported instead.
            with contextlib.redirect_stdout(io.StringIO()):
                deployed = deploy_for_target(
                    workload,
                    compressed.model,
                    out / "model",
                    Target(runtime=runtime),
                    config=config,
                    int8_module=compressed.deployable,
                )
            results[fmt] = f"{deployed.path} ({deployed.kind}, {deployed.size_bytes:,} bytes)"
        except Exception as e:  # noqa: BLE001 - export fails in many ways; the reason is reported
            msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # the exporter colours its text
            msg = msg.splitlines()[0] if msg else ""
            results[fmt] = f"skipped: {type(e).__name__}: {msg}"
    return results


def apply_recipe(
    model: nn.Module,
    recipe: Recipe | str | os.PathLike[str],
    data: Workload | TensorData | tuple[torch.Tensor, torch.Tensor],
    *,
    artifact_path: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Compress ``model`` as ``recipe`` says and return the deployable model.

    Args:
        model: The original (uncompressed, trained) model.
        recipe: A :class:`Recipe` or the path of a recipe file.
        data: The training data fine-tuning and calibration use: a workload or an (x, y) pair.
        artifact_path: Where to write the packed model (default: a temporary file).

    Warns:
        RecipeWarning: The recipe comes from other hardware, other library versions or another
            baseline, so its metrics may not reproduce.

    Raises:
        RecipeError: The recipe is invalid or does not fit ``model``.

    Example:
        >>> from autocompress import apply_recipe  # doctest: +SKIP
        >>> small = apply_recipe(model, "trial-7.yaml", (x_train, y_train))  # doctest: +SKIP
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if isinstance(data, Workload):
        workload = dataclasses.replace(data, model=model.eval())
    else:
        train = data if isinstance(data, TensorData) else TensorData(*data)
        workload = Workload(train=train, val=train, test=train, model=model.eval())
    with contextlib.ExitStack() as stack:
        if artifact_path is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            artifact_path = Path(tmp) / "model.acpk"
        result = rebuild(workload, recipe, artifact_path)
    for note in result.warnings:
        warnings.warn(note, RecipeWarning, stacklevel=2)
    return result.compressed.deployable
