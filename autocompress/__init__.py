"""autocompress: find the best way to compress a PyTorch model for a given target."""

__version__ = "0.1.0"

__all__ = ["__version__"]
