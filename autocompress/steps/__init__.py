"""Compression steps: each a frozen config dataclass plus one function that applies it."""
