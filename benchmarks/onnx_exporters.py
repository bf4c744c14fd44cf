"""ONNX graphs from the legacy (TorchScript) exporter and the dynamo (``torch.export``) one.

For the 8x8 digits CNN, a tiny Hugging Face BERT and a tiny GPT-2 (keyword inputs, trained
here), each exporter's graph is compared: export time, node count, file size, largest output
difference from eager PyTorch on a batch of another size (the axes are dynamic), ONNX Runtime
latency of the two graphs timed interleaved at the target batch (one thread), and, for the
transformers, the same after ONNX Runtime's transformer optimizer (its fused operators).

    python -m benchmarks.onnx_exporters [--workloads digits hf-bert hf-gpt2] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autocompress.data import gather_inputs
from autocompress.latency import LatencySettings, measure_latency
from autocompress.runtimes._onnx_tools import (
    EXPORTERS,
    export_onnx,
    feeds,
    fuse_transformer,
    session,
    transformer_type,
    with_eager_attention,
)
from autocompress.runtimes._signature import flat
from autocompress.workload import load_workload
from benchmarks.common import RESULTS, write_results

WORKLOADS = {
    "digits": "digits",
    "hf-bert": "tests.model_families:bert_workload",
    "hf-gpt2": "tests.model_families:gpt2_workload",
}
SETTINGS = LatencySettings(threads=1, min_blocks=10, max_blocks=60, max_cv=0.03)


def _graph(path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path))
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"nodes": len(model.graph.node), "bytes": path.stat().st_size, "ops": ops}


def _error(path: Path, model: torch.nn.Module, inputs: Any) -> float:
    wrapped, signature, args = flat(model, inputs)
    with torch.inference_mode():
        expected = wrapped(*args).numpy()
    got = session(path, 1).run(None, feeds(signature, inputs))[0]
    return float(np.abs(got - expected).max())


def measure(name: str, batch: int, tmp: Path) -> dict[str, Any]:
    """Both exporters on one workload."""
    torch.manual_seed(0)
    wl = load_workload(WORKLOADS[name], cache_dir=tmp / "baselines")
    model = with_eager_attention(wl.model)
    x, other = gather_inputs(wl.val, batch), gather_inputs(wl.test, 7)
    kind = transformer_type(model)
    rows: dict[str, Any] = {}
    paths: dict[str, dict[str, Path]] = {}
    for exporter in EXPORTERS:
        path = tmp / f"{name}-{exporter}.onnx"
        started = time.perf_counter()
        try:
            signature = export_onnx(model, x, path, exporter=exporter)
        except Exception as e:  # noqa: BLE001 - a failing export is a result
            rows[exporter] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            continue
        row = {"export_seconds": time.perf_counter() - started, **_graph(path)}
        row["max_abs_error_other_batch"] = _error(path, model, other)
        paths[exporter] = {"plain": path}
        if kind is not None:
            fused = tmp / f"{name}-{exporter}-fused.onnx"
            shutil.copy(path, fused)
            try:
                row["fused_ops"] = fuse_transformer(fused, kind)
                row["fused"] = _graph(fused)
                row["fused_max_abs_error_other_batch"] = _error(fused, model, other)
                paths[exporter]["fused"] = fused
            except Exception as e:  # noqa: BLE001
                row["fused_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        rows[exporter] = row
        print(name, exporter, {k: v for k, v in row.items() if k != "ops"}, flush=True)
    if len(paths) == len(EXPORTERS):
        for form in ("plain", "fused"):
            if not all(form in p for p in paths.values()):
                continue
            new = session(paths["dynamo"][form], 1)
            old = session(paths["torchscript"][form], 1)
            f = feeds(signature, x)
            r = measure_latency(
                partial(new.run, None, f),
                SETTINGS,
                reference=partial(old.run, None, f),
            )
            rows[f"ort_latency_{form}"] = {
                "dynamo_ms": r.median_ms,
                "torchscript_ms": r.reference_median_ms,
                "dynamo_over_torchscript": r.ratio_to_reference,
                "cv": r.cv,
                "stable": r.stable,
                "contended": r.contended,
            }
            print(name, form, rows[f"ort_latency_{form}"], flush=True)
    return {"workload": name, "batch": batch, "exporters": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(w, args.batch, Path(tmp)) for w in args.workloads]
    path = write_results(
        "onnx_exporters",
        {"settings": {"threads": 1, "batch": args.batch}, "results": results},
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
