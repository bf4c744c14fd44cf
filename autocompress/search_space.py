"""Search spaces: a YAML file -> a validated space -> ``suggest(trial)`` -> a configuration.

A space has one section per compression method, named as in
:data:`autocompress.methods.METHODS`; a method without a section is never applied. Each
section takes ``enabled`` and the parameters the method declares (``SEARCH``). A value is
  * a scalar: fixed, never searched (``amount: 0.5``);
  * a list: a categorical choice (``bits: [8, 4]``);
  * a mapping with ``low`` and ``high`` (and optionally ``log`` / ``step``): a numeric range.
A method's parameters are suggested only when it is enabled in the trial (define-by-run).
Format 1 files (sections ``pruning``, ``quantization``, ``distillation``, ``finetune``) are
converted on reading.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from autocompress.errors import SearchSpaceError
from autocompress.methods import METHODS, Method, Param, Suggester
from autocompress.pipeline import CompressionConfig
from autocompress.runtimes import RUNTIMES
from autocompress.safe_input import load_yaml, read_text

FORMAT_VERSION = 2
ENABLED = Param(bool, True, "apply this method (a list [false, true] searches it)")


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

    def values(self) -> tuple[Any, ...] | None:
        """The values it may take when it is fixed or categorical (``None`` for a range)."""
        if self.choices is not None:
            return self.choices
        return None if self.low is not None else (self.value,)

    def allows(self, value: Any) -> bool:
        """Whether ``value`` is one this dimension may take."""
        values = self.values()
        if values is not None:
            return value in values and type(value) is type(values[values.index(value)])
        low, high = self._range()
        return bool(low <= value <= high)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask ``trial`` for this parameter (or return the fixed value)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.low is None:
            return self.value
        low, high = self._range()
        if self.is_int:
            return trial.suggest_int(
                self.name, int(low), int(high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, float(low), float(high), step=self.step, log=self.log)

    def _range(self) -> tuple[float, float]:
        """``(low, high)`` of a range.

        Raises:
            TypeError: This dimension is not a range (``low`` or ``high`` is missing).
        """
        if self.low is None or self.high is None:
            raise TypeError(f"parameter {self.name!r} is not a low/high range")
        return self.low, self.high


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; ``source`` names the file it came from.

    Attributes:
        dims: Every parameter by ``method.param`` (``method.enabled`` included).
        methods: The methods the space names, in :data:`METHODS` order.
        source: The file.
        text: The file's text (stored with a study).
    """

    dims: dict[str, Dimension]
    methods: tuple[str, ...]
    source: str = "<space>"
    text: str = ""

    def __getitem__(self, name: str) -> Dimension:
        return self.dims[name]

    def suggest(
        self,
        trial: optuna.Trial,
        facts: Any,
        *,
        seed: int = 0,
        unavailable: Mapping[str, str] | None = None,
        runtime: str = "torch",
        profile: Mapping[str, Any] | None = None,
    ) -> CompressionConfig:
        """Suggest one joint configuration; a method's parameters only when it is on.

        Args:
            trial: The Optuna trial.
            facts: The baseline's architecture facts (layer names for per-layer settings).
            seed: Seed of the trial's random choices.
            unavailable: Methods not offered in this trial (by name, with the reason):
                not applicable to the model or target, or withdrawn after failing.
            runtime: The target's runtime; settings it does not use are not asked for.
            profile: The study's sensitivity profile (per-layer allocation reads it).
        """
        unavailable = unavailable or {}
        chosen: dict[str, Method] = {}
        for name in self.methods:
            if name in unavailable or not self.dims[f"{name}.enabled"].suggest(trial):
                continue
            suggester = _TrialSuggester(self, trial, name, facts, chosen, runtime, profile)
            method = METHODS[name].suggest(suggester)
            if method is not None:
                chosen[name] = method
        return CompressionConfig(chosen, seed)

    def warm_starts(
        self, facts: Any = None, runtime: str = "torch", size: str = "deployed"
    ) -> list[dict[str, Any]]:
        """Known-good starting points, one per family, as parameters this space allows.

        int8 alone (real int8 kernels, usually no accuracy cost; dynamic int8 for models with
        attention blocks, static otherwise); structured pruning of half
        the channels with int8 and two epochs of distillation; unstructured pruning of 70%
        with 4-bit weights and two epochs. A start is kept only when the space can switch its
        methods on and off as it needs; its other values are kept where the space allows them
        (the sampler fills in the rest) and per-layer search is pinned off (or, where the space
        fixes it on and ``facts`` names the layers, every layer is pinned to the start's
        setting), so every layer gets the start's setting.

        With the deployed size as objective (``size``), a start whose methods cannot change
        the file ``runtime`` deploys (:func:`changes_deployed`: unstructured pruning with
        4-bit weights on ``torch``, which deploys them as float) is not made: the baseline
        would dominate it.
        """
        # Every method a start does not name is off where the space can switch it off; a
        # space that always applies one the method marks as defining a start
        # (``WARM_START_REQUIRED_OFF``) drops the starts without it. Derived from METHODS, so
        # a new method joins no start silently.
        off = {n: False for n, cls in METHODS.items() if cls.WARM_START_OFF}
        soft_off = {n: False for n in off if not METHODS[n].WARM_START_REQUIRED_OFF}
        # Attention models keep int8 activations badly (outliers; static int8 cost MiniLM 67
        # points of recall on ORT): their int8 start is the mode the runtime says suits them
        # (dynamic, or static where the runtime's quantizer handles outliers).
        attention = facts is not None and getattr(facts, "transformer", None) is not None
        attention_int8 = RUNTIMES[runtime].ATTENTION_INT8
        families: list[dict[str, Any]] = [
            {**off, **soft_off, "weights": True, "weights.bits": 8,
             "weights.granularity": "per_channel", "int8": True,
             "int8.mode": attention_int8 if attention else "static",
             "finetune.epochs": 0},
            {**off, "structured": True, "structured.amount": 0.5, "weights": True,
             "weights.bits": 8, "weights.granularity": "per_channel", "int8": True,
             "finetune": True, "finetune.epochs": 2, "finetune.lr": 1e-3,
             "distillation": True},
            {**off, "unstructured": True, "unstructured.amount": 0.7, "weights": True,
             "weights.bits": 4, "weights.granularity": "per_channel", "finetune": True,
             "finetune.epochs": 2, "finetune.lr": 1e-3, "distillation": False},
        ]  # fmt: skip
        starts: list[dict[str, Any]] = []
        for family in families:
            on = [k for k, v in family.items() if "." not in k and v is True and k in self.methods]
            if size == "deployed" and not changes_deployed(on, runtime):
                continue
            params = {}
            feasible = True
            for key, value in family.items():
                name = key if "." in key else f"{key}.enabled"
                method = name.split(".", 1)[0]
                if name.endswith(".enabled") and method not in self.methods:
                    feasible = feasible and value is False
                    continue
                dim = self.dims.get(name)
                if dim is None:
                    continue
                required = name.endswith(".enabled") and key not in soft_off
                if required and not dim.allows(value):
                    feasible = False
                elif dim.searched and dim.allows(value):
                    params[name] = value
            for name, dim in self.dims.items():
                if name.endswith(".per_layer") and dim.searched:
                    params[name] = False
                elif name.endswith(".per_layer") and dim.value is True and facts is not None:
                    params.update(self._pinned_layers(name.split(".")[0], params, facts))
            if feasible and params and params not in starts:
                starts.append(params)
        return starts

    def _pinned_layers(self, method: str, params: dict[str, Any], facts: Any) -> dict[str, Any]:
        """Per-layer parameters of a start, each set to the start's global setting (sampled
        allocation), or the budget that gives every layer the start's bits (allocation by
        sensitivity; a pruning start's ``amount`` is already its budget)."""
        pinned: dict[str, Any] = {}
        allocation = self.dims[f"{method}.allocation"]
        if allocation.searched and allocation.allows("sampled"):
            pinned[f"{method}.allocation"] = "sampled"
        elif allocation.allows("sensitivity"):
            budget = self.dims.get(f"{method}.budget_bits")
            bits = params.get("weights.bits")
            if budget is not None and budget.searched and bits is not None:
                if budget.allows(float(bits)):
                    pinned[f"{method}.budget_bits"] = float(bits)
            return pinned
        if "layer_scale" in METHODS[method].SEARCH:
            scale = self.dims.get(f"{method}.layer_scale")
            if scale is not None and scale.searched and scale.allows(1.0):
                probe = METHODS[method].suggest(_Probe(facts, {"per_layer": True}))
                for layer in getattr(probe, "layer_amounts", {}):
                    pinned[f"{method}.layer_scale.{layer}"] = 1.0
        elif method == "weights" and "weights.bits" in params:
            probe = METHODS[method].suggest(_Probe(facts, {"per_layer": True, "bits": 8}))
            for layer in getattr(probe, "layer_bits", {}):
                pinned[f"weights.bits.{layer}"] = params["weights.bits"]
        return pinned


def changes_deployed(methods: list[str], runtime: str) -> bool:
    """Whether a configuration with ``methods`` can change the file ``runtime`` deploys
    (:attr:`Method.CHANGES_DEPLOYED`, :attr:`Runtime.LOW_BIT_WEIGHTS`)."""
    low_bit = RUNTIMES[runtime].LOW_BIT_WEIGHTS
    return any(
        METHODS[m].CHANGES_DEPLOYED == "always"
        or (METHODS[m].CHANGES_DEPLOYED == "low_bit" and low_bit)
        for m in methods
    )


class _Probe(Suggester):
    """A suggester that answers from fixed values: which per-layer names a method would ask."""

    def __init__(self, facts: Any, values: dict[str, Any]) -> None:
        self.facts, self.chosen, self.values = facts, {}, values

    def __call__(self, param: str, keep: Callable[[Any], bool] | None = None) -> Any:
        defaults = {"amount": 0.5, "bits": 8, "granularity": "per_channel", "algorithm": "rtn",
                    "embeddings": True, "per_layer": False, "keep_edges_8bit": True,
                    "allocation": "sampled", "importance": "magnitude"}  # fmt: skip
        return self.values.get(param, defaults.get(param))

    def per_layer(self, param: str, layer: str, keep: Callable[[Any], bool] | None = None) -> Any:
        return 1.0 if param == "layer_scale" else self.values.get(param, 8)

    def choices(self, param: str) -> tuple[Any, ...] | None:
        return (self(param),)


class _TrialSuggester(Suggester):
    """One method's view of the space in one trial."""

    def __init__(
        self,
        space: SearchSpace,
        trial: optuna.Trial,
        method: str,
        facts: Any,
        chosen: dict[str, Method],
        runtime: str = "torch",
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        self.space, self.trial, self.method = space, trial, method
        self.facts, self.chosen, self.runtime = facts, chosen, runtime
        self.profile = profile

    def __call__(self, param: str, keep: Callable[[Any], bool] | None = None) -> Any:
        dim = self.space.dims[f"{self.method}.{param}"]
        return _kept(dim, dim.name, keep).suggest(self.trial)

    def choices(self, param: str) -> tuple[Any, ...] | None:
        return self.space.dims[f"{self.method}.{param}"].values()

    def per_layer(self, param: str, layer: str, keep: Callable[[Any], bool] | None = None) -> Any:
        dim = self.space.dims[f"{self.method}.{param}"]
        return _kept(dim, f"{self.method}.{param}.{layer}", keep).suggest(self.trial)


def _kept(dim: Dimension, name: str, keep: Callable[[Any], bool] | None) -> Dimension:
    """``dim`` named ``name``, its choices filtered by ``keep`` (all of them if none is kept:
    the caller's own check then says why)."""
    values = dim.values()
    if values is not None and keep is not None:
        values = tuple(v for v in values if keep(v)) or values
        if len(values) > 1:
            return Dimension(name, choices=values)
        return Dimension(name, value=values[0])
    return replace(dim, name=name)


def _is_number(v: Any) -> bool:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _check_value(value: Any, param: Param, where: str) -> Any:
    """Validate one fixed value or choice; return it converted to the parameter's type."""
    if param.kind is bool:
        if not isinstance(value, bool):
            raise SearchSpaceError(f"{where}: expected true or false, got {value!r}")
        return value
    if param.kind is str:
        if not isinstance(value, str):
            raise SearchSpaceError(f"{where}: expected a name, got {value!r}")
    elif param.kind is int:
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
    if param.choices is not None and value not in param.choices:
        allowed = ", ".join(str(c) for c in param.choices)
        raise SearchSpaceError(f"{where}: {value!r} is not allowed; use one of {allowed}")
    if param.bounds is not None and not param.bounds[0] <= value <= param.bounds[1]:
        raise SearchSpaceError(
            f"{where}: {value!r} is outside the possible range [{param.bounds[0]}, "
            f"{param.bounds[1]}]"
        )
    return value


def _parse_range(name: str, raw: dict[Any, Any], param: Param, where: str) -> Dimension:
    unknown = set(raw) - {"low", "high", "log", "step"}
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown key {sorted(map(str, unknown))[0]!r} in a range; "
            "use low, high, log, step"
        )
    if param.kind not in (int, float) or param.bounds is None:
        raise SearchSpaceError(f"{where}: takes a value or a list of choices, not a range")
    if "low" not in raw or "high" not in raw:
        raise SearchSpaceError(f"{where}: a range needs both low and high")
    low = _check_value(raw["low"], param, f"{where}.low")
    high = _check_value(raw["high"], param, f"{where}.high")
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
    if step is not None:
        if param.kind is int and not float(step).is_integer():
            raise SearchSpaceError(f"{where}.step: an integer range needs an integer step")
        if step > high - low and high > low:
            raise SearchSpaceError(
                f"{where}.step: {step} is larger than the range {high - low}; use a smaller step"
            )
        if (high - low) / step > 1e6:
            raise SearchSpaceError(
                f"{where}.step: {step} makes over a million values; use a larger step or none"
            )
    if low == high:
        return Dimension(name, value=low)
    return Dimension(name, low=low, high=high, log=log, step=step, is_int=param.kind is int)


def _parse_dimension(name: str, raw: Any, param: Param, where: str) -> Dimension:
    if isinstance(raw, list):
        if not raw:
            raise SearchSpaceError(f"{where}: an empty list of choices; give at least one value")
        choices = tuple(_check_value(v, param, where) for v in raw)
        if len(set(choices)) != len(choices):
            raise SearchSpaceError(f"{where}: choices {list(raw)} repeat a value")
        return (
            Dimension(name, value=choices[0])
            if len(choices) == 1
            else Dimension(name, choices=choices)
        )
    if isinstance(raw, dict):
        return _parse_range(name, raw, param, where)
    return Dimension(name, value=_check_value(raw, param, where))


def parse_search_space(document: Any, source: str = "<space>", text: str = "") -> SearchSpace:
    """Validate a parsed YAML document into a :class:`SearchSpace`.

    Raises:
        SearchSpaceError: One line naming the file and key at fault.
    """
    sections = ", ".join(METHODS)
    if not isinstance(document, dict):
        raise SearchSpaceError(
            f"{source}: a search space must be a mapping of method sections ({sections}), "
            f"got {type(document).__name__}"
        )
    version = document.get("format_version", FORMAT_VERSION)
    if type(version) is not int or version != FORMAT_VERSION:
        raise SearchSpaceError(
            f"{source}: format_version {version!r} is not supported; this autocompress reads "
            f"format_version {FORMAT_VERSION}"
        )
    description = document.get("description", "")
    if not isinstance(description, str):
        raise SearchSpaceError(f"{source}: description must be text")
    for key in document:
        if key not in ("format_version", "description") and key not in METHODS:
            raise SearchSpaceError(
                f"{source}: unknown key {key!s}; sections are the methods {sections}"
            )
    dims: dict[str, Dimension] = {}
    methods = []
    for method, cls in METHODS.items():
        if method not in document:
            continue
        raw_section = document[method]
        if raw_section is None:
            # `method:` with nothing under it: every line commented out, most likely. Taken as
            # "on, with its whole default range" it would switch the method on unseen.
            raise SearchSpaceError(
                f"{source}: section {method} is empty (are all its lines commented out?); "
                f"write `{method}: {{}}` to search its default range, or "
                f"`{method}: {{enabled: false}}` (or delete it) to leave it out"
            )
        if not isinstance(raw_section, dict):
            raise SearchSpaceError(
                f"{source}: {method} must be a mapping of parameters, "
                f"got {type(raw_section).__name__}"
            )
        params = {"enabled": ENABLED, **cls.SEARCH}
        for key in raw_section:
            if key not in params:
                raise SearchSpaceError(
                    f"{source}: unknown key {method}.{key!s}; {method} takes {', '.join(params)}"
                )
        for key, param in params.items():
            name = f"{method}.{key}"
            raw = raw_section.get(key, param.default)
            dims[name] = _parse_dimension(name, raw, param, f"{source}: {name}")
        if dims[f"{method}.enabled"].allows(True):
            methods.append(method)
    searched = [
        name
        for name, dim in dims.items()
        if dim.searched and name.split(".", 1)[0] in methods and _matters(name, dims)
    ]
    if not searched:
        raise SearchSpaceError(
            f"{source}: the search space is empty (every parameter is fixed); "
            "give at least one list of choices or a low/high range"
        )
    return SearchSpace(dims=dims, methods=tuple(methods), source=source, text=text)


def _matters(name: str, dims: Mapping[str, Dimension]) -> bool:
    """Whether the space can ever ask for ``name`` (per-layer settings only in their mode)."""
    method, _, param = name.partition(".")
    modes = {"layer_scale": "sampled", "budget_bits": "sensitivity"}
    if param not in modes:
        return True
    return dims[f"{method}.per_layer"].allows(True) and dims[f"{method}.allocation"].allows(
        modes[param]
    )


def load_search_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Read and validate a search-space YAML file.

    Raises:
        SearchSpaceError: The file is missing, not YAML, or not a valid space.
    """
    path = Path(path)
    text = read_text(path, "search space", SearchSpaceError)
    return parse_search_space_text(text, str(path))


def parse_search_space_text(text: str, source: str = "<space>") -> SearchSpace:
    """Parse YAML text (safely: bounded aliases and nesting, no duplicate keys) and validate it."""
    document = load_yaml(text, source, SearchSpaceError)
    return parse_search_space(document, source, text)


__all__ = [
    "Dimension",
    "FORMAT_VERSION",
    "SearchSpace",
    "load_search_space",
    "parse_search_space",
    "parse_search_space_text",
]
