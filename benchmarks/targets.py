"""Speed-up of each compression x runtime against fp32 eager PyTorch, same run, same thread.

For the built-in networks, a ResNet-20 (CIFAR shapes) and a small transformer encoder (random
weights are fine for latency), every compression is deployed on every runtime and timed
interleaved with fp32 eager PyTorch of the uncompressed model, at batch 1 and 32, one thread.
Each compression is a :class:`~autocompress.pipeline.CompressionConfig` of methods; int8 is
deployed as the configuration's :class:`~autocompress.methods.Int8` says (static: calibrated on
training inputs; dynamic: linear layers only, so only on the linear-heavy networks). An A/A
control times fp32 eager against itself: its speed-up is the noise floor of the table.

    python -m benchmarks.targets [--quick] [--networks ...] [--compressions ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress import models
from autocompress.data import TensorData, gather_inputs, input_batches
from autocompress.latency import LatencyResult, LatencySettings, measure_latency
from autocompress.measure import deploy_for_target
from autocompress.methods import Int8, StructuredPruning, UnstructuredPruning
from autocompress.objective import CALIBRATION_ROWS
from autocompress.pipeline import CompressionConfig, compress
from autocompress.settings import Target
from autocompress.workload import LoadedWorkload, Workload, prepare
from benchmarks.common import (
    RESULTS,
    TinyTransformer,
    against_reference,
    resnet20,
    write_results,
)

NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "digits-cnn": (models.digits_cnn, (1, 8, 8)),
    "lenet-300-100": (models.lenet_300_100, (1, 28, 28)),
    "lenet-5": (models.lenet5, (1, 28, 28)),
    "resnet-20": (resnet20, (3, 32, 32)),
    "transformer": (TinyTransformer, (32, 16)),
}
# Networks whose time is spent in linear layers: where dynamic int8 (linear layers only) can pay.
LINEAR_HEAVY = ("lenet-300-100", "transformer")
STATIC_INT8, DYNAMIC_INT8 = Int8(mode="static"), Int8(mode="dynamic")
COMPRESSIONS: dict[str, CompressionConfig] = {
    "fp32": CompressionConfig(),
    "unstructured-90%": CompressionConfig.of(unstructured=UnstructuredPruning(0.9)),
    "structured-50%": CompressionConfig.of(structured=StructuredPruning(0.5)),
    "structured-75%": CompressionConfig.of(structured=StructuredPruning(0.75)),
    "int8": CompressionConfig.of(int8=STATIC_INT8),
    "structured-50%+int8": CompressionConfig.of(
        structured=StructuredPruning(0.5), int8=STATIC_INT8
    ),
    "structured-75%+int8": CompressionConfig.of(
        structured=StructuredPruning(0.75), int8=STATIC_INT8
    ),
    "int8-dynamic": CompressionConfig.of(int8=DYNAMIC_INT8),
}
ONLY_FOR = {"int8-dynamic": LINEAR_HEAVY}  # compressions measured on some networks only
RUNTIMES = ("torch", "onnxruntime")
BATCHES = (1, 32)
CONTROL = "eager"  # the runtime of the A/A control rows: fp32 eager timed against itself


def _workload(factory: Callable[[], nn.Module], shape: tuple[int, ...]) -> LoadedWorkload:
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(512, *shape)
    with torch.inference_mode():
        y = model(x).argmax(1)
    data = TensorData(x, y)
    return prepare(Workload(train=data, val=data, test=data, model=model, example_input=x[:1]))


def _timing(result: LatencyResult) -> dict[str, Any]:
    """A row's figures from one interleaved measurement against fp32 eager."""
    eager_ms, ratio = against_reference(result)
    return {
        "median_ms": result.median_ms,
        "p90_ms": result.p90_ms,
        "eager_ms": eager_ms,
        "speedup": 1.0 / ratio,
        "cv": result.cv,
        "stable": result.stable,
        "contended": result.contended,
    }


def _control_rows(net: str, wl: LoadedWorkload, settings: LatencySettings) -> list[dict]:
    """fp32 eager against itself, at each batch (speed-up ~1: the table's noise floor)."""
    rows = []
    for batch in BATCHES:
        x = gather_inputs(wl.val, batch)
        r = measure_latency(partial(wl.model, x), settings, reference=partial(wl.model, x))
        row = {"network": net, "compression": "fp32", "runtime": CONTROL, "batch": batch}
        rows.append({**row, "deployed": "eager", **_timing(r)})
        print(_line(rows[-1]), flush=True)
    return rows


def _measure(
    net: str,
    cname: str,
    wl: LoadedWorkload,
    config: CompressionConfig,
    settings: LatencySettings,
    tmp: Path,
) -> list[dict]:
    """One compression of one network on every runtime and batch."""
    try:
        c = compress(
            wl.model,
            config,
            tmp / "m.acpk",
            task=wl.task,
            train=wl.train,
            example_input=wl.example_input,
        )
    except Exception as e:  # noqa: BLE001 - a failing combination is a result too
        return [{"network": net, "compression": cname, "error": str(e)[:200]}]
    int8 = config.get("int8")
    calibration = input_batches(wl.train, CALIBRATION_ROWS) if int8 is not None else None
    rows = []
    for runtime in RUNTIMES:
        for batch in BATCHES:
            row: dict[str, Any] = {
                "network": net,
                "compression": cname,
                "runtime": runtime,
                "batch": batch,
                "size_bytes": c.size_bytes,
            }
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    # The deployed form is chosen on the batch it is timed at, as in a study.
                    d = deploy_for_target(
                        wl,
                        c.model,
                        tmp / "d",
                        Target(runtime=runtime, batch_size=batch),
                        int8=int8,
                        calibration=calibration,
                    )
                x = gather_inputs(wl.val, batch)
                r = measure_latency(partial(d.run, x), settings, reference=partial(wl.model, x))
                row.update(
                    deployed=d.kind, deployed_bytes=d.size_bytes, notes=d.notes, **_timing(r)
                )
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def run(
    quick: bool,
    out_dir: Path,
    networks: list[str] | None = None,
    compressions: list[str] | None = None,
) -> Path:
    """Measure every network x compression x runtime x batch; write JSON and a table.

    Args:
        quick: A smoke run: few timing blocks; unless named, one network, three compressions.
        out_dir: Where ``targets.json`` and ``targets.md`` are written.
        networks: Names from :data:`NETWORKS` (default: all).
        compressions: Names from :data:`COMPRESSIONS` (default: all).
    """
    settings = LatencySettings(threads=1, min_block_seconds=0.05, max_blocks=20, max_cv=0.05)
    if quick:
        settings = replace(settings, min_block_seconds=0.005, min_blocks=2, max_blocks=3)
    networks = networks or list(NETWORKS)[: 1 if quick else None]
    compressions = compressions or list(COMPRESSIONS)[: 3 if quick else None]
    torch.set_num_threads(1)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for net in networks:
            wl = _workload(*NETWORKS[net])
            rows += _control_rows(net, wl, settings)
            for cname in compressions:
                if net in ONLY_FOR.get(cname, (net,)):
                    rows += _measure(net, cname, wl, COMPRESSIONS[cname], settings, Path(tmp))
    path = write_results("targets", {"settings": settings.__dict__, "rows": rows}, out_dir)
    (out_dir / "targets.md").write_text(table(rows))
    return path


def _line(row: dict) -> str:
    if "error" in row:
        return f"{row['network']:14} {row['compression']:20} {row.get('runtime', ''):12} error"
    return (
        f"{row['network']:14} {row['compression']:20} {row['runtime']:12} b={row['batch']:<3} "
        f"{row['median_ms']:8.3f} ms  x{row['speedup']:.2f}"
    )


def table(rows: list[dict]) -> str:
    """A markdown table: one line per network x compression, speed-ups per runtime and batch;
    then the A/A control (fp32 eager against itself) per network."""
    head = (
        "| network | compression | size KB | "
        + " | ".join(f"{rt} b={b}" for rt in RUNTIMES for b in BATCHES)
        + " |\n"
    )
    head += "|---|---|---|" + "---|" * (len(RUNTIMES) * len(BATCHES)) + "\n"
    by_key: dict[tuple[str, str], dict] = {}
    controls: dict[str, list[str]] = {}
    for r in rows:
        if r.get("runtime") == CONTROL:
            controls.setdefault(r["network"], []).append(f"b={r['batch']} x{r['speedup']:.2f}")
            continue
        by_key.setdefault((r["network"], r["compression"]), {})[
            (r.get("runtime"), r.get("batch"))
        ] = r
    lines = []
    for (net, comp), cells in by_key.items():
        size = next((c.get("size_bytes") for c in cells.values() if c.get("size_bytes")), None)
        vals = []
        for rt in RUNTIMES:
            for b in BATCHES:
                c = cells.get((rt, b), {})
                vals.append("n/a" if "speedup" not in c else f"x{c['speedup']:.2f}")
        size_txt = f"{size / 1000:.1f}" if size else "n/a"
        lines.append(f"| {net} | {comp} | {size_txt} | " + " | ".join(vals) + " |")
    text = head + "\n".join(lines) + "\n"
    if controls:
        text += "\nA/A control, fp32 eager timed against itself (the noise floor):\n\n"
        text += "".join(f"- {net}: {', '.join(cells)}\n" for net, cells in controls.items())
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: one network, 3 blocks")
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=None)
    parser.add_argument("--compressions", nargs="+", choices=list(COMPRESSIONS), default=None)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args()
    started = time.time()
    path = run(args.quick, args.out, args.networks, args.compressions)
    print(f"wrote {path} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
