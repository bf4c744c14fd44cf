"""Measure a compressed model as it ships: deploy it on the target, then accuracy and latency."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from autocompress.deploy import Deployed, deploy
from autocompress.latency import LatencySettings, measure_latency
from autocompress.pipeline import CompressedModel, CompressionConfig
from autocompress.workload import Workload


def deploy_for_target(
    workload: Workload,
    model: nn.Module,
    out_stem: str | os.PathLike[str],
    target: Any,
    *,
    config: CompressionConfig | None = None,
    int8_module: nn.Module | None = None,
) -> Deployed:
    """Deploy ``model`` on ``target`` (runtime, device, threads), int8 when ``config`` asks."""
    int8 = config is not None and config.quantize.int8_activations
    calibration = None
    if int8 and target.runtime == "onnxruntime":
        calibration = workload.train.x[: config.quantize.calibration_size]
    return deploy(
        model,
        workload.example_input,
        out_stem,
        runtime=target.runtime,
        int8_module=int8_module if int8 else None,
        calibration_x=calibration,
        per_channel=config is None or config.quantize.granularity == "per_channel",
        threads=target.threads,
        device=target.device,
        timing_input=workload.val.x[: target.batch_size],
    )


def evaluate(workload: Workload, deployed: Deployed, split: str) -> float:
    """The workload's metric of the deployed model on ``split``."""
    data = getattr(workload, split)
    return workload.metric(deployed.predict(data.x), data.y)


def measure_trial(
    workload: Workload,
    compressed: CompressedModel,
    config: CompressionConfig,
    target: Any,
    baseline: Deployed,
    out_stem: str | os.PathLike[str],
    latency: LatencySettings,
) -> tuple[Deployed, dict[str, Any]]:
    """Deploy a trial's model and measure it against the baseline's deployed form.

    Returns:
        The deployed model and its figures: validation and test accuracy, the latency result
        of the candidate timed interleaved with ``baseline`` (same runtime, same batch).
    """
    deployed = deploy_for_target(
        workload,
        compressed.model,
        out_stem,
        target,
        config=config,
        int8_module=compressed.deployable,
    )
    x = workload.val.x[: target.batch_size].to(deployed.device)
    result = measure_latency(
        lambda: deployed.run(x),
        replace(latency, threads=target.threads),
        reference=lambda: baseline.run(x),
        synchronize=deployed.synchronize(),
    )
    return deployed, {
        "accuracy": evaluate(workload, deployed, "val"),
        "test_accuracy": evaluate(workload, deployed, "test"),
        "latency": result,
    }


def eager_latency_ms(model: nn.Module, x: torch.Tensor, latency: LatencySettings) -> float:
    """Median latency of plain eager PyTorch: the reference every speed-up is quoted against."""
    return measure_latency(lambda: model(x), latency).median_ms
