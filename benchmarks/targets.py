"""Speed-up of each compression x runtime against fp32 eager PyTorch, same run, same thread.

For the built-in networks, a ResNet-20 (CIFAR shapes) and a small transformer encoder (random
weights are fine for latency), every compression is deployed on every runtime and timed
interleaved with fp32 eager PyTorch of the uncompressed model, at batch 1 and 32, one thread.

    python -m benchmarks.targets [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from autocompress import models
from autocompress.data import TensorData
from autocompress.latency import LatencySettings, measure_latency
from autocompress.measure import deploy_for_target
from autocompress.pipeline import CompressionConfig, compress
from autocompress.steps.prune import PruneConfig
from autocompress.steps.quantize import QuantizeConfig
from autocompress.study import Target
from autocompress.workload import Workload
from benchmarks.common import RESULTS, TinyTransformer, resnet20, write_results

NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "digits-cnn": (models.digits_cnn, (1, 8, 8)),
    "lenet-300-100": (models.lenet_300_100, (1, 28, 28)),
    "lenet-5": (models.lenet5, (1, 28, 28)),
    "resnet-20": (resnet20, (3, 32, 32)),
    "transformer": (TinyTransformer, (32, 16)),
}
INT8 = QuantizeConfig(weight_bits=8, int8_activations=True)
COMPRESSIONS = {
    "fp32": CompressionConfig(),
    "unstructured-90%": CompressionConfig(prune=PruneConfig("unstructured", 0.9)),
    "structured-50%": CompressionConfig(prune=PruneConfig("structured", 0.5)),
    "structured-75%": CompressionConfig(prune=PruneConfig("structured", 0.75)),
    "int8": CompressionConfig(quantize=INT8),
    "structured-50%+int8": CompressionConfig(prune=PruneConfig("structured", 0.5), quantize=INT8),
    "structured-75%+int8": CompressionConfig(prune=PruneConfig("structured", 0.75), quantize=INT8),
}
RUNTIMES = ("torch", "onnxruntime")


def _workload(factory: Callable[[], nn.Module], shape: tuple[int, ...]) -> Workload:
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(512, *shape)
    with torch.inference_mode():
        y = model(x).argmax(1)
    data = TensorData(x, y)
    return Workload(train=data, val=data, test=data, model=model, example_input=x[:1])


def run(quick: bool, out_dir: Path) -> Path:
    """Measure every network x compression x runtime x batch; write JSON and a table."""
    settings = LatencySettings(threads=1, min_block_seconds=0.05, max_blocks=20, max_cv=0.05)
    if quick:
        settings = replace(settings, min_block_seconds=0.005, min_blocks=2, max_blocks=3)
    networks = dict(list(NETWORKS.items())[:1]) if quick else NETWORKS
    compressions = dict(list(COMPRESSIONS.items())[:3]) if quick else COMPRESSIONS
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for net, (factory, shape) in networks.items():
            wl = _workload(factory, shape)
            for cname, config in compressions.items():
                try:
                    c = compress(wl, config, Path(tmp) / "m.acpk")
                except Exception as e:  # noqa: BLE001 - a failing combination is a result too
                    rows.append({"network": net, "compression": cname, "error": str(e)[:200]})
                    continue
                for runtime in RUNTIMES:
                    for batch in (1, 32):
                        row = {
                            "network": net,
                            "compression": cname,
                            "runtime": runtime,
                            "batch": batch,
                            "size_bytes": c.size_bytes,
                        }
                        try:
                            with contextlib.redirect_stdout(io.StringIO()):
                                d = deploy_for_target(
                                    wl,
                                    c.model,
                                    Path(tmp) / "d",
                                    Target(runtime=runtime),
                                    config=config,
                                    int8_module=c.deployable,
                                )
                            x = wl.val.x[:batch]
                            r = measure_latency(
                                lambda d=d, x=x: d.run(x),
                                settings,
                                reference=lambda x=x, m=wl.model: m(x),
                            )
                            row.update(
                                deployed=d.kind,
                                median_ms=r.median_ms,
                                p90_ms=r.p90_ms,
                                eager_ms=r.reference_median_ms,
                                speedup=1.0 / r.ratio_to_reference,
                                cv=r.cv,
                                stable=r.stable,
                                contended=r.contended,
                            )
                        except Exception as e:  # noqa: BLE001
                            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                        rows.append(row)
                        print(_line(row), flush=True)
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
    """A markdown table: one line per network x compression, speed-ups per runtime and batch."""
    head = (
        "| network | compression | size KB | "
        + " | ".join(f"{rt} b={b}" for rt in RUNTIMES for b in (1, 32))
        + " |\n"
    )
    head += "|---|---|---|" + "---|" * 4 + "\n"
    by_key: dict[tuple[str, str], dict] = {}
    for r in rows:
        by_key.setdefault((r["network"], r["compression"]), {})[
            (r.get("runtime"), r.get("batch"))
        ] = r
    lines = []
    for (net, comp), cells in by_key.items():
        size = next((c.get("size_bytes") for c in cells.values() if c.get("size_bytes")), None)
        vals = []
        for rt in RUNTIMES:
            for b in (1, 32):
                c = cells.get((rt, b), {})
                vals.append("n/a" if "speedup" not in c else f"x{c['speedup']:.2f}")
        size_txt = f"{size / 1000:.1f}" if size else "n/a"
        lines.append(f"| {net} | {comp} | {size_txt} | " + " | ".join(vals) + " |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: one network, 3 blocks")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args()
    started = time.time()
    path = run(args.quick, args.out)
    print(f"wrote {path} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
