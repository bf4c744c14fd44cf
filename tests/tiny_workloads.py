"""Tiny, fast workloads for reliability tests, each simulating one fault.

Referenced from the CLI as ``tests.tiny_workloads:NAME`` (the repository root on PYTHONPATH).
Faults that must happen in one trial only are driven by files in ``$AUTOCOMPRESS_TEST_DIR``:
``hang`` makes the first trial that trains (and claims ``claimed``, writing its pid) sleep, so a
test can kill or interrupt that worker mid-trial.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from autocompress.data import TensorData
from autocompress.workload import Workload

N_FEATURES, N_CLASSES = 8, 3


def _data(n: int, seed: int) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorData(x, y)


class TinyMLP(nn.Module):
    """Two linear layers; subclasses override :meth:`fault` to misbehave."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(N_FEATURES, 16)
        self.fc2 = nn.Linear(16, N_CLASSES)

    def fault(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fault(x)
        if out is not None:
            return out
        return self.fc2(torch.relu(self.fc1(x)))


def _workload(model_class: type[TinyMLP]) -> Workload:
    torch.manual_seed(0)  # the same weights in every process: studies check the baseline's hash
    model = model_class()
    model.train()
    train = _data(96, 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        logits = model.fc2(torch.relu(model.fc1(train.x)))  # bypass the fault
        loss = nn.functional.cross_entropy(logits, train.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Workload(train=train, val=_data(48, 1), test=_data(48, 2), model=model.eval())


def tiny() -> Workload:
    """A healthy tiny workload."""
    return _workload(TinyMLP)


def _test_dir() -> Path:
    return Path(os.environ["AUTOCOMPRESS_TEST_DIR"])


class _HangOnce(TinyMLP):
    def fault(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.training or not (_test_dir() / "hang").exists():
            return None
        try:
            fd = os.open(_test_dir() / "claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        time.sleep(120)  # killed or interrupted by the test long before this ends
        return None


def hang_once() -> Workload:
    """Tiny; the first trial to fine-tune while ``hang`` exists sleeps (to be killed)."""
    return _workload(_HangOnce)


class _Untraceable(TinyMLP):
    def fault(self, x: torch.Tensor) -> torch.Tensor | None:
        # torch-pruning traces the autograd graph with forward hooks (grad on, eval mode);
        # refuse then, like a model it cannot trace. MAC counting (no grad) still works.
        if self.fc1._forward_hooks and torch.is_grad_enabled() and not self.training:
            raise TypeError("dynamic control flow this tracer cannot follow (simulated)")
        return None


def untraceable() -> Workload:
    """Tiny; torch-pruning cannot trace the model, so structured pruning always fails."""
    return _workload(_Untraceable)


class _OutOfMemory(TinyMLP):
    def fault(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.training and x.shape[0] > 32:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated for batches over 32)")
        return None


def out_of_memory() -> Workload:
    """Tiny; fine-tuning with batches over 32 raises torch.OutOfMemoryError."""
    return _workload(_OutOfMemory)


class _NaNLoss(TinyMLP):
    def fault(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.training:
            return torch.full((x.shape[0], N_CLASSES), float("nan")) + self.fc2.bias
        return None


def nan_loss() -> Workload:
    """Tiny; logits are NaN while training, so fine-tuning's loss is NaN."""
    return _workload(_NaNLoss)


def wrong_shape() -> Workload:
    """Tiny model, but validation inputs have 5 features instead of 8."""
    wl = tiny()
    wl.val = TensorData(torch.randn(48, 5), wl.val.y)
    return wl


def not_a_workload() -> dict:
    """Returns the wrong thing."""
    return {"model": None}


def trainable() -> Workload:
    """Tiny; the baseline is trained from a factory (and cached), not given."""
    from autocompress.training import TrainingConfig

    return Workload(
        train=_data(96, 0),
        val=_data(48, 1),
        test=_data(48, 2),
        model_factory=TinyMLP,
        baseline_training=TrainingConfig(epochs=2, batch_size=32, lr=0.01),
    )


class HeadFirstViT(nn.Module):
    """A tiny ViT whose classifier head is defined before its blocks, and its blocks in an
    ``nn.Sequential`` (as timm's): definition order is not execution order, and the blocks are
    not a ``ModuleList`` of recognised transformer parts. ``nn.MultiheadAttention`` with 4 heads
    over 16 dimensions; the 8 features are 4 tokens of 2."""

    def __init__(self, dim: int = 16, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.head = nn.Linear(dim, N_CLASSES)
        self.embed = nn.Linear(2, dim)
        self.pos = nn.Parameter(torch.randn(1, N_FEATURES // 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[_ViTBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.unflatten(-1, (-1, 2))) + self.pos
        return self.head(self.norm(self.blocks(tokens).mean(dim=1)))


class _ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def head_first_vit() -> Workload:
    """Tiny ViT, head defined first, blocks in ``nn.Sequential`` (:class:`HeadFirstViT`)."""
    torch.manual_seed(0)
    model = HeadFirstViT()
    train = _data(96, 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(train.x), train.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Workload(train=train, val=_data(48, 1), test=_data(48, 2), model=model.eval())


class _Exits(TinyMLP):
    def fault(self, x: torch.Tensor) -> torch.Tensor | None:
        raise SystemExit(3)  # a model that calls exit() in forward


def exits() -> Workload:
    """Tiny; the model raises SystemExit in forward."""
    return _workload(_Exits)


class _FixedBatch(TinyMLP):
    def fault(self, x: torch.Tensor) -> torch.Tensor | None:
        out = self.fc2(torch.relu(self.fc1(x)))
        return out[:1].expand(2, -1)  # always 2 rows: passes a check on one 2-row batch


def fixed_batch() -> Workload:
    """Tiny; the output has 2 rows whatever the batch size."""
    return _workload(_FixedBatch)


def lambda_model() -> Workload:
    """A factory that builds a lambda where the model should be."""
    from autocompress.training import TrainingConfig

    return Workload(train=_data(96, 0), val=_data(48, 1), test=_data(48, 2),
                    model_factory=lambda: (lambda x: x),  # type: ignore[arg-type,return-value]
                    baseline_training=TrainingConfig(epochs=1))  # fmt: skip
