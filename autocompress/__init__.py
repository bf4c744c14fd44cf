"""autocompress: find the best way to compress a PyTorch model for a given target."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "apply_recipe"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import autocompress` (and the CLI's --help) does not import torch.
    if name == "apply_recipe":
        from autocompress.apply import apply_recipe

        return apply_recipe
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")
