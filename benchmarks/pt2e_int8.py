"""cpu-torch int8 before and after PT2E: accuracy, latency and file size, same run, one thread.

Before: the deprecated ``torch.ao.quantization`` path (FX static int8 where FX traces the model,
else ``quantize_dynamic`` on linear layers; TorchScript). After: PT2E (``torch.export``,
torchao's X86 Inductor quantizer, compiled by Inductor). Both are reached through
:func:`autocompress.deploy.deploy` as a study reaches them (the "before" rows by making PT2E
unavailable, which is the fallback path; the "after" rows with the legacy form failing, since
``deploy`` keeps the faster of the two where both run the asked mode); each int8 form is timed
interleaved with the fp32 TorchScript baseline, and each PT2E form interleaved with its legacy
form, on the target batch.

    python -m benchmarks.pt2e_int8 [--workloads digits hf-bert] [--batch 32] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from autocompress.data import gather_inputs, input_batches
from autocompress.deploy import Deployed, deploy
from autocompress.errors import TrialFailure
from autocompress.latency import LatencyResult, LatencySettings, measure_latency
from autocompress.methods.int8 import Int8
from autocompress.objective import CALIBRATION_ROWS
from autocompress.workload import LoadedWorkload, load_workload
from benchmarks.common import RESULTS, write_results

WORKLOADS = {
    "digits": "digits",
    # A tiny Hugging Face BERT (random config, trained here) called with keyword inputs.
    "hf-bert": "tests.model_families:bert_workload",
}
_TORCH = "autocompress.runtimes._torch"
SETTINGS = LatencySettings(threads=1, min_blocks=10, max_blocks=60, max_cv=0.03)


def _deploy(
    wl: LoadedWorkload, out: Path, int8: Int8 | None, x: Any, legacy: bool
) -> tuple[Deployed, float]:
    calibration = input_batches(wl.train, CALIBRATION_ROWS) if int8 is not None else None
    started = time.perf_counter()
    # Each form alone: PT2E turned off (the fallback path), or the legacy form failing.
    only: AbstractContextManager[Any]
    if legacy:
        only = mock.patch(f"{_TORCH}.pt2e_unavailable", lambda: "turned off to measure")
    else:
        only = mock.patch(f"{_TORCH}._legacy_int8", side_effect=TrialFailure("turned off"))
    with only:
        d = deploy(
            wl.model, out, example_input=wl.example_input, int8=int8, calibration=calibration,
            timing_input=x, threads=1,
        )  # fmt: skip
    return d, time.perf_counter() - started


def _timing(r: LatencyResult) -> dict[str, Any]:
    return {
        "median_ms": r.median_ms,
        "p90_ms": r.p90_ms,
        "cv": r.cv,
        "stable": r.stable,
        "contended": r.contended,
        "reference_median_ms": r.reference_median_ms,
        "ratio_to_reference": r.ratio_to_reference,
    }


def measure(name: str, batch: int, tmp: Path) -> dict[str, Any]:
    """Every int8 form of one workload, with the fp32 baseline."""
    torch.manual_seed(0)
    wl = load_workload(WORKLOADS[name], cache_dir=tmp / "baselines")
    x = gather_inputs(wl.val, batch)
    fp32, _ = _deploy(wl, tmp / f"{name}-fp32", None, x, legacy=False)
    rows: dict[str, Any] = {
        "fp32": {
            "kind": fp32.kind,
            "size_bytes": fp32.size_bytes,
            "val_metric": wl.task.metric(fp32.run, wl.split("val")),
        }
    }
    deployed: dict[str, Deployed] = {}
    for mode in ("static", "dynamic"):
        for path, legacy in (("legacy", True), ("pt2e", False)):
            key = f"{path}-{mode}"
            d, seconds = _deploy(wl, tmp / f"{name}-{key}", Int8(mode=mode), x, legacy)
            deployed[key] = d
            vs_fp32 = measure_latency(partial(d.run, x), SETTINGS, reference=lambda: fp32.run(x))
            rows[key] = {
                "kind": d.kind,
                "int8_mode_ran": d.int8_mode,
                "notes": d.notes,
                "size_bytes": d.size_bytes,
                "deploy_seconds": seconds,
                "val_metric": wl.task.metric(d.run, wl.split("val")),
                "test_metric": wl.task.metric(d.run, wl.split("test")),
                "vs_fp32": _timing(vs_fp32),
            }
            print(name, key, {k: v for k, v in rows[key].items() if k != "notes"}, flush=True)
        new, old = deployed[f"pt2e-{mode}"], deployed[f"legacy-{mode}"]
        ab = measure_latency(partial(new.run, x), SETTINGS, reference=partial(old.run, x))
        rows[f"pt2e-{mode}"]["vs_legacy"] = _timing(ab)
        print(name, mode, "pt2e / legacy", ab.ratio_to_reference, flush=True)
    return {"workload": name, "batch": batch, "metric": wl.task.metric_name, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(w, args.batch, Path(tmp)) for w in args.workloads]
    path = write_results(
        "pt2e_int8",
        {"settings": {"threads": 1, "batch": args.batch, "latency": asdict(SETTINGS)},
         "results": results},
        args.out,
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
