"""What is being compressed: the baseline model, its three data splits, an example input, a metric.

A workload is a built-in name (``digits``, ``mnist-mlp``, ``mnist-lenet5``) or a user's
``package.module:function`` returning a :class:`Workload`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autocompress import models
from autocompress.data import TensorData, predict_logits, top1_accuracy
from autocompress.errors import TrialFailure, WorkloadError
from autocompress.idx import read_idx
from autocompress.steps.finetune import FinetuneConfig, finetune

MNIST_ENV = "AUTOCOMPRESS_MNIST_DIR"
DEFAULT_CACHE_DIR = Path("studies") / "baselines"


@dataclass
class Workload:
    """A model to compress and the data to judge it by.

    Give either a trained ``model``, or a ``model_factory`` plus ``baseline_training`` and the
    baseline is trained once and cached.

    Attributes:
        train: Fine-tuning data. Never used to choose between trials.
        val: The split whose metric the search optimises.
        test: Held out: reported per trial, never steers the search.
        model: A trained model.
        model_factory: Builds an untrained model (also used to rebuild compressed ones).
        baseline_training: How to train the factory's model into the baseline.
        example_input: One batch the model accepts (defaults to the first training example).
        metric: ``metric(logits, labels) -> float``, higher is better (default top-1 accuracy).
        name: The reference the workload was loaded from.
    """

    train: TensorData
    val: TensorData
    test: TensorData
    model: nn.Module | None = None
    model_factory: Callable[[], nn.Module] | None = None
    baseline_training: FinetuneConfig | None = None
    example_input: torch.Tensor | None = None
    metric: Callable[[torch.Tensor, torch.Tensor], float] = top1_accuracy
    name: str = "custom"
    info: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            value = getattr(self, split)
            if isinstance(value, tuple | list) and len(value) == 2:
                setattr(self, split, TensorData(*value))
            elif not isinstance(value, TensorData):
                raise WorkloadError(
                    f"workload {self.name!r}: {split} must be TensorData or an (x, y) tensor pair"
                )
        if self.model is None and (self.model_factory is None or self.baseline_training is None):
            raise WorkloadError(
                f"workload {self.name!r}: give a trained `model`, or `model_factory` "
                "together with `baseline_training`"
            )
        if self.example_input is None:
            self.example_input = self.train.x[:1]

    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        """The workload's metric of ``model`` on ``split`` (``train``, ``val`` or ``test``)."""
        data: TensorData = getattr(self, split)
        return self.metric(predict_logits(model, data.x), data.y)


def _digits(data_dir: Path | None) -> Workload:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    idx = np.arange(len(y))
    train_idx, rest = train_test_split(idx, test_size=0.4, random_state=0, stratify=digits.target)
    val_idx, test_idx = train_test_split(
        rest, test_size=0.5, random_state=0, stratify=digits.target[rest]
    )

    def split(i: np.ndarray) -> TensorData:
        return TensorData(x[i], y[i])

    return Workload(
        name="digits",
        train=split(train_idx),
        val=split(val_idx),
        test=split(test_idx),
        model_factory=models.digits_cnn,
        baseline_training=FinetuneConfig(
            epochs=40, batch_size=32, optimizer="adam", lr=2e-3, schedule="cosine"
        ),
        info={"data": "scikit-learn load_digits, 60/20/20 stratified split, seed 0"},
    )


def mnist_splits(data_dir: Path | None) -> tuple[TensorData, TensorData, TensorData]:
    """MNIST from its IDX ``.gz`` files: train 55k, validation 5k (last of train), test 10k."""
    if data_dir is None:
        env = os.environ.get(MNIST_ENV)
        if not env:
            raise WorkloadError(
                f"MNIST workloads need the IDX files: pass --data-dir DIR or set {MNIST_ENV}=DIR"
            )
        data_dir = Path(env)
    data_dir = Path(data_dir)

    def load(stem: str) -> np.ndarray:
        for name in (f"{stem}.gz", stem):
            if (data_dir / name).exists():
                return read_idx(data_dir / name)
        raise WorkloadError(f"{stem}(.gz) not found in {data_dir}; point --data-dir at MNIST")

    def images(a: np.ndarray) -> torch.Tensor:
        t = torch.tensor(a, dtype=torch.float32).unsqueeze(1) / 255.0
        return (t - 0.1307) / 0.3081

    x_train = images(load("train-images-idx3-ubyte"))
    y_train = torch.tensor(load("train-labels-idx1-ubyte"), dtype=torch.long)
    x_test = images(load("t10k-images-idx3-ubyte"))
    y_test = torch.tensor(load("t10k-labels-idx1-ubyte"), dtype=torch.long)
    n_val = 5000
    return (
        TensorData(x_train[:-n_val], y_train[:-n_val]),
        TensorData(x_train[-n_val:], y_train[-n_val:]),
        TensorData(x_test, y_test),
    )


def _mnist(name: str, factory: Callable[[], nn.Module], epochs: int, lr: float) -> Callable:
    def build(data_dir: Path | None) -> Workload:
        train, val, test = mnist_splits(data_dir)
        return Workload(
            name=name,
            train=train,
            val=val,
            test=test,
            model_factory=factory,
            baseline_training=FinetuneConfig(
                epochs=epochs,
                batch_size=128,
                optimizer="sgd",
                lr=lr,
                schedule="cosine",
                warmup_fraction=0.05,
                weight_decay=5e-4,
            ),
            info={"data": "MNIST IDX files: train 55k / validation 5k / test 10k"},
        )

    return build


BUILTIN_WORKLOADS: dict[str, Callable[[Path | None], Workload]] = {
    "digits": _digits,
    "mnist-mlp": _mnist("mnist-mlp", models.lenet_300_100, epochs=20, lr=0.05),
    "mnist-lenet5": _mnist("mnist-lenet5", models.lenet5, epochs=20, lr=0.02),
}


def _import_user_workload(ref: str) -> Workload:
    module_name, _, func_name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise WorkloadError(
            f"workload {ref!r}: cannot import module {module_name!r} ({type(e).__name__}: {e})"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise WorkloadError(
            f"workload {ref!r}: module {module_name!r} has no function {func_name!r}"
        )
    try:
        result = func()
    except WorkloadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise WorkloadError(
            f"workload {ref!r}: {func_name}() raised {type(e).__name__}: {e}"
        ) from None
    if not isinstance(result, Workload):
        raise WorkloadError(
            f"workload {ref!r}: {func_name}() returned {type(result).__name__}, "
            "expected autocompress.workload.Workload"
        )
    result.name = ref
    return result


def _baseline_cache_key(workload: Workload, seed: int) -> str:
    payload = json.dumps(
        {
            "name": workload.name,
            "training": repr(workload.baseline_training),
            "model": repr(workload.model_factory()),
            "sizes": [len(workload.train), len(workload.val), len(workload.test)],
            "train_sum": float(workload.train.x.double().sum()),
            "seed": seed,
            "torch": torch.__version__.split("+")[0],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _train_baseline(workload: Workload, cache_dir: Path | None, seed: int) -> nn.Module:
    model = workload.model_factory()
    path = None
    if cache_dir is not None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", workload.name)
        path = Path(cache_dir) / f"{safe}-{_baseline_cache_key(workload, seed)}.pt"
        if path.exists():
            try:
                model.load_state_dict(torch.load(path, weights_only=True))
                return model.eval()
            except Exception:  # noqa: BLE001 - a bad cache file is retrained, not fatal
                path.unlink(missing_ok=True)
    torch.manual_seed(seed)
    model = workload.model_factory()
    try:
        finetune(model, workload.train, workload.baseline_training, seed=seed)
    except TrialFailure as e:
        raise WorkloadError(
            f"workload {workload.name!r}: training the baseline failed ({e}); "
            "give a trained model or a gentler baseline_training"
        ) from None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return model.eval()


def _check_shapes(workload: Workload) -> None:
    try:
        with torch.inference_mode():
            out = workload.model.eval()(workload.val.x[:2])
    except Exception as e:  # noqa: BLE001
        raise WorkloadError(
            f"workload {workload.name!r}: the model cannot run on the validation data "
            f"(input shape {tuple(workload.val.x.shape[1:])}): {type(e).__name__}: {e}"
        ) from None
    if out.ndim != 2:
        raise WorkloadError(
            f"workload {workload.name!r}: model output has shape {tuple(out.shape)}, "
            "expected [batch, classes]"
        )
    n_classes = out.shape[1]
    for split in ("train", "val", "test"):
        data: TensorData = getattr(workload, split)
        if data.x.shape[1:] != workload.val.x.shape[1:]:
            raise WorkloadError(
                f"workload {workload.name!r}: {split} inputs have shape {tuple(data.x.shape[1:])} "
                f"but validation inputs have {tuple(workload.val.x.shape[1:])}"
            )
        if data.y.dtype != torch.long or int(data.y.min()) < 0 or int(data.y.max()) >= n_classes:
            raise WorkloadError(
                f"workload {workload.name!r}: {split} labels must be int64 class indices in "
                f"[0, {n_classes}) for a model with {n_classes} outputs"
            )


def load_workload(
    ref: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
    seed: int = 0,
) -> Workload:
    """Resolve ``ref`` to a workload with a trained baseline in eval mode.

    Args:
        ref: A built-in name or ``package.module:function``.
        data_dir: Where MNIST's IDX files are (built-in MNIST workloads).
        cache_dir: Where trained baselines are cached; ``None`` disables the cache.
        seed: Seed of the baseline's training.

    Raises:
        WorkloadError: Unknown name, import failure, wrong return type or wrong data shapes.
    """
    if ref in BUILTIN_WORKLOADS:
        workload = BUILTIN_WORKLOADS[ref](Path(data_dir) if data_dir else None)
    elif ":" in ref:
        workload = _import_user_workload(ref)
    else:
        raise WorkloadError(
            f"unknown workload {ref!r}: use one of {', '.join(BUILTIN_WORKLOADS)} "
            "or package.module:function"
        )
    if workload.model is None:
        workload.model = _train_baseline(workload, Path(cache_dir) if cache_dir else None, seed)
    workload.model.eval()
    _check_shapes(workload)
    return workload
