"""The built-in workloads, by name: each a function of an optional data folder and the folder
where trained baselines and other per-workload caches are kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autocompress.workload_spec import Workload

Builder = Callable[[Path | None, Path | None], "Workload"]


def _digits(data_dir: Path | None, cache_dir: Path | None) -> Workload:
    from autocompress.zoo.vision import digits

    return digits(data_dir)


def _minilm(data_dir: Path | None, cache_dir: Path | None) -> Workload:
    from autocompress.zoo.minilm import minilm

    return minilm(data_dir, cache_dir)


def _mnist(name: str, network: str, epochs: int, lr: float) -> Builder:
    def build(data_dir: Path | None, cache_dir: Path | None) -> Workload:
        from autocompress import models
        from autocompress.zoo.vision import mnist

        factory: Callable[[], Any] = getattr(models, network)
        return mnist(name, factory, epochs, lr)(data_dir)

    return build


def _tiny_lm(data_dir: Path | None, cache_dir: Path | None) -> Workload:
    from autocompress.zoo.tiny_lm import tiny_lm

    return tiny_lm(data_dir, cache_dir=cache_dir)


BUILTIN_WORKLOADS: dict[str, Builder] = {
    "digits": _digits,
    "mnist-mlp": _mnist("mnist-mlp", "lenet_300_100", epochs=20, lr=0.05),
    "mnist-lenet5": _mnist("mnist-lenet5", "lenet5", epochs=20, lr=0.02),
    "tiny-lm": _tiny_lm,
    "minilm": _minilm,
}
