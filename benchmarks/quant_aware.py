"""Quantization-aware fine-tuning against rounding after fine-tuning, and the artifact's size.

Fixed configurations on LeNet-300-100 (MNIST), each compressed twice, with and without
``finetune.quant_aware``, all layers quantized: test error of the stored model (reloaded from
its packed artifact) and compression (fp32 parameter bytes / artifact bytes on disk). These are
hand-chosen points to show what each mechanism does, not search results.

    python -m benchmarks.quant_aware --data-dir ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from autocompress.data import predict_logits
from autocompress.pipeline import CompressionConfig, compress, load_compressed
from autocompress.steps.finetune import FinetuneConfig
from autocompress.steps.prune import PruneConfig
from autocompress.steps.quantize import QuantizeConfig
from autocompress.workload import MNIST_ENV, load_workload
from benchmarks.common import RESULTS, write_results
from benchmarks.deep_compression import fp32_bytes

POINTS = ((0.92, 2), (0.92, 3), (0.92, 4), (0.92, 6))  # (unstructured amount, weight bits)


def run(workload: str, data_dir: str | None, epochs: int) -> list[dict[str, Any]]:
    """Each point with and without quantization-aware fine-tuning."""
    torch.set_num_threads(1)
    wl = load_workload(workload, data_dir=data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for amount, bits in POINTS:
            for quant_aware in (False, True):
                config = CompressionConfig(
                    prune=PruneConfig("unstructured", amount),
                    finetune=FinetuneConfig(
                        epochs=epochs,
                        batch_size=128,
                        optimizer="adam",
                        lr=1e-3,
                        schedule="cosine",
                        quant_aware=quant_aware,
                    ),
                    quantize=QuantizeConfig(weight_bits=bits, keep_edges_8bit=False),
                )
                path = Path(tmp) / "m.acpk"
                c = compress(wl, config, path)
                model, _ = load_compressed(path, wl.model, wl.example_input)
                error = 1 - wl.metric(predict_logits(model, wl.test.x), wl.test.y)
                rows.append(
                    {
                        "amount": amount,
                        "bits": bits,
                        "quant_aware": quant_aware,
                        "test_error": error,
                        "size_bytes": c.size_bytes,
                        "compression": fp32_bytes(wl.model) / c.size_bytes,
                        "summary": config.describe(),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| sparsity | bits | test error, rounded after | test error, quantization-aware | "
        "size KB (quantization-aware) | compression |",
        "|---|---|---|---|---|---|",
    ]
    for ptq, qat in zip(rows[::2], rows[1::2], strict=True):
        lines.append(
            f"| {ptq['amount']:.0%} | {ptq['bits']} | {ptq['test_error']:.2%} "
            f"| {qat['test_error']:.2%} | {qat['size_bytes'] / 1000:.1f} "
            f"| {qat['compression']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mnist-mlp")
    parser.add_argument("--data-dir", default=os.environ.get(MNIST_ENV))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = run(args.workload, args.data_dir, args.epochs)
    path = write_results("quant_aware", {"workload": args.workload, "rows": rows}, args.out)
    (args.out / "quant_aware.md").write_text(table(rows))
    print(table(rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
