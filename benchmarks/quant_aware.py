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

from autocompress.methods import Finetune, UnstructuredPruning, WeightQuantization
from autocompress.pipeline import CompressionConfig, compress, load_compressed
from autocompress.workload import load_workload
from autocompress.zoo.vision import MNIST_ENV
from benchmarks.common import RESULTS, write_results
from benchmarks.deep_compression import fp32_bytes

POINTS = ((0.92, 2), (0.92, 3), (0.92, 4), (0.92, 6))  # (unstructured amount, weight bits)


def config_of(amount: float, bits: int, epochs: int, quant_aware: bool) -> CompressionConfig:
    """One point: unstructured pruning, fine-tuning (with or without QAT), every layer at
    ``bits`` (no layer kept at 8 bits)."""
    return CompressionConfig.of(
        unstructured=UnstructuredPruning(amount),
        finetune=Finetune(
            epochs=epochs,
            batch_size=128,
            optimizer="adam",
            lr=1e-3,
            schedule="cosine",
            quant_aware=quant_aware,
        ),
        weights=WeightQuantization(bits=bits, keep_edges_8bit=False),
    )


def run(
    workload: str, data_dir: str | None, epochs: int, keep: Path | None = None
) -> list[dict[str, Any]]:
    """Each point with and without quantization-aware fine-tuning.

    Args:
        keep: A folder to keep the packed artifacts in (each row names its ``artifact``); by
            default they are deleted.
    """
    torch.set_num_threads(1)
    wl = load_workload(workload, data_dir=data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) if keep is None else Path(keep)
        folder.mkdir(parents=True, exist_ok=True)
        for amount, bits in POINTS:
            for quant_aware in (False, True):
                config = config_of(amount, bits, epochs, quant_aware)
                path = folder / f"u{amount:g}-w{bits}-{'qat' if quant_aware else 'ptq'}.acpk"
                c = compress(
                    wl.model,
                    config,
                    path,
                    task=wl.task,
                    train=wl.train,
                    example_input=wl.example_input,
                )
                # The stored model, rebuilt from its file: what ships is what is scored.
                model, _ = load_compressed(path, wl.model, wl.example_input, wl.task)
                error = 1 - wl.evaluate(model, "test")
                rows.append(
                    {
                        "amount": amount,
                        "bits": bits,
                        "quant_aware": quant_aware,
                        "test_error": error,
                        "size_bytes": c.size_bytes,
                        "compression": fp32_bytes(wl.model) / c.size_bytes,
                        "summary": config.describe(),
                        "artifact": str(path) if keep is not None else None,
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
    parser.add_argument("--keep", type=Path, default=None, help="keep the artifacts here")
    args = parser.parse_args()
    rows = run(args.workload, args.data_dir, args.epochs, args.keep)
    path = write_results("quant_aware", {"workload": args.workload, "rows": rows}, args.out)
    (args.out / "quant_aware.md").write_text(table(rows))
    print(table(rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
