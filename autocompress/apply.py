"""Apply a recipe: rebuild the compressed model from the original one, export it, re-measure it.

The rebuild is :func:`autocompress.pipeline.compress` with the recipe's configuration and seed,
replaying what each method decided in the study (the channels structured pruning removed,
...), so it runs the very code the study ran and reproduces the same weights. A recipe never
runs code: the workload it names is loaded only when it is built in, or when the user names it.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.data import Split, TensorData, as_split, gather_inputs
from autocompress.errors import RecipeError, reason
from autocompress.faults import machine_fault
from autocompress.hardware import torch_threads
from autocompress.measure import (
    deploy_for_target,
    measure_deployed,
    resident_memory_bytes,
    timing_input,
)
from autocompress.methods import METHODS
from autocompress.objective import CALIBRATION_ROWS, TRIAL_LATENCY
from autocompress.pipeline import CompressedModel, compress
from autocompress.recipe import Recipe, environment_warnings, load_recipe, weights_sha256
from autocompress.runtimes import RUNTIMES
from autocompress.settings import Target
from autocompress.tasks import Task, as_task
from autocompress.training import TeacherOutputs
from autocompress.workload import LoadedWorkload


class RecipeWarning(UserWarning):
    """The recipe applies, but its numbers may not reproduce here (other machine or versions)."""


@dataclass
class Rebuilt:
    """A recipe applied to a workload.

    Attributes:
        compressed: The compressed model and its packed artifact.
        warnings: Why the numbers may differ from the recipe's.
    """

    compressed: CompressedModel
    warnings: list[str]


def _check_records(recipe: Recipe, compressed: CompressedModel) -> None:
    """What the rebuild decided must be what the recipe recorded, method by method (each
    method says how its decisions compare: :meth:`autocompress.methods.Method.check_replay`)."""
    got = compressed.report["records"]
    for name, want in recipe.records.items():
        if name in METHODS:
            problem = METHODS[name].check_replay(want, got.get(name))
            if problem:
                raise RecipeError(f"{name}: {problem}")


def rebuild(
    workload: LoadedWorkload, recipe: Recipe, artifact_path: str | os.PathLike[str]
) -> Rebuilt:
    """Rebuild the recipe's compressed model from ``workload``'s baseline.

    Raises:
        RecipeError: The recipe does not fit the model, or replays to other shapes.
    """
    notes = environment_warnings(recipe)
    if weights_sha256(workload.model) != recipe.baseline_sha256:
        notes.append(
            "the original model's weights differ from the recipe's baseline (sha256 "
            f"{recipe.baseline_sha256[:12]}...): the rebuilt model will not match its metrics"
        )
    config = recipe.config
    teacher = TeacherOutputs(workload.model, workload.train) if config.get("distillation") else None
    path = Path(artifact_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same thread count as the study: float sums in fine-tuning then round the same way.
    threads = int(recipe.target.get("threads", torch.get_num_threads()))
    try:
        with torch_threads(threads):
            compressed = compress(
                workload.model,
                config,
                path,
                task=workload.task,
                train=workload.train,
                example_input=workload.example_input,
                teacher_outputs=teacher,
                replay=recipe.records,
                calibration_rows=CALIBRATION_ROWS,
                distill_data=workload.distill_data,
            )
    except RecipeError:
        raise
    except Exception as e:  # noqa: BLE001 - a recipe that does not fit is the user's to know
        if machine_fault(e) is not None:
            raise  # a full disk is not the recipe's fault
        raise RecipeError(f"the recipe does not apply to this model: {reason(e)}") from None
    _check_records(recipe, compressed)
    return Rebuilt(compressed, notes)


def recipe_target(recipe: Recipe) -> Target:
    """The recipe's target (runtime, device, threads, batch size)."""
    t = recipe.target
    return Target(
        device=str(t.get("device", "cpu")),
        threads=int(t.get("threads", 1)),
        batch_size=int(t.get("batch_size", 32)),
        runtime=str(t.get("runtime", "torch")),
    )


def _calibration(workload: LoadedWorkload, recipe: Recipe) -> list[Any] | None:
    if recipe.config.get("int8") is None:
        return None
    from autocompress.data import input_batches

    return input_batches(workload.train, CALIBRATION_ROWS)


def remeasure(
    workload: LoadedWorkload,
    compressed: CompressedModel,
    recipe: Recipe,
    out_dir: str | os.PathLike[str],
) -> dict[str, Any]:
    """Deploy on the recipe's target; metric, sizes on disk, latency against the baseline."""
    out = Path(out_dir)
    target = recipe_target(recipe)
    baseline = deploy_for_target(workload, workload.model, out / "baseline", target)
    deployed = deploy_for_target(
        workload,
        compressed.model,
        out / "model",
        target,
        int8=recipe.config.get("int8"),
        weights=recipe.config.get("weights"),
        calibration=_calibration(workload, recipe),
        runtime=recipe.config.get("runtime"),
    )
    measured = measure_deployed(workload, deployed, target, baseline, TRIAL_LATENCY)
    resident = resident_memory_bytes(
        deployed.path, timing_input(workload, target.batch_size), target.threads
    )
    Path(baseline.path).unlink(missing_ok=True)
    lat = measured["latency"]
    name = recipe.source.get("metric", "accuracy")
    return {
        f"validation_{name}": measured["metric"],
        f"test_{name}": measured["test_metric"],
        "packed_bytes": Path(compressed.artifact_path).stat().st_size,
        "deployed_bytes": deployed.size_bytes,
        "deployed_kind": deployed.kind,
        "deployed": deployed.path,
        "deployed_files": list(deployed.files),
        "latency_ratio_to_baseline": lat.ratio_to_reference,
        "latency_measured_median_ms": lat.median_ms,
        "latency_p90_ms": lat.p90_ms,
        "deployed_resident_memory_bytes": resident,
    }


def export_deployables(
    workload: LoadedWorkload,
    compressed: CompressedModel,
    recipe: Recipe,
    out_dir: str | os.PathLike[str],
    measured: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write the deployable form of every runtime installed here (``model.pt``,
    ``model.onnx``, ``model.xml`` + ``.bin``).

    With int8 in the recipe, each is the runtime's int8 form (FX static or dynamic int8 for
    TorchScript; ORT static or dynamic for ONNX; NNCF for OpenVINO), calibrated like the
    study's. The recipe's own runtime gets the recipe's runtime settings; the others their
    defaults.

    Args:
        workload: The loaded workload (calibration data, example input).
        compressed: The rebuilt compressed model.
        recipe: The recipe being applied.
        out_dir: Where the files go.
        measured: What :func:`remeasure` returned, when it ran first: the file it deployed and
            measured for the recipe's runtime is reported as it is, not written a second time.

    Returns:
        For each format, the written path with its kind and size, or ``skipped: <reason>``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, str] = {}
    threads = int(recipe.target.get("threads", 1))
    recipe_runtime = recipe.target.get("runtime", "torch")
    for runtime, cls in RUNTIMES.items():
        fmt = cls.FORMAT
        if measured is not None and runtime == recipe_runtime:
            files = measured.get("deployed_files") or [measured["deployed"]]
            results[fmt] = _listing(files, measured["deployed_kind"]) + ", measured above"
            continue
        missing = cls.available()
        if missing is not None:
            results[fmt] = f"skipped: {runtime} {missing}"
            continue
        settings = recipe.config.get("runtime") if runtime == recipe_runtime else None
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                deployed = deploy_for_target(
                    workload,
                    compressed.model,
                    out / "model",
                    Target(runtime=runtime, threads=threads),
                    int8=recipe.config.get("int8"),
                    weights=recipe.config.get("weights"),
                    calibration=_calibration(workload, recipe),
                    runtime=settings,
                )
            results[fmt] = _listing(deployed.files, deployed.kind)
        except Exception as e:  # noqa: BLE001 - export fails in many ways; the reason is reported
            if machine_fault(e) is not None:
                raise  # a full disk: no format is "skipped", the whole apply fails
            results[fmt] = f"skipped: {reason(e)}"  # the exporter's colours dropped
    return results


def _listing(files: Any, kind: str) -> str:
    """The deployed file(s) with their kind and sizes on disk, e.g.
    ``model.xml (openvino-f32, 9,812 bytes) + model.bin (48,100 bytes; 57,912 bytes in all)``."""
    sizes = [Path(f).stat().st_size for f in files]
    parts = [f"{files[0]} ({kind}, {sizes[0]:,} bytes)"]
    parts += [f"{f} ({n:,} bytes)" for f, n in zip(files[1:], sizes[1:], strict=True)]
    text = " + ".join(parts)
    return text if len(files) == 1 else text[:-1] + f"; {sum(sizes):,} bytes in all)"


def apply_recipe(
    model: nn.Module,
    recipe: Recipe | str | os.PathLike[str],
    train: Split | tuple[torch.Tensor, torch.Tensor] | Any,
    *,
    task: Task | str = "classification",
    example_input: Any = None,
    artifact_path: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Compress ``model`` as ``recipe`` says and return the compressed float model.

    Args:
        model: The original (uncompressed, trained) model.
        recipe: A :class:`Recipe` or the path of a recipe file.
        train: The training data fine-tuning and calibration use: an ``(x, y)`` pair,
            TensorData, a DataLoader or a list of batches.
        task: The model's task (as in the workload).
        example_input: One batch of inputs (default: the first training example).
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
    split = train if isinstance(train, TensorData) else as_split(train, "train")
    example = example_input if example_input is not None else gather_inputs(split, 1)
    workload = LoadedWorkload("python", model.eval(), split, split, split, as_task(task), example)
    with contextlib.ExitStack() as stack:
        if artifact_path is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            artifact_path = Path(tmp) / "model.acpk"
        result = rebuild(workload, recipe, artifact_path)
    for note in result.warnings:
        warnings.warn(note, RecipeWarning, stacklevel=2)
    return result.compressed.model
