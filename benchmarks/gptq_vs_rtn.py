"""GPTQ against round-to-nearest: output error of one quantized Linear layer on its inputs.

    python -m benchmarks.gptq_vs_rtn

A 64 -> 4 Linear layer sees inputs with correlated features (rank 8 plus noise), the case
GPTQ is made for: it spends each column's rounding error on the columns still to round.
Both rounding methods quantize its weights to 3 bits in groups of 32 through the `weights`
method; the figure is the mean squared error of the layer's outputs against fp32.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from autocompress.data import TensorData
from autocompress.methods.weights import WeightQuantization
from autocompress.pipeline import CompressionConfig, compress
from autocompress.tasks import Regression
from benchmarks.common import RESULTS


def run(seed: int = 0, bits: int = 3, granularity: str = "group32") -> dict[str, float]:
    """Output MSE of RTN and GPTQ at ``bits`` and ``granularity``."""
    torch.manual_seed(seed)
    x = torch.randn(512, 8) @ torch.randn(8, 64) + 0.05 * torch.randn(512, 64)
    model = torch.nn.Sequential(torch.nn.Linear(64, 4))
    with torch.no_grad():
        reference = model[0](x)
    errors = {}
    with tempfile.TemporaryDirectory() as folder:
        for algorithm in ("rtn", "gptq"):
            weights = WeightQuantization(bits, granularity, algorithm, keep_edges_8bit=False)
            c = compress(
                model,
                CompressionConfig.of(weights=weights),
                Path(folder) / f"{algorithm}.acpk",
                task=Regression(),
                train=TensorData(x, torch.zeros(512, 4)),
                example_input=x[:1],
            )
            with torch.no_grad():
                errors[algorithm] = float(((c.model.get_submodule("0")(x) - reference) ** 2).mean())
    return {**errors, "rtn_over_gptq": errors["rtn"] / errors["gptq"]}


def main() -> None:
    """Print the figures and write results/gptq_vs_rtn.json."""
    result = {"bits": 3, "granularity": "group32", **run()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gptq_vs_rtn.json").write_text(json.dumps(result, indent=1) + "\n")
    print(result)


if __name__ == "__main__":
    main()
