"""autocompress: find the best way to compress a PyTorch model for a given target."""

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "FrontTrial",
    "Study",
    "Workload",
    "__version__",
    "apply_recipe",
    "create_study",
    "load_study",
]

# Where each public name lives; imported on first use, so `import autocompress` (and the CLI's
# --help) does not import torch.
_LAZY = {
    "FrontTrial": "autocompress.api",
    "Study": "autocompress.api",
    "create_study": "autocompress.api",
    "load_study": "autocompress.api",
    "Workload": "autocompress.workload",
    "apply_recipe": "autocompress.apply",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
