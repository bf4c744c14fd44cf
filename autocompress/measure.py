"""Measure a model as it ships: deploy it on the target, then its metric and latency."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from torch import nn

from autocompress.data import Inputs, call_model, gather_inputs, map_tensors
from autocompress.deploy import Deployed, deploy
from autocompress.latency import LatencyResult, LatencySettings, measure_latency
from autocompress.noise import bootstrap_se
from autocompress.workload import LoadedWorkload


def timing_input(workload: LoadedWorkload, batch_size: int) -> Inputs:
    """The batch latency is measured on: ``batch_size`` validation examples."""
    return gather_inputs(workload.val, batch_size)


def deploy_for_target(
    workload: LoadedWorkload,
    model: nn.Module,
    out_stem: str | os.PathLike[str],
    target: Any,
    *,
    int8: Any = None,
    weights: Any = None,
    calibration: list[Inputs] | None = None,
    runtime: Any = None,
) -> Deployed:
    """Deploy ``model`` on ``target`` (runtime, device, threads): int8 when ``int8`` is given,
    low-bit weight-only kernels where the runtime has them for ``weights``, the runtime's
    settings from the configuration's ``runtime`` entry (its defaults without one)."""
    return deploy(
        model,
        out_stem,
        example_input=workload.example_input,
        runtime=target.runtime_unit(runtime),
        int8=int8,
        weights=weights,
        calibration=calibration,
        threads=target.threads,
        device=target.device,
        timing_input=timing_input(workload, target.batch_size),
    )


def evaluate(workload: LoadedWorkload, deployed: Deployed, split: str) -> float:
    """The workload's metric of the deployed model on ``split``."""
    return workload.task.metric(deployed.run, workload.split(split))


def evaluate_with_noise(
    workload: LoadedWorkload, deployed: Deployed, split: str
) -> tuple[float, float | None, int | None]:
    """The metric on ``split`` in one pass, its bootstrap standard error over items and the
    number of items; ``None`` for both where the task has no per-item values."""
    task, data = workload.task, workload.split(split)
    items = task.item_values(deployed.run, data)
    if items is None:
        return task.metric(deployed.run, data), None, None
    return items.value(), bootstrap_se(items), len(items)


def time_against(
    deployed: Deployed,
    reference: Deployed,
    inputs: Inputs,
    latency: LatencySettings,
    threads: int,
) -> LatencyResult:
    """Latency of ``deployed`` timed interleaved with ``reference`` on the same batch."""
    x = map_tensors(inputs, lambda t: t.to(deployed.device))
    return measure_latency(
        lambda: deployed.run(x),
        replace(latency, threads=threads),
        reference=lambda: reference.run(x),
        synchronize=deployed.synchronize(),
    )


def measure_deployed(
    workload: LoadedWorkload,
    deployed: Deployed,
    target: Any,
    baseline: Deployed,
    latency: LatencySettings,
    *,
    test: bool = True,
) -> dict[str, Any]:
    """Validation and test metric of a deployed model (test ``None`` when ``test`` is false),
    and its latency against the baseline's deployed form (same runtime, same batch,
    interleaved)."""
    result = time_against(
        deployed, baseline, timing_input(workload, target.batch_size), latency, target.threads
    )
    return {
        "metric": evaluate(workload, deployed, "val"),
        "test_metric": evaluate(workload, deployed, "test") if test else None,
        "latency": result,
    }


def eager_latency_ms(model: nn.Module, inputs: Inputs, latency: LatencySettings) -> float:
    """Median latency of plain eager PyTorch: the reference every speed-up is quoted against."""
    return measure_latency(lambda: call_model(model, inputs), latency).median_ms


_PEAK_PROBE = """
import gc, os, sys, torch
from autocompress.runtimes import runtime_for_file
torch.set_num_threads(int(sys.argv[3]))
inputs = torch.load(sys.argv[2], weights_only=True)
path = sys.argv[1]
runtime = runtime_for_file(path)()
import importlib.util  # the runtime's library imported before the first reading, like torch
for name in ("onnxruntime", "openvino"):
    if importlib.util.find_spec(name):
        importlib.import_module(name)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
gc.collect()
before = rss()
run = runtime.load(path, int(sys.argv[3]))
with torch.inference_mode():
    for _ in range(3):
        run(inputs)
print(rss() - before)
"""


def resident_memory_bytes(
    path: str | os.PathLike[str], inputs: Inputs, threads: int = 1
) -> int | None:
    """Resident memory the deployed model takes once loaded and run on ``inputs`` (weights,
    arenas, activations kept), in a fresh process, above that process's own after its imports;
    ``None`` where it cannot be measured (no ``/proc``, the probe failed)."""
    import subprocess
    import sys
    import tempfile

    if not os.path.exists("/proc/self/statm"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "inputs.pt")
        import torch

        torch.save(inputs, saved)
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_PROBE, str(path), saved, str(threads)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if done.returncode != 0:
        return None
    try:
        return max(0, int(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return None
