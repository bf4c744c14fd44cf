"""The fingerprint of a model's weights (a leaf module: only torch)."""

from __future__ import annotations

import hashlib

import torch


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict: names, dtypes, shapes and raw bytes, in order."""
    h = hashlib.sha256()
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
