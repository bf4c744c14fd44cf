"""The hardware and software a latency was measured on, so studies never mix them silently."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; the caller's count is restored."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction sets that decide which kernels a runtime can use (int8, bfloat16, float16).
ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
)  # fmt: skip


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags as the kernel lists them (empty where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def runtime_versions() -> dict[str, str]:
    """Versions of the runtimes and quantizers installed (those that import)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("onnxruntime", "openvino", "nncf", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def hardware_fingerprint(device: str = "cpu", threads: int = 1) -> dict[str, str | int]:
    """CPU model, logical cores, threads used, GPU name and library versions."""
    info: dict[str, str | int] = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count() or 0,
        "threads": threads,
        "device": device,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "isa": " ".join(f for f in ISA_FLAGS if f in cpu_flags()),
        **runtime_versions(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def same_hardware(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two fingerprints describe the same measuring conditions."""
    keys = ("cpu", "logical_cores", "threads", "device", "gpu", "machine")
    if "isa" in a and "isa" in b and a["isa"] != b["isa"]:  # older records lack it
        return False
    return all(a.get(k) == b.get(k) for k in keys)
