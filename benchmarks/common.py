"""Shared bits of the benchmark scripts: reference networks, machine facts, result files."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress import __version__
from autocompress.hardware import hardware_fingerprint
from autocompress.latency import LatencyResult

RESULTS = Path(__file__).resolve().parent / "results"


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet20(num_classes: int = 10) -> nn.Module:
    """ResNet-20 for CIFAR shapes (3x32x32), He et al. 2016 (0.27M parameters)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(_Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


class TinyTransformer(nn.Module):
    """A small transformer encoder classifier: 2 layers, d=128, 4 heads, 32 tokens."""

    def __init__(self, d: int = 128, tokens: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(16, d)
        self.pos = nn.Parameter(torch.zeros(1, tokens, d))
        self.blocks = nn.Sequential(*[_EncoderBlock(d) for _ in range(2)])
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.embed(x) + self.pos)
        return self.head(h.mean(dim=1))


class _EncoderBlock(nn.Module):
    """Pre-norm encoder block written with plain linears (traceable, prunable, quantizable)."""

    def __init__(self, d: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


def against_reference(result: LatencyResult) -> tuple[float, float]:
    """``(reference median ms, ratio to the reference)`` of a measurement timed against one.

    Raises:
        ValueError: When ``result`` was measured without a reference.
    """
    if result.reference_median_ms is None or result.ratio_to_reference is None:
        raise ValueError("this latency was measured without a reference to compare with")
    return result.reference_median_ms, result.ratio_to_reference


def machine() -> dict[str, Any]:
    """Facts about this machine and the library versions, for every results file."""
    import onnxruntime
    import optuna

    return {
        **hardware_fingerprint("cpu", 1),
        "python": platform.python_version(),
        "optuna": optuna.__version__,
        "onnxruntime": onnxruntime.__version__,
        "autocompress": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_results(name: str, payload: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    """Write ``payload`` (plus machine facts) to ``out_dir/name.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str))
    return path
