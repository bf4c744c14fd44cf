"""Recovered students, kept so that recovery is not paid twice.

Pruning and recovery (fine-tuning, distillation) are the expensive part of a trial; the
quantize and deploy stages after them are cheap. Trials that differ only in quantization or
runtime settings start from the same recovered student: it is stored once, after the train
stage, under a key made of the baseline's weights, the prune- and train-stage methods'
settings (and the weight quantization when fine-tuning trains through its grid), the
distillation data, the calibration size and the seed, and loaded by the next such trial.

Trials get different seeds; :meth:`StudentCache.seed_for` gives a new trial the seed of a
stored student with its structure and recovery, so the trial's configuration says the seed it
really ran with and a recipe replays it exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from autocompress.pipeline import CompressionConfig

FORMAT = 1


@dataclass(frozen=True)
class Student:
    """A stored recovered student.

    Attributes:
        state: Its state dict after the train stage.
        records: What the prune- and train-stage methods decided.
        notes: Their notes.
    """

    state: dict[str, torch.Tensor]
    records: dict[str, Any]
    notes: list[str]


def recovery_part(config: CompressionConfig) -> dict[str, Any] | None:
    """The settings a recovered student depends on, or ``None`` when the configuration
    recovers nothing (no train-stage method: nothing expensive to keep)."""
    methods = config.to_dict()["methods"]
    from autocompress.methods import METHODS

    train = [n for n in methods if METHODS[n].stage == "train"]
    if not train:
        return None
    finetune = methods.get("finetune") or {}
    if not finetune.get("epochs") and not (methods.get("distillation") or {}).get("steps"):
        return None
    keep = {n: p for n, p in methods.items() if METHODS[n].stage in ("prune", "train")}
    if finetune.get("quant_aware") and "weights" in methods:
        keep["weights"] = methods["weights"]  # trained through its grid
    return keep


class StudentCache:
    """Recovered students on disk, under ``folder``.

    Args:
        folder: Where students are kept (the study's artifact folder's ``students``).
        context: What else the students depend on: the baseline's weights hash, the
            distillation data's key, the calibration size.
    """

    def __init__(self, folder: str | os.PathLike[str], context: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.context = dict(context)
        self.hits = 0

    def _group(self, config: CompressionConfig) -> Path | None:
        part = recovery_part(config)
        if part is None:
            return None
        blob = json.dumps({"format": FORMAT, "methods": part, **self.context}, sort_keys=True)
        return self.folder / hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, config: CompressionConfig) -> Path | None:
        """Where ``config``'s student is (or would be) kept; ``None``: not cached."""
        group = self._group(config)
        return None if group is None else group / f"seed-{config.seed}.pt"

    def seed_for(self, config: CompressionConfig) -> CompressionConfig:
        """``config`` with the seed of a stored student of the same structure and recovery,
        when there is one (else unchanged)."""
        group = self._group(config)
        if group is None or not group.is_dir():
            return config
        seeds = sorted(
            int(p.stem.removeprefix("seed-")) for p in group.glob("seed-*.pt")
            if p.stem.removeprefix("seed-").lstrip("-").isdigit()
        )  # fmt: skip
        if not seeds or config.seed in seeds:
            return config
        return replace(config, seed=seeds[0])

    def load(self, config: CompressionConfig) -> Student | None:
        """``config``'s stored student, or ``None`` (a bad file is removed)."""
        path = self.path(config)
        if path is None or not path.exists():
            return None
        try:
            blob = torch.load(path, weights_only=True)
            student = Student(dict(blob["state"]), json.loads(blob["records"]),
                              list(json.loads(blob["notes"])))  # fmt: skip
        except Exception:  # noqa: BLE001 - a bad cache file is recomputed, never trusted
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        return student

    def save(self, config: CompressionConfig, student: Student) -> None:
        """Keep ``student`` for ``config`` (written to a temporary file, then renamed)."""
        path = self.path(config)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(
            {
                "state": {k: v.detach().clone() for k, v in student.state.items()},
                "records": json.dumps(student.records),
                "notes": json.dumps(student.notes),
            },
            tmp,
        )
        tmp.replace(path)
