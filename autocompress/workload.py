"""What is being compressed: the baseline model, its three data splits, its task.

A workload is a built-in name (:data:`autocompress.zoo.BUILTIN_WORKLOADS`) or a user's
``package.module:function`` returning a :class:`Workload` (defined in
:mod:`autocompress.workload_spec`, below the zoo, and importable from here).
:func:`load_workload` checks it and returns a :class:`LoadedWorkload`, whose every field is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from autocompress.corpus import DistillData, as_distill_data
from autocompress.data import (
    Inputs,
    Split,
    TensorData,
    as_output,
    call_model,
    flat_tensors,
    gather_inputs,
    split_batch,
    take_rows,
)
from autocompress.errors import TrialFailure, WorkloadError, reason
from autocompress.hardware import torch_threads
from autocompress.hashing import state_sha256 as state_sha256  # re-exported
from autocompress.tasks import Task, as_task, eager_runner
from autocompress.training import train
from autocompress.workload_spec import Workload as Workload  # re-exported: users import it here

DEFAULT_CACHE_DIR = Path("studies") / "baselines"
# What a study records for a workload given as a Python object: its record cannot rebuild it.
PYTHON_OBJECT = "python object"
PYTHON_OBJECT_ONLY = (
    "this study's workload was given as a Python object, which the study cannot rebuild: resume "
    "it from Python with autocompress.load_study(NAME, workload=obj), or make a study whose "
    "workload is a module:function"
)
# Baselines train on one thread: float sums, and so the trained weights, depend on how work is
# split between threads, and one is the count every machine has. With the seed, the same
# workload then trains to the same bytes wherever the thread count was the only difference.
BASELINE_THREADS = 1


@dataclass(frozen=True)
class LoadedWorkload:
    """A checked workload with its trained baseline (in eval mode); every field is set.

    Attributes:
        name: The reference it was loaded from (built-in name or ``module:function``).
        model: The baseline.
        train: Fine-tuning and calibration data.
        val: The split the search optimises.
        test: Reported, never searched on.
        task: Loss, distillation loss and metric.
        example_input: One batch of inputs.
        info: Facts shown with the study.
        distill_data: Unlabeled inputs for distillation, or ``None``.
    """

    name: str
    model: nn.Module
    train: Split
    val: Split
    test: Split
    task: Task
    example_input: Inputs
    info: dict[str, str] = field(default_factory=dict)
    distill_data: DistillData | None = None

    def split(self, name: str) -> Split:
        """The split called ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use train, val or test")
        return cast(Split, getattr(self, name))

    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        """The task's metric of the eager ``model`` on ``split``."""
        was_training = model.training
        model.eval()
        try:
            return self.task.metric(eager_runner(model), self.split(split))
        finally:
            model.train(was_training)

    def with_model(self, model: nn.Module) -> LoadedWorkload:
        """The same workload around another baseline."""
        return LoadedWorkload(
            self.name, model, self.train, self.val, self.test, self.task, self.example_input,
            self.info, self.distill_data,
        )  # fmt: skip


def _import_module(module_name: str) -> Any:
    """``module_name`` as ``python -m`` finds it (the current folder first), or a ``.py`` file
    by path (its folder first, so that it imports its neighbours)."""
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        path = Path(module_name).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no file {path}")
        name = f"autocompress_workload_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        with _first_on_path(str(path.parent)):
            spec.loader.exec_module(module)
        return module
    with _first_on_path(os.getcwd()):
        return importlib.import_module(module_name)


@contextlib.contextmanager
def _first_on_path(folder: str) -> Iterator[None]:
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _import_user_workload(ref: str) -> Workload:
    module_name, _, func_name = ref.rpartition(":")
    try:
        module = _import_module(module_name)
    except KeyboardInterrupt:
        raise
    except ModuleNotFoundError as e:
        raise WorkloadError(
            f"workload {ref!r}: cannot import module {module_name!r} ({e}); looked in the "
            f"current folder {os.getcwd()} and the installed packages: run from the folder "
            "that holds it, install its package, or give its file: --workload "
            "path/to/file.py:function"
        ) from None
    except BaseException as e:  # noqa: BLE001 - SystemExit too: any import failure is the user's
        raise WorkloadError(
            f"workload {ref!r}: cannot import module {module_name!r} ({reason(e)})"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise WorkloadError(
            f"workload {ref!r}: module {module_name!r} has no function {func_name!r}"
        )
    try:
        result = func()
    except (WorkloadError, KeyboardInterrupt):
        raise
    except BaseException as e:  # noqa: BLE001 - SystemExit from user code is an error too
        raise WorkloadError(f"workload {ref!r}: {func_name}() raised {reason(e)}") from None
    if not isinstance(result, Workload):
        raise WorkloadError(
            f"workload {ref!r}: {func_name}() returned {type(result).__name__}, "
            "expected autocompress.workload.Workload"
        )
    result.name = ref
    return result


def _data_fingerprint(split: Split) -> list[float]:
    if isinstance(split, TensorData):
        return [float(split.x.double().sum()), float(split.y.double().sum())]
    first = next(iter(split.batches()))
    inputs, labels = split_batch(first)
    tensors = flat_tensors(inputs) + ([labels] if isinstance(labels, torch.Tensor) else [])
    return [float(t.double().sum()) for t in tensors]


def _new_model(workload: Workload) -> nn.Module:
    """A model from the workload's factory, refused unless it is a ``torch.nn.Module``."""
    assert workload.model_factory is not None  # noqa: S101 - checked by Workload
    try:
        model = workload.model_factory()
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - SystemExit too: the user's code
        raise WorkloadError(
            f"workload {workload.name!r}: model_factory() raised {reason(e, 200)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise WorkloadError(
            f"workload {workload.name!r}: model_factory() returned a "
            f"{type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _baseline_cache_key(workload: Workload, seed: int) -> str:
    payload = json.dumps(
        {
            "name": workload.name,
            "training": repr(workload.baseline_training),
            "model": repr(_new_model(workload)),
            "sizes": [len(workload.train), len(workload.val), len(workload.test)],
            "train": _data_fingerprint(workload.train),
            "seed": seed,
            "threads": BASELINE_THREADS,
            "torch": torch.__version__.split("+")[0],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _load_cached(model: nn.Module, path: Path) -> bool:
    """Load a cached baseline whose checksum matches; a bad or unverified file is removed."""
    checksum = path.with_suffix(".sha256")
    try:
        state = torch.load(path, weights_only=True)
        if checksum.read_text().strip() != state_sha256(state):
            raise ValueError("checksum mismatch")
        model.load_state_dict(state)
        return True
    except Exception:  # noqa: BLE001 - a bad cache file is retrained, never trusted
        path.unlink(missing_ok=True)
        checksum.unlink(missing_ok=True)
        return False


def _train_baseline(workload: Workload, task: Task, cache_dir: Path | None, seed: int) -> nn.Module:
    assert workload.model_factory is not None and workload.baseline_training is not None  # noqa: S101
    path = None
    if cache_dir is not None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", workload.name)[:80]
        path = Path(cache_dir) / f"{safe}-{_baseline_cache_key(workload, seed)}.pt"
        if path.exists():
            model = _new_model(workload)
            if _load_cached(model, path):
                return model.eval()
    torch.manual_seed(seed)
    model = _new_model(workload)
    try:
        with torch_threads(BASELINE_THREADS):
            train(model, workload.train, task, workload.baseline_training, seed=seed)
    except TrialFailure as e:
        raise WorkloadError(
            f"workload {workload.name!r}: training the baseline failed ({e}); "
            "give a trained model or a gentler baseline_training"
        ) from None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        state = model.state_dict()
        torch.save(state, tmp)
        path.with_suffix(".sha256").write_text(state_sha256(state) + "\n")
        tmp.replace(path)
    return model.eval()


def _check(loaded: LoadedWorkload) -> None:
    """The baseline runs on every split, gives finite outputs the task can read."""
    words = {"val": "validation", "train": "training", "test": "test"}
    for split_name in ("val", "train", "test"):
        first = next(iter(loaded.split(split_name).batches()))
        small = take_rows(first, 2)
        inputs = split_batch(small)[0]
        try:
            with torch.inference_mode():
                out = as_output(call_model(loaded.model, inputs))
                if split_name == "val":
                    _check_rows(loaded, first, out)
        except WorkloadError:
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - the user's model, on the user's data
            # SystemExit too: a model that calls exit() is the workload's error, one line.
            shapes = [tuple(t.shape) for t in flat_tensors(inputs)]
            raise WorkloadError(
                f"workload {loaded.name!r}: the model cannot run on the {words[split_name]} data "
                f"(input shapes {shapes}): {reason(e)}"
            ) from None
        if torch.is_floating_point(out) and not bool(torch.isfinite(out).all()):
            raise WorkloadError(
                f"workload {loaded.name!r}: the baseline's outputs on the {words[split_name]} data "
                "are NaN or infinite; check the model and its weights"
            )
        loaded.task.check(out, small)


def _check_rows(loaded: LoadedWorkload, batch: Any, out_2: torch.Tensor) -> None:
    """The output has one row per input row: checked at 2 rows and 3, so a model whose
    output shape depends on the batch size (hard-coded, or mixing rows) is refused now,
    not measured at a batch size it cannot take."""
    three = take_rows(batch, 3)
    rows = [t.shape[0] for t in flat_tensors(split_batch(three)[0]) if t.dim()]
    if not rows or min(rows) < 3:
        return  # a split of fewer rows: nothing more to learn
    out_3 = as_output(call_model(loaded.model, split_batch(three)[0]))
    shapes = (tuple(out_2.shape), tuple(out_3.shape))
    if not (len(shapes[0]) == len(shapes[1]) >= 1 and shapes[0][0] == 2 and shapes[1][0] == 3
            and shapes[0][1:] == shapes[1][1:]):  # fmt: skip
        raise WorkloadError(
            f"workload {loaded.name!r}: the model's output shape depends on the batch size "
            f"other than by its rows ({shapes[0]} for 2 input rows, {shapes[1]} for 3); give "
            "a model whose output has one row per input row at any batch size"
        )


def load_workload(
    ref: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
    seed: int = 0,
) -> LoadedWorkload:
    """Resolve ``ref`` to a checked workload with a trained baseline in eval mode.

    Args:
        ref: A built-in name, ``package.module:function`` (found from the current folder
            too, as ``python -m`` does) or ``path/to/file.py:function``.
        data_dir: Where a built-in workload's data is (MNIST's IDX files).
        cache_dir: Where trained baselines are cached; ``None`` disables the cache.
        seed: Seed of the baseline's training.

    Raises:
        WorkloadError: Unknown name, import failure, wrong return type, data the model
            cannot take, or non-finite outputs.
    """
    from autocompress.zoo import BUILTIN_WORKLOADS

    if ref == PYTHON_OBJECT:
        raise WorkloadError(PYTHON_OBJECT_ONLY)
    if ref in BUILTIN_WORKLOADS:
        workload = BUILTIN_WORKLOADS[ref](
            Path(data_dir) if data_dir else None, Path(cache_dir) if cache_dir else None
        )
    elif ":" in ref:
        workload = _import_user_workload(ref)
    else:
        raise WorkloadError(
            f"unknown workload {ref!r}: use one of {', '.join(BUILTIN_WORKLOADS)} "
            "or package.module:function or path/to/file.py:function"
        )
    return prepare(workload, cache_dir=cache_dir, seed=seed)


def trusted_workload(stored: str, given: str | None, study: str) -> str:
    """The workload to load for a stored study: a built-in one by its stored name; code only
    when the user names it on the command line (a study's record is data: whoever can write
    its database must not choose what this process imports).

    Raises:
        WorkloadError: The study's workload is a module the user did not name, or the user
            named another one.
    """
    from autocompress.zoo import BUILTIN_WORKLOADS

    if stored == PYTHON_OBJECT:
        raise WorkloadError(PYTHON_OBJECT_ONLY)
    if given is not None and given != stored:
        raise WorkloadError(
            f"--workload {given}: study {study!r} was made with workload {stored[:200]!r}; "
            "leave --workload out, or use another --study"
        )
    if given is None and stored not in BUILTIN_WORKLOADS:
        raise WorkloadError(
            f"study {study!r} was made with workload {stored[:200]!r}, which is code: a study's "
            f"database never decides what is imported; pass --workload {stored[:200]} to load "
            "it (only if you trust that module)"
        )
    return stored


def prepare(
    workload: Workload,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> LoadedWorkload:
    """Check a :class:`Workload` given in Python and train its baseline if needed.

    Raises:
        WorkloadError: As :func:`load_workload`.
    """
    task = workload.task if isinstance(workload.task, Task) else as_task(workload.task)
    model = workload.model
    if model is None:
        model = _train_baseline(workload, task, Path(cache_dir) if cache_dir else None, seed)
    model.eval()
    example = workload.example_input
    if example is None:
        example = gather_inputs(workload.train, 1)
    loaded = LoadedWorkload(
        name=workload.name,
        model=model,
        train=workload.train,
        val=workload.val,
        test=workload.test,
        task=task,
        example_input=example,
        info=dict(workload.info),
        distill_data=as_distill_data(
            workload.distill_data, Path(cache_dir) / "distill" if cache_dir else None
        ),
    )
    _check(loaded)
    return loaded


def finite(value: float) -> bool:
    """Whether a metric value is a finite number."""
    return isinstance(value, int | float) and math.isfinite(value)
