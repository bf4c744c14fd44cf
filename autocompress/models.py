"""Reference networks of the built-in workloads."""

from __future__ import annotations

from torch import nn


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """A small CNN for scikit-learn's 8x8 digits (about 90k parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 2 * 2, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def lenet_300_100(num_classes: int = 10) -> nn.Module:
    """LeNet-300-100, the MLP of Han et al. (Deep Compression), 266k parameters."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def lenet5(num_classes: int = 10) -> nn.Module:
    """LeNet-5 in its Caffe form (20-50-500), the CNN of Deep Compression, 431k parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )
