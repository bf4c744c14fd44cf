"""Runtimes, one file each, and the one dict that lists them.

Each runtime is a frozen dataclass (its own settings) declaring its searchable parameters
(``SEARCH``), the devices it runs on, which settings of the ``int8`` method it reads, how it
deploys a PyTorch model to its file(s) and how it loads them back; see
:mod:`autocompress.runtimes._base`. Targets (``cpu-openvino``), the search space's
``runtime`` section, trial labels, recipes and ``apply`` read :data:`RUNTIMES`. To add a
runtime: write its file, add one entry here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from autocompress.data import Inputs
from autocompress.runtimes._base import Deployed, DeployRequest, Runtime, has_attention
from autocompress.runtimes._onnxruntime import OnnxRuntime
from autocompress.runtimes._openvino import OpenVINO
from autocompress.runtimes._torch import TorchRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    "torch": TorchRuntime,
    "onnxruntime": OnnxRuntime,
    "openvino": OpenVINO,
}

__all__ = [
    "RUNTIMES",
    "Deployed",
    "DeployRequest",
    "OnnxRuntime",
    "OpenVINO",
    "Runtime",
    "TorchRuntime",
    "has_attention",
    "load_deployed",
    "runtime_for_file",
    "targets",
]


def targets() -> tuple[str, ...]:
    """Every target name, ``<device>-<runtime>``: the CPU ones first."""
    names = [(d, r) for r, cls in RUNTIMES.items() for d in cls.DEVICES]
    return tuple(f"{d}-{r}" for d, r in sorted(names, key=lambda dr: dr[0] != "cpu"))


def runtime_for_file(path: str | os.PathLike[str]) -> type[Runtime]:
    """The runtime that loads a deployed file, by its suffix.

    Raises:
        ValueError: No runtime writes files with that suffix.
    """
    suffix = Path(path).suffix
    for cls in RUNTIMES.values():
        if suffix in cls.SUFFIXES:
            return cls
    known = ", ".join(s for cls in RUNTIMES.values() for s in cls.SUFFIXES)
    raise ValueError(f"{path}: not a deployed file autocompress writes ({known})")


def load_deployed(
    path: str | os.PathLike[str], threads: int = 1
) -> Callable[[Inputs], torch.Tensor]:
    """A deployed file (``.pt``, ``.onnx``, ``.xml``) as a callable on the model's inputs,
    compiled as it was measured."""
    return runtime_for_file(path)().load(path, threads)
