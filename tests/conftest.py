"""Shared tiny models, data and workloads for the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from autocompress.data import TensorData
from autocompress.workload import Workload, load_workload

REPO = Path(__file__).resolve().parent.parent
TINY_SPACE = REPO / "search_spaces" / "tiny.yaml"
DEFAULT_SPACE = REPO / "search_spaces" / "default.yaml"


def tiny_cnn() -> nn.Module:
    """A very small CNN on 1x8x8 inputs, 4 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )


def _blobs(n: int, seed: int) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    # each class lights up one quadrant: learnable in a few epochs
    for c in range(4):
        r, col = divmod(c, 2)
        x[y == c, :, r * 4 : r * 4 + 4, col * 4 : col * 4 + 4] += 1.0
    return TensorData(x, y)


def tiny_workload() -> Workload:
    """A user-style workload (``tests.conftest:tiny_workload``): tiny CNN, synthetic data."""
    from autocompress.training import TrainingConfig

    return Workload(
        train=_blobs(256, 0),
        val=_blobs(128, 1),
        test=_blobs(128, 2),
        model_factory=tiny_cnn,
        baseline_training=TrainingConfig(epochs=3, batch_size=32, lr=3e-3),
    )


def full_profile(model: nn.Module, example_input: torch.Tensor | None = None) -> dict:
    """A sensitivity profile of a tiny CNN for every bit-width and ratio (synthetic data)."""
    from autocompress.sensitivity import ProfileRequest, measure_profile
    from autocompress.tasks import Classification

    x = torch.zeros(1, 1, 8, 8) if example_input is None else example_input
    request = ProfileRequest(bits=(8, 7, 6, 5, 4, 3, 2), embeddings=True, prune=True,
                             channels=True, rows=64)  # fmt: skip
    return measure_profile(model, Classification(), _blobs(64, 5), x, request)


# Trained baselines are cached in the system's temporary folder, never in the checkout.
BASELINE_CACHE = Path(tempfile.gettempdir()) / "autocompress-tests" / "baselines"


@pytest.fixture(scope="session")
def digits():
    """The built-in digits workload; its baseline trains once and is cached in /tmp."""
    torch.set_num_threads(1)
    return load_workload("digits", cache_dir=BASELINE_CACHE)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return load_workload("tests.conftest:tiny_workload", cache_dir=tmp_path_factory.mktemp("c"))


@pytest.fixture(autouse=True)
def _no_writes_outside_tmp(tmp_path, monkeypatch):
    """Tests write only under their temporary folder: relative paths (studies/...) land there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def make_read_only():
    """Make a file or folder read-only for this process: chmod, or ``chattr +i`` as root
    (which ignores permissions); undone afterwards so the temporary folder can be removed."""
    immutable: list[Path] = []
    chmodded: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o555 if path.is_dir() else 0o444)
            chmodded.append(path)
            return
        chattr = shutil.which("chattr")
        done = chattr and subprocess.run([chattr, "+i", str(path)], capture_output=True)
        if not done or done.returncode != 0:
            pytest.skip("running as root, and chattr +i is not available to make a file read-only")
        immutable.append(path)

    yield make
    for path in immutable:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    for path in chmodded:
        path.chmod(0o755 if path.is_dir() else 0o644)


def skip_or_fail(reason: str, required_env: str) -> None:
    """Skip a test whose service is missing, unless CI says this machine has it: then the
    missing service is a failure (``.ci/run`` sets ``required_env``)."""
    if os.environ.get(required_env):
        pytest.fail(f"{reason} (and {required_env} is set: this machine should have it)")
    pytest.skip(reason)
