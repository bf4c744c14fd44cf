"""What a study records and the one rule for reading it: objectives, feasibility, the front.

A leaf module (it needs only Optuna): the CLI, the report, the dashboard, the recipe export
and the objective all read a study through it. Studies made by earlier versions are read
through :func:`normalize_info`, so nothing they recorded is lost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.errors import StorageError
from autocompress.noise import budget_below_noise, with_se

ATTR = "autocompress"  # the study user attribute holding settings, baseline and hardware
SENSITIVITY = "sensitivity"  # the key of the sensitivity profile in that record
LATENCY, SIZE = "latency_ms", "size_kb"
SIZE_KINDS = ("deployed", "packed")
# A trial is faster than the baseline only when at least this much faster: the latency ratio
# of two runs of one model spreads by a few percent on a shared CPU (interleaved medians).
LATENCY_NOISE = 0.03
METRIC_ROUNDING = 1e-6  # x |baseline metric|: a deployment's float rounding is no gain
DEVICES = ("cpu", "cuda")
MAX_BATCH_SIZE = 4096  # the largest batch latency is measured at (one home: the CLI checks it)
_UID = re.compile(r"[0-9a-f]{12}")
# Where each size is recorded (trial user attributes, the baseline record).
SIZE_KEYS = {"deployed": "deployed_bytes", "packed": "packed_bytes"}


def objective_bytes(kind: str, *, packed: int, deployed: int) -> int:
    """The size the study optimises (``kind``, :data:`SIZE_KINDS`): the deployed file or the
    packed artifact. The one place the choice is made."""
    if kind not in SIZE_KEYS:
        raise ValueError(f"size must be one of {SIZE_KINDS}, got {kind!r}")
    return deployed if kind == "deployed" else packed


def recorded_bytes(record: Mapping[str, Any], kind: str) -> float | None:
    """The ``kind`` size a trial or baseline recorded (``None`` if it did not); records of
    earlier versions hold the packed size as ``size_bytes``."""
    value = record.get(SIZE_KEYS[kind])
    if value is None and kind == "packed":
        value = record.get("size_bytes")
    return None if value is None else float(value)


def higher_is_better(info: Mapping[str, Any]) -> bool:
    """The metric's direction, as the study's task recorded it: the one place it is read."""
    return bool(info["task"]["higher_is_better"])


def directions(higher_is_better: bool) -> list[Literal["minimize", "maximize"]]:
    """Optuna directions of (metric, latency, size)."""
    return ["maximize" if higher_is_better else "minimize", "minimize", "minimize"]


def normalize_info(info: dict[str, Any]) -> dict[str, Any]:
    """A study's stored record in today's shape (earlier versions' records are upgraded).

    Today's shape holds ``task`` (name, metric, higher_is_better), ``budget`` (absolute or
    relative worsening allowed) and ``size`` (which size is the objective) beside
    ``settings``, ``baseline`` and ``hardware``.
    """
    info = dict(info)
    settings = _mapping(info.get("settings"))
    info.setdefault("task", {"name": "classification", "metric": "accuracy",
                             "higher_is_better": True})  # fmt: skip
    if "budget" not in info:
        drop = settings.get("max_metric_drop", settings.get("max_accuracy_drop", 0.01))
        info["budget"] = {"absolute": drop, "relative": settings.get("max_relative_drop")}
    info.setdefault("size", settings.get("size", "packed"))
    baseline = _mapping(info.get("baseline"))
    if "metric" not in baseline and "accuracy" in baseline:
        baseline["metric"] = baseline["accuracy"]
        baseline["test_metric"] = baseline.get("test_accuracy")
    baseline.setdefault("packed_bytes", recorded_bytes(baseline, "packed"))
    info["baseline"] = baseline
    info["settings"] = settings
    return info


def _mapping(value: Any) -> dict[str, Any]:
    """A copy of a stored mapping; anything else as an empty one (:func:`record_problem`
    then names it)."""
    return dict(value) if isinstance(value, dict) else {}


def study_info(study: optuna.Study) -> dict[str, Any]:
    """The settings, baseline, task and hardware stored with an autocompress study.

    Raises:
        StorageError: The study was not created by autocompress.
    """
    info = study.user_attrs.get(ATTR)
    if not isinstance(info, dict):
        raise StorageError(f"study {study.study_name!r} was not created by autocompress")
    info = normalize_info(info)
    problem = record_problem(info)
    if problem is not None:
        raise StorageError(
            f"study {study.study_name!r}: its stored record is not valid ({problem}); "
            "something other than autocompress wrote it: restore the database from a backup, "
            "or start a new --study"
        )
    return info


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: Any, low: int, high: int | None = None) -> bool:
    # Records of earlier versions stored some counts as floats (300000.0): whole is whole.
    integral = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )
    return integral and low <= value and (high is None or value <= high)


def _check_fields(rules: dict[str, tuple[Any, bool, str]], part: Any, where: str) -> str | None:
    """The first field of ``part`` that breaks its rule: (test, required, what is expected)."""
    if not isinstance(part, dict):
        return f"{where} is a {type(part).__name__}, not a mapping"
    for key, (test, required, expected) in rules.items():
        if key not in part or part[key] is None:
            if required:
                return f"{where}.{key} is missing"
            continue
        if not test(part[key]):
            shown = repr(part[key])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            return f"{where}.{key} is {shown}, expected {expected}"
    return None


_SETTINGS = {
    "workload": (lambda v: isinstance(v, str) and 0 < len(v) <= 1000, True, "a workload name"),
    "space_text": (lambda v: isinstance(v, str), False, "text"),
    "space_source": (lambda v: isinstance(v, str), False, "text"),
    "data_dir": (lambda v: isinstance(v, str), False, "a folder name"),
    "sampler": (lambda v: isinstance(v, str), False, "a sampler name"),
    "seed": (lambda v: _whole(v, 0, 2**32 - 1), False, "a whole number in [0, 2**32)"),
    "target": (lambda v: isinstance(v, dict), False, "a mapping"),
}
_TARGET = {
    "device": (lambda v: v in DEVICES, False, " or ".join(DEVICES)),
    "runtime": (lambda v: isinstance(v, str), False, "a runtime name"),
    "threads": (lambda v: _whole(v, 1, 1024), False, "a whole number from 1 to 1024"),
    "batch_size": (
        lambda v: _whole(v, 1, MAX_BATCH_SIZE),
        False,
        f"a whole number from 1 to {MAX_BATCH_SIZE}",
    ),
}
_TASK = {
    "name": (lambda v: isinstance(v, str), True, "a task name"),
    "metric": (lambda v: isinstance(v, str) and 0 < len(v) <= 100, True, "a metric name"),
    "higher_is_better": (lambda v: isinstance(v, bool), True, "true or false"),
}
_BUDGET = {
    key: (lambda v: _number(v) and 0 <= v < math.inf, False, "a finite number >= 0")
    for key in ("absolute", "relative")
}
_BASELINE = {
    "metric": (lambda v: _number(v) and math.isfinite(v), True, "a finite number"),
    "latency_ms": (lambda v: _number(v) and 0 < v < math.inf, True, "a time > 0"),
    "size_kb": (lambda v: _number(v) and 0 < v < math.inf, False, "a size > 0"),
    "packed_bytes": (lambda v: _whole(v, 1), False, "a whole number of bytes > 0"),
    "deployed_bytes": (lambda v: _whole(v, 1), False, "a whole number of bytes > 0"),
    "test_metric": (_number, False, "a number"),
}


def record_problem(info: dict[str, Any]) -> str | None:
    """What is wrong with a study's record (in today's shape), or ``None``.

    Every field a reader uses is checked before use: the record is input (anyone who can
    write the database wrote it), never trusted like the command line. ``uid`` names a
    folder, so it must be the 12 hex digits creation writes.
    """
    uid = info.get("uid")
    if uid is not None and not (isinstance(uid, str) and _UID.fullmatch(uid)):
        return f"uid {str(uid)[:40]!r} is not 12 hex digits"
    problem = (
        _check_fields(_SETTINGS, info["settings"], "settings")
        or _check_fields(_TARGET, info["settings"].get("target") or {}, "settings.target")
        or _check_fields(_TASK, info["task"], "task")
        or _check_fields(_BUDGET, info["budget"], "budget")
        or _check_fields(_BASELINE, info["baseline"], "baseline")
    )
    if problem is not None:
        return problem
    if info["budget"].get("absolute") is None and info["budget"].get("relative") is None:
        return "budget has neither an absolute nor a relative limit"
    if info["size"] not in SIZE_KINDS:
        return f"size {str(info['size'])[:40]!r} is not {' or '.join(SIZE_KINDS)}"
    for key in ("hardware", SENSITIVITY, "workload_info"):
        if info.get(key) is not None and not isinstance(info[key], dict):
            return f"{key} is a {type(info[key]).__name__}, not a mapping"
    return None


def metric_name(info: dict[str, Any]) -> str:
    """The name of the study's metric (its first objective)."""
    return str(info["task"]["metric"])


def objective_names(info: dict[str, Any]) -> list[str]:
    """The three objectives' names."""
    return [metric_name(info), LATENCY, SIZE]


def allowed_worsening(info: dict[str, Any]) -> float:
    """How much worse than the baseline the metric may be, in the metric's units."""
    budget = info["budget"]
    if budget.get("relative") is not None:
        return float(budget["relative"]) * abs(float(info["baseline"]["metric"]))
    return float(budget["absolute"])


def worsening(info: dict[str, Any], value: float, baseline: float | None = None) -> float:
    """How much worse ``value`` is than the baseline's metric (> 0: worse); ``baseline``: the
    baseline's metric on another split (test), in place of validation's."""
    base = float(info["baseline"]["metric"]) if baseline is None else baseline
    return base - value if higher_is_better(info) else value - base


def metric_limit(info: dict[str, Any]) -> float:
    """The worst metric value the budget allows (the baseline's, worsened by the budget)."""
    base = float(info["baseline"]["metric"])
    allowed = allowed_worsening(info)
    return base - allowed if higher_is_better(info) else base + allowed


def budget_excess(info: dict[str, Any], value: float, baseline: float | None = None) -> float:
    """The budget's constraint value for a metric of ``value`` (> 0: over the budget; a
    non-finite metric is infinitely over); ``baseline`` as in :func:`worsening`."""
    if not math.isfinite(value):
        return math.inf
    return worsening(info, value, baseline) - allowed_worsening(info)


def over_budget(info: dict[str, Any], value: float, baseline: float | None = None) -> bool:
    """Whether a metric of ``value`` is beyond the budget (the rule of feasibility on
    validation, of the ``test over budget`` flag and of export's warning)."""
    return budget_excess(info, value, baseline) > 0


def budget_words(info: dict[str, Any]) -> str:
    """The budget in words, e.g. ``accuracy drop <= 0.01`` or ``perplexity rise <= 5%``."""
    name = metric_name(info)
    change = "drop" if higher_is_better(info) else "rise"
    budget = info["budget"]
    if budget.get("relative") is not None:
        return f"{name} {change} <= {float(budget['relative']):.1%} ({allowed_worsening(info):.4g})"
    return f"{name} {change} <= {float(budget['absolute']):g}"


# Production limits stored in the settings: the measured figure each one bounds and its unit.
LIMITS = {
    "max_latency_ms": ("latency", "ms"),
    "max_size_kb": ("size", "KB"),
    "max_memory_mb": ("resident memory", "MB"),
}


def limits(info: dict[str, Any]) -> dict[str, float]:
    """The study's production limits that are set, e.g. ``{"max_latency_ms": 5.0}``."""
    settings = info.get("settings") or {}
    return {k: float(settings[k]) for k in LIMITS if settings.get(k) is not None}


def limit_words(info: dict[str, Any]) -> str:
    """The limits in words, e.g. ``latency <= 5 ms, size <= 300 KB``; ``none`` without any."""
    words = [f"{LIMITS[k][0]} <= {v:g} {LIMITS[k][1]}" for k, v in limits(info).items()]
    return ", ".join(words) or "none"


def limit_excess(info: dict[str, Any], measured: dict[str, float | None]) -> dict[str, float]:
    """Each set limit's constraint value (> 0: over the limit), from the measured figures
    (``latency_ms``, ``size_kb``, ``memory_mb``); a figure that could not be measured is
    infinitely over its limit."""
    keys = {"max_latency_ms": "latency_ms", "max_size_kb": "size_kb", "max_memory_mb": "memory_mb"}
    out = {}
    for key, limit in limits(info).items():
        value = measured.get(keys[key])
        out[key] = math.inf if value is None or not math.isfinite(value) else value - limit
    return out


def baseline_metric(
    info: dict[str, Any], split: str = "val", items: bool = False, tag: bool = True
) -> str:
    """The baseline's metric on ``split`` (``val`` or ``test``) with its standard error where
    the study measured it: ``0.6512 ± 0.0103 (SE)``, the bare value for earlier studies;
    with ``items``, how many items the SE is over; without ``tag``, no ``(SE)``."""
    base = info["baseline"]
    key = "metric" if split == "val" else "test_metric"
    value = base.get(key)
    n = base.get(f"{key}_items") if items else None
    return with_se(None if value is None else float(value), base.get(f"{key}_se"), n, tag=tag)


def baseline_words(info: dict[str, Any]) -> str:
    """The baseline's metric in words, e.g. ``accuracy 0.9733 ± 0.0084 (SE, 377 items) on
    validation, 0.9611 ± 0.0102 (SE, 360 items) on test``."""
    return (
        f"{metric_name(info)} {baseline_metric(info, 'val', items=True)} on validation, "
        f"{baseline_metric(info, 'test', items=True)} on test"
    )


def noise_warning(info: dict[str, Any]) -> str | None:
    """Whether the study's budget is below twice its baseline's validation standard error
    (the rule: :func:`autocompress.noise.budget_below_noise`), in words; else ``None``."""
    base = info["baseline"]
    return budget_below_noise(
        allowed_worsening(info), base.get("metric_se"), base.get("metric_items")
    )


def is_feasible(trial: FrozenTrial) -> bool:
    """The one feasibility rule: complete, at full fidelity, every constraint <= 0."""
    return (
        trial.state == TrialState.COMPLETE
        and trial.user_attrs.get("fidelity", "full") == "full"
        and all(v <= 0 for v in trial.constraints.values())
        and all(math.isfinite(v) for v in (trial.values or []))
    )


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Pareto dominance of losses (minimised): ``a`` is no worse than ``b`` in every objective
    and better in one (the front's rule)."""
    pairs = list(zip(a, b, strict=True))
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def dominates_by(a: Sequence[float], b: Sequence[float], margins: Sequence[float]) -> bool:
    """The variant for noisy measurements: ``a`` is no worse than ``b`` in every objective,
    and ``margins[i]`` (a share, >= 0) better in objective ``i`` (``a_i <= b_i / (1 + m)``),
    e.g. a latency margin for timing noise (:data:`autocompress.fidelity.LATENCY_MARGIN`)."""
    return all(x <= y / (1 + m) for x, y, m in zip(a, b, margins, strict=True))


def as_losses(info: dict[str, Any], values: Sequence[float]) -> list[float]:
    """Objective values in minimisation form (the metric negated when higher is better)."""
    sign = -1.0 if higher_is_better(info) else 1.0
    return [sign * values[0], values[1], values[2]]


def size_key(info: dict[str, Any]) -> str:
    """The user attribute (and baseline key) of the size the study optimises, in bytes."""
    return SIZE_KEYS[info["size"]]


def baseline_size_bytes(info: dict[str, Any]) -> float | None:
    """The baseline's size of the kind the study optimises (:func:`size_key`), in bytes."""
    return recorded_bytes(info["baseline"], info["size"])


def beats_baseline(info: dict[str, Any], values: list[float] | tuple[float, ...]) -> bool:
    """Whether objective values (metric, latency ms, size KB) are better than the
    uncompressed baseline's in at least one objective, so that the baseline does not dominate
    them: a better metric (beyond float rounding, :data:`METRIC_ROUNDING` x the baseline's),
    a latency at least :data:`LATENCY_NOISE` below the baseline's (timing noise is no
    speed-up), or fewer bytes of the optimised size. A trial that is none of these (a
    fine-tuning alone at x0.99 speed and the same size) is not a result.
    """
    base = info["baseline"]
    metric = float(base["metric"])
    gain = -worsening(info, float(values[0]))
    if gain > METRIC_ROUNDING * max(1.0, abs(metric)):
        return True
    if float(values[1]) < float(base["latency_ms"]) * (1.0 - LATENCY_NOISE):
        return True
    size = baseline_size_bytes(info)
    return size is None or float(values[2]) * 1000 < size


def front_of(info: dict[str, Any], trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The one rule of the front: the feasible trials (:func:`is_feasible`) that beat the
    baseline somewhere (:func:`beats_baseline`) and that no other such trial dominates, best
    metric first."""
    feasible = [t for t in trials if is_feasible(t) and beats_baseline(info, t.values)]
    losses = {t.number: as_losses(info, t.values) for t in feasible}
    front = [
        t
        for t in feasible
        if not any(dominates(losses[o.number], losses[t.number]) for o in feasible)
    ]
    return sorted(front, key=lambda t: (losses[t.number], t.number))


def feasible_front(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front of ``study`` (:func:`front_of`): what the pareto table, the export,
    the report and the dashboard show."""
    return front_of(study_info(study), study.get_trials(deepcopy=False))


class HasUserAttrs(Protocol):
    """What :func:`flags` reads of a trial: a ``FrozenTrial`` has it."""

    @property
    def user_attrs(self) -> dict[str, Any]: ...


def flags(info: dict[str, Any], trial: HasUserAttrs) -> list[str]:
    """What a reader should know about a trial's figures, in short words."""
    attrs = trial.user_attrs
    out = []
    if attrs.get("warm_start"):
        out.append("warm start")
    config = attrs.get("config")
    if isinstance(config, dict) and config.get("format") == 2 and not config.get("methods"):
        out.append("uncompressed: differences from the baseline are measurement noise")
    if attrs.get("latency_stable") is False:
        out.append("latency unstable")
    if attrs.get("latency_contended"):
        out.append("CPU contended")
    test = attrs.get("test_metric", attrs.get("test_accuracy"))
    base_test = info["baseline"].get("test_metric")
    if test is not None and base_test is not None and math.isfinite(test):
        if over_budget(info, float(test), baseline=float(base_test)):
            out.append("test over budget")
    return out


def front_columns(info: dict[str, Any]) -> tuple[str, ...]:
    """Columns of :func:`front_rows`."""
    name = metric_name(info)
    return ("trial", name, f"test {name}", "latency ms", "speed-up", "packed KB",
            "deployed KB", "smaller", "flags", "config")  # fmt: skip


FIGURES = 8  # the first columns of front_columns: figures; then flags and the configuration


def front_legend(info: dict[str, Any]) -> list[str]:
    """What the front's columns and the configurations' short words mean, one line each."""
    name = metric_name(info)
    kind = "deployed file" if info["size"] == "deployed" else "packed artifact"
    noise = (
        [
            f"baseline {name} ± SE: its standard error, a bootstrap over the split's items "
            f"({baseline_words(info)}): how far another draw of items would move it."
        ]
        if info["baseline"].get("metric_se") is not None
        else []
    )
    return [
        f"{name}: on the validation split (what the search optimises); test {name}: on the "
        "test split, reported, never searched on.",
        *noise,
        "latency ms: median of the deployed form on the target, timed interleaved with the "
        "baseline; speed-up: the baseline's latency / the trial's.",
        "packed KB: the compressed artifact (.acpk: k-bit codes, scales, sparse weights); "
        "deployed KB: the file(s) the runtime loads. 1 KB = 1000 bytes on disk.",
        f"smaller: the baseline's {kind} size / the trial's (the size objective is the "
        f"{kind}). A trial no better than the baseline anywhere is not on the front.",
        "In configurations: ft Nep = fine-tuning for N epochs; QAT = quantization-aware "
        "training; KD T= a= = distillation temperature and loss weight; lr = learning rate; "
        "rr = reduce_range (7-bit int8 activations); qdq/qoperator = ONNX int8 formats; "
        "per-channel/per-tensor/groupN = weight scales per output channel, tensor or N "
        "weights; rtn = round-to-nearest; -N% = share removed.",
    ]


def _kb(value: Any) -> str:
    return "-" if value is None else f"{float(value) / 1000:.1f}"


def front_rows(info: dict[str, Any], front: list[FrozenTrial]) -> list[list[str]]:
    """The front as table rows (:func:`front_columns`), the baseline first for reference.

    ``smaller`` compares the size the study optimises (``info["size"]``: the deployed file
    or the packed artifact) with the baseline's same size.
    """
    base = info["baseline"]
    base_size = baseline_size_bytes(info) or math.nan
    rows = [
        [
            "baseline",
            baseline_metric(info, "val", tag=False),
            baseline_metric(info, "test", tag=False),
            f"{base['latency_ms']:.3f}",
            "1.00x",
            _kb(base.get("packed_bytes")),
            _kb(base.get("deployed_bytes")),
            "1.0x",
            "",
            "uncompressed fp32",
        ]
    ]
    for t in front:
        value, latency, size_kb = t.values
        attrs = t.user_attrs
        rows.append(
            [
                str(t.number),
                f"{value:.4f}",
                f"{attrs.get('test_metric', attrs.get('test_accuracy', math.nan)):.4f}",
                f"{latency:.3f}",
                f"{base['latency_ms'] / latency:.2f}x",
                _kb(recorded_bytes(attrs, "packed")),
                _kb(attrs.get("deployed_bytes")),
                f"{base_size / 1000 / size_kb:.1f}x",
                ", ".join(flags(info, t)),
                attrs.get("summary", ""),
            ]
        )
    return rows


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def target_words(info: dict[str, Any]) -> str:
    """The target and the machine in words, e.g. ``cpu-onnxruntime, batch 32, 1 thread, on
    AMD EPYC 7B13 (2 logical cores)``."""
    target = info["settings"].get("target")
    if not isinstance(target, dict):
        return "not recorded"
    device = str(target.get("device", "cpu"))
    words = f"{device}-{target.get('runtime', 'torch')}, batch {target.get('batch_size', '?')}"
    if target.get("threads") is not None:
        words += f", {_plural(int(target['threads']), 'thread')}"
    hw = info.get("hardware") or {}
    gpu = device.startswith("cuda") and hw.get("gpu")
    machine = hw.get("gpu") if gpu else hw.get("cpu")
    if machine:
        words += f", on {machine}"
        if hw.get("logical_cores") and not gpu:
            words += f" ({_plural(int(hw['logical_cores']), 'logical core')})"
    return words


def _yes_no(value: Any) -> str:
    return "not recorded" if value is None else ("yes" if value else "no")


def settings_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The study's settings in words, as (setting, value) rows, for reports and notes."""
    settings, task, hw = info["settings"], info["task"], info.get("hardware") or {}
    better = "higher" if higher_is_better(info) else "lower"
    size = {"deployed": "deployed file (what the runtime loads)",
            "packed": "packed artifact (compressed weights)"}  # fmt: skip
    rows = [
        ("workload", str(settings.get("workload", "not recorded"))),
        ("task", f"{task.get('name', '?')}: {metric_name(info)}, {better} is better"),
        ("budget", budget_words(info)),
        ("limits", limit_words(info)),
        ("baseline", baseline_words(info)),
        ("size objective", size.get(info["size"], str(info["size"]))),
        ("target", target_words(info)),
        ("search space", str(settings.get("space_source", "not recorded"))),
        ("sampler", str(settings.get("sampler", "not recorded"))),
        ("seed", str(settings.get("seed", "not recorded"))),
        ("early stop", _yes_no(settings.get("early_stop"))),
        ("cheap fidelity first", _yes_no(settings.get("cheap_first"))),
        ("warm start", _yes_no(settings.get("warm_start"))),
    ]
    if hw.get("isa"):
        rows.append(("instruction sets", str(hw["isa"])))
    if hw.get("torch"):
        libraries = [f"torch {hw['torch']}"]
        libraries += [f"{k} {hw[k]}" for k in ("onnxruntime", "openvino", "nncf") if hw.get(k)]
        machine = [str(hw["machine"])] if hw.get("machine") else []
        rows.append(("software", ", ".join(libraries + machine)))
    made = [f"autocompress {info['version']}"] if info.get("version") else []
    made += [f"on {info['created']}"] if info.get("created") else []
    if made:
        rows.append(("created", " ".join(made)))
    return rows
