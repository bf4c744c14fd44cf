"""Built-in image workloads: scikit-learn's 8x8 digits, and MNIST's reference networks."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autocompress import models
from autocompress.data import TensorData
from autocompress.errors import WorkloadError
from autocompress.idx import read_idx
from autocompress.training import TrainingConfig
from autocompress.workload_spec import Workload

MNIST_ENV = "AUTOCOMPRESS_MNIST_DIR"


def digits(data_dir: Path | None) -> Workload:
    """scikit-learn's bundled 8x8 digits (60/20/20 stratified split) and a small CNN."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    idx = np.arange(len(y))
    train_idx, rest = train_test_split(idx, test_size=0.4, random_state=0, stratify=data.target)
    val_idx, test_idx = train_test_split(
        rest, test_size=0.5, random_state=0, stratify=data.target[rest]
    )

    def split(i: np.ndarray) -> TensorData:
        return TensorData(x[i], y[i])

    return Workload(
        name="digits",
        train=split(train_idx),
        val=split(val_idx),
        test=split(test_idx),
        model_factory=models.digits_cnn,
        baseline_training=TrainingConfig(
            epochs=40, batch_size=32, optimizer="adam", lr=2e-3, schedule="cosine"
        ),
        info={"data": "scikit-learn load_digits, 60/20/20 stratified split, seed 0"},
    )


MNIST_IMAGE = (28, 28)
MNIST_CLASSES = 10


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

    def pair(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        raw_x = load(f"{prefix}-images-idx3-ubyte")
        raw_y = load(f"{prefix}-labels-idx1-ubyte")
        where = f"{data_dir}/{prefix}-*-ubyte"
        if raw_x.ndim != 3 or tuple(raw_x.shape[1:]) != MNIST_IMAGE:
            raise WorkloadError(
                f"{where}: images of shape {tuple(raw_x.shape[1:])}, MNIST's are {MNIST_IMAGE}; "
                "point --data-dir at MNIST's IDX files"
            )
        if raw_y.ndim != 1 or len(raw_y) != len(raw_x):
            raise WorkloadError(
                f"{where}: {len(raw_x)} images but labels of shape {tuple(raw_y.shape)}; "
                "point --data-dir at MNIST's IDX files"
            )
        if len(raw_y) and not (0 <= int(raw_y.min()) and int(raw_y.max()) < MNIST_CLASSES):
            raise WorkloadError(
                f"{where}: labels from {int(raw_y.min())} to {int(raw_y.max())}, MNIST's are 0 "
                f"to {MNIST_CLASSES - 1}; point --data-dir at MNIST's IDX files"
            )
        return images(raw_x), torch.tensor(raw_y, dtype=torch.long)

    x_train, y_train = pair("train")
    x_test, y_test = pair("t10k")
    n_val = 5000
    if len(x_train) <= n_val or not len(x_test):
        raise WorkloadError(
            f"{data_dir}: {len(x_train)} training and {len(x_test)} test images; MNIST has "
            f"more than {n_val} and some; point --data-dir at MNIST's IDX files"
        )
    return (
        TensorData(x_train[:-n_val], y_train[:-n_val]),
        TensorData(x_train[-n_val:], y_train[-n_val:]),
        TensorData(x_test, y_test),
    )


def mnist(
    name: str, factory: Callable[[], nn.Module], epochs: int, lr: float
) -> Callable[[Path | None], Workload]:
    """A builder of an MNIST workload with ``factory``'s network."""

    def build(data_dir: Path | None) -> Workload:
        train, val, test = mnist_splits(data_dir)
        return Workload(
            name=name,
            train=train,
            val=val,
            test=test,
            model_factory=factory,
            baseline_training=TrainingConfig(
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
