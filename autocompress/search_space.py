"""Search spaces: a YAML file -> a validated space -> ``suggest(trial)`` -> a compression config.

A parameter in the YAML is one of
  * a scalar: fixed, never searched (``amount: 0.5``);
  * a list: a categorical choice (``weight_bits: [32, 8, 4]``);
  * a mapping with ``low`` and ``high`` (and optionally ``log`` / ``step``): a numeric range.
Parameters of a step are suggested only when the step is on (define-by-run, conditional).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import yaml

from autocompress.errors import SearchSpaceError
from autocompress.pipeline import CompressionConfig
from autocompress.steps.finetune import OPTIMIZERS, SCHEDULES, DistillConfig, FinetuneConfig
from autocompress.steps.prune import PRUNE_METHODS, PruneConfig
from autocompress.steps.quantize import GRANULARITIES, WEIGHT_BITS, QuantizeConfig

FORMAT_VERSION = 1


@dataclass(frozen=True)
class _Kind:
    """What a parameter may be: its type, its allowed choices or its allowed bounds."""

    type: type
    choices: tuple[Any, ...] | None = None
    bounds: tuple[float, float] | None = None


# Every parameter a space may name, with what it may take and its value when the file omits it.
_SCHEMA: dict[str, dict[str, tuple[_Kind, Any]]] = {
    "pruning": {
        "method": (_Kind(str, choices=PRUNE_METHODS), "none"),
        "amount": (_Kind(float, bounds=(0.0, 0.95)), 0.5),
        "per_layer": (_Kind(bool, choices=(False, True)), False),
        "layer_scale": (_Kind(float, bounds=(0.0, 4.0)), {"low": 0.5, "high": 1.5}),
    },
    "quantization": {
        "weight_bits": (_Kind(int, choices=WEIGHT_BITS), 32),
        "int8_activations": (_Kind(bool, choices=(False, True)), False),
        "granularity": (_Kind(str, choices=GRANULARITIES), "per_channel"),
        "per_layer": (_Kind(bool, choices=(False, True)), False),
        "keep_edges_8bit": (_Kind(bool, choices=(False, True)), True),
    },
    "distillation": {
        "enabled": (_Kind(bool, choices=(False, True)), False),
        "temperature": (_Kind(float, bounds=(1.0, 20.0)), 4.0),
        "alpha": (_Kind(float, bounds=(0.0, 1.0)), 0.5),
    },
    "finetune": {
        "epochs": (_Kind(int, bounds=(0, 1000)), 0),
        "batch_size": (_Kind(int, bounds=(1, 65536)), 64),
        "optimizer": (_Kind(str, choices=OPTIMIZERS), "adam"),
        "lr": (_Kind(float, bounds=(1e-7, 10.0)), 1e-3),
        "schedule": (_Kind(str, choices=SCHEDULES), "constant"),
        "warmup_fraction": (_Kind(float, bounds=(0.0, 0.9)), 0.0),
        "weight_decay": (_Kind(float, bounds=(0.0, 1.0)), 0.0),
        "quant_aware": (_Kind(bool, choices=(False, True)), False),
    },
}
_TOP_LEVEL = {"format_version", "description", *_SCHEMA}


@dataclass(frozen=True)
class Dimension:
    """One parameter: fixed (``value``), a categorical ``choices`` or a ``low``/``high`` range."""

    name: str
    value: Any = None
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    is_int: bool = False

    @property
    def searched(self) -> bool:
        """Whether the study chooses this parameter."""
        return self.choices is not None or self.low is not None

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask ``trial`` for this parameter (or return the fixed value)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.low is None:
            return self.value
        if self.is_int:
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; ``source`` names the file it came from."""

    dims: dict[str, Dimension]
    source: str = "<space>"
    text: str = ""

    def __getitem__(self, name: str) -> Dimension:
        return self.dims[name]

    def without_choice(self, name: str, value: Any) -> SearchSpace:
        """This space with ``value`` no longer offered for the categorical ``name``.

        Returns the space unchanged when ``name`` does not offer ``value`` or when removing it
        would leave nothing to search.
        """
        dim = self.dims[name]
        if dim.choices is None or value not in dim.choices:
            return self
        rest = tuple(c for c in dim.choices if c != value)
        # Optuna forbids new choices under an old name: the narrower choice gets its own name.
        narrower = f"{name}(without {value})"
        new = Dimension(narrower, choices=rest) if len(rest) > 1 else Dimension(name, value=rest[0])
        dims = {**self.dims, name: new}
        if not any(d.searched for d in dims.values()):
            return self
        return SearchSpace(dims=dims, source=self.source, text=self.text)

    def suggest(
        self,
        trial: optuna.Trial,
        *,
        int8_activations_supported: bool = True,
        seed: int = 0,
        layers: Sequence[str] = (),
        prunable: Sequence[str] = (),
    ) -> CompressionConfig:
        """Suggest one joint configuration; a step's parameters only when the step is on.

        Args:
            trial: The Optuna trial.
            int8_activations_supported: Whether the target has int8 kernels.
            seed: Seed of the trial's fine-tuning.
            layers: Conv/linear layer names, for per-layer bit-widths (first/last included).
            prunable: Layer names that may be pruned, for per-layer pruning amounts.
        """
        d = self.dims
        method = d["pruning.method"].suggest(trial)
        amount, layer_amounts = 0.0, {}
        if method != "none":
            amount = d["pruning.amount"].suggest(trial)
            if prunable and d["pruning.per_layer"].suggest(trial):
                scale = d["pruning.layer_scale"]
                for name in prunable:
                    factor = replace(scale, name=f"pruning.layer.{name}").suggest(trial)
                    layer_amounts[name] = round(min(0.95, amount * factor), 4)
        bits = d["quantization.weight_bits"].suggest(trial)
        granularity, int8_act, layer_bits, keep_edges = "per_channel", False, {}, True
        if bits <= 8:
            granularity = d["quantization.granularity"].suggest(trial)
            if int8_activations_supported:
                int8_act = d["quantization.int8_activations"].suggest(trial)
            if layers and d["quantization.per_layer"].suggest(trial):
                choices = self.low_bit_choices()
                for name in layers:
                    layer_bits[name] = trial.suggest_categorical(
                        f"quantization.bits.{name}", list(choices)
                    )
            elif bits < 8:
                keep_edges = d["quantization.keep_edges_8bit"].suggest(trial)
        epochs = d["finetune.epochs"].suggest(trial)
        finetune, distill = FinetuneConfig(epochs=0), None
        if epochs > 0:
            finetune = FinetuneConfig(
                epochs=epochs,
                batch_size=d["finetune.batch_size"].suggest(trial),
                optimizer=d["finetune.optimizer"].suggest(trial),
                lr=d["finetune.lr"].suggest(trial),
                schedule=d["finetune.schedule"].suggest(trial),
                warmup_fraction=d["finetune.warmup_fraction"].suggest(trial),
                weight_decay=d["finetune.weight_decay"].suggest(trial),
                quant_aware=(
                    min([bits, *layer_bits.values()]) < 16
                    and d["finetune.quant_aware"].suggest(trial)
                ),
            )
            if d["distillation.enabled"].suggest(trial):
                distill = DistillConfig(
                    temperature=d["distillation.temperature"].suggest(trial),
                    alpha=d["distillation.alpha"].suggest(trial),
                )
        return CompressionConfig(
            prune=PruneConfig(method=method, amount=amount, layer_amounts=layer_amounts),
            finetune=finetune,
            distill=distill,
            quantize=QuantizeConfig(
                weight_bits=bits,
                granularity=granularity,
                int8_activations=int8_act,
                keep_edges_8bit=keep_edges,
                layer_bits=layer_bits,
            ),
            seed=seed,
        )

    def warm_starts(self) -> list[dict[str, Any]]:
        """Known-good starting points, one per family, as Optuna parameters this space allows.

        int8 alone (real int8 kernels, usually no accuracy cost), structured pruning at half the
        channels with int8 and a short fine-tuning, and unstructured pruning with 4-bit weights.
        Only searched parameters whose value the space allows are kept; the sampler fills in
        the rest. A study enqueues them at creation so its first trials cover every family.
        """
        wanted = [
            {
                "pruning.method": "none",
                "quantization.weight_bits": 8,
                "quantization.int8_activations": True,
                "quantization.granularity": "per_channel",
                "finetune.epochs": 0,
            },
            {
                "pruning.method": "structured",
                "pruning.amount": 0.5,
                "quantization.weight_bits": 8,
                "quantization.int8_activations": True,
                "quantization.granularity": "per_channel",
                "finetune.epochs": 2,
                "finetune.lr": 1e-3,
                "distillation.enabled": True,
            },
            {
                "pruning.method": "unstructured",
                "pruning.amount": 0.7,
                "quantization.weight_bits": 4,
                "quantization.int8_activations": False,
                "quantization.granularity": "per_channel",
                "finetune.epochs": 2,
                "finetune.lr": 1e-3,
            },
        ]
        starts = []
        for params in wanted:
            kept = {k: v for k, v in params.items() if self._allows(k, v)}
            if kept and kept not in starts:
                starts.append(kept)
        return starts

    def _allows(self, name: str, value: Any) -> bool:
        dim = self.dims[name]
        if dim.choices is not None:
            return value in dim.choices
        if dim.low is not None:
            return dim.low <= value <= dim.high
        return False

    def low_bit_choices(self) -> tuple[int, ...]:
        """Per-layer bit-width choices: the space's weight bits of 8 or fewer."""
        dim = self.dims["quantization.weight_bits"]
        values = dim.choices if dim.choices is not None else (dim.value,)
        return tuple(b for b in values if b <= 8) or (8,)


def _is_number(v: Any) -> bool:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _check_value(value: Any, kind: _Kind, where: str) -> Any:
    """Validate one fixed value or choice; return it converted to the parameter's type."""
    if kind.type is bool:
        if not isinstance(value, bool):
            raise SearchSpaceError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind.type is str:
        if not isinstance(value, str):
            raise SearchSpaceError(f"{where}: expected a name, got {value!r}")
    elif kind.type is int:
        if not (_is_number(value) and float(value).is_integer()):
            raise SearchSpaceError(f"{where}: expected an integer, got {value!r}")
        value = int(value)
    else:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-4 (no dot) as a string; accept it as the number it means.
            try:
                value = float(value)
            except ValueError:
                pass
        if not _is_number(value):
            raise SearchSpaceError(f"{where}: expected a number, got {value!r}")
        value = float(value)
    if kind.choices is not None and value not in kind.choices:
        allowed = ", ".join(str(c) for c in kind.choices)
        raise SearchSpaceError(f"{where}: {value!r} is not allowed; use one of {allowed}")
    if kind.bounds is not None and not kind.bounds[0] <= value <= kind.bounds[1]:
        raise SearchSpaceError(
            f"{where}: {value!r} is outside the possible range [{kind.bounds[0]}, {kind.bounds[1]}]"
        )
    return value


def _parse_dimension(name: str, raw: Any, kind: _Kind, where: str) -> Dimension:
    if isinstance(raw, list):
        if not raw:
            raise SearchSpaceError(f"{where}: an empty list of choices; give at least one value")
        choices = tuple(_check_value(v, kind, where) for v in raw)
        if len(set(choices)) != len(choices):
            raise SearchSpaceError(f"{where}: choices {list(raw)} repeat a value")
        if len(choices) == 1:
            return Dimension(name, value=choices[0])
        return Dimension(name, choices=choices)
    if isinstance(raw, dict):
        unknown = set(raw) - {"low", "high", "log", "step"}
        if unknown:
            raise SearchSpaceError(
                f"{where}: unknown key {sorted(unknown, key=str)[0]!r} in a range; "
                "use low, high, log, step"
            )
        if kind.type not in (int, float) or kind.bounds is None:
            raise SearchSpaceError(f"{where}: takes a value or a list of choices, not a range")
        if "low" not in raw or "high" not in raw:
            raise SearchSpaceError(f"{where}: a range needs both low and high")
        low = _check_value(raw["low"], kind, f"{where}.low")
        high = _check_value(raw["high"], kind, f"{where}.high")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise SearchSpaceError(f"{where}.log: expected true or false, got {log!r}")
        step = raw.get("step")
        if step is not None and not (_is_number(step) and step > 0):
            raise SearchSpaceError(f"{where}.step: expected a positive number, got {step!r}")
        if low > high:
            raise SearchSpaceError(f"{where}: low ({low}) is greater than high ({high})")
        if log and low <= 0:
            raise SearchSpaceError(f"{where}: a log range needs low > 0, got {low}")
        if log and step is not None:
            raise SearchSpaceError(f"{where}: use either log or step, not both")
        if kind.type is int and step is not None and not float(step).is_integer():
            raise SearchSpaceError(f"{where}.step: an integer range needs an integer step")
        if low == high:
            return Dimension(name, value=low)
        return Dimension(name, low=low, high=high, log=log, step=step, is_int=kind.type is int)
    return Dimension(name, value=_check_value(raw, kind, where))


def parse_search_space(document: Any, source: str = "<space>", text: str = "") -> SearchSpace:
    """Validate a parsed YAML document into a :class:`SearchSpace`.

    Raises:
        SearchSpaceError: One line naming the file and key at fault.
    """
    if not isinstance(document, dict):
        raise SearchSpaceError(
            f"{source}: a search space must be a mapping of sections "
            f"({', '.join(_SCHEMA)}), got {type(document).__name__}"
        )
    for key in document:
        if key not in _TOP_LEVEL:
            raise SearchSpaceError(
                f"{source}: unknown key {key!r}; sections are {', '.join(_SCHEMA)}"
            )
    version = document.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise SearchSpaceError(
            f"{source}: format_version {version!r} is not supported; this autocompress reads "
            f"format_version {FORMAT_VERSION}"
        )
    dims: dict[str, Dimension] = {}
    for section, params in _SCHEMA.items():
        raw_section = document.get(section) or {}
        if not isinstance(raw_section, dict):
            raise SearchSpaceError(
                f"{source}: {section} must be a mapping of parameters, "
                f"got {type(raw_section).__name__}"
            )
        for key in raw_section:
            if key not in params:
                raise SearchSpaceError(
                    f"{source}: unknown key {section}.{key!s}; {section} takes {', '.join(params)}"
                )
        for key, (kind, default) in params.items():
            name = f"{section}.{key}"
            raw = raw_section.get(key, default)
            dims[name] = _parse_dimension(name, raw, kind, f"{source}: {name}")
    per_layer_off = dims["pruning.per_layer"].value is False
    searched = [
        name
        for name, dim in dims.items()
        if dim.searched and not (name == "pruning.layer_scale" and per_layer_off)
    ]
    if not searched:
        raise SearchSpaceError(
            f"{source}: the search space is empty (every parameter is fixed); "
            "give at least one list of choices or a low/high range"
        )
    return SearchSpace(dims=dims, source=source, text=text)


def load_search_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Read and validate a search-space YAML file.

    Raises:
        SearchSpaceError: The file is missing, not YAML, or not a valid space.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SearchSpaceError(f"cannot read search space {path}: {e.strerror}") from None
    return parse_search_space_text(text, str(path))


def parse_search_space_text(text: str, source: str = "<space>") -> SearchSpace:
    """Parse YAML text (safely) and validate it."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SearchSpaceError(f"{source}: malformed YAML{where}: {problem}") from None
    except (ValueError, RecursionError) as e:  # e.g. a date like 2001-13-01, or deep nesting
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SearchSpaceError(f"{source}: malformed YAML: {first}") from None
    return parse_search_space(document, source, text)
