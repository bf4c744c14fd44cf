"""What each trial records beside its values: its constraint in both forms dashboards read,
and a short markdown note (configuration in words, per-layer table, result, flags); and the
study's own note (its settings and baseline in words).

optuna-dashboard 0.21 reads a trial's constraints only from the old system attribute
``constraints`` (a list); Optuna 5's ``trial.set_constraint(key, value)`` stores
``constraints:<key>`` instead, which the dashboard ignores. :func:`record_constraint` writes
both forms; Optuna reads the old list under the keys ``"0"``, ``"1"``, ... which never collide
with a named key, and the values are the same, so feasibility is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from autocompress.record import (
    baseline_size_bytes,
    budget_words,
    flags,
    metric_name,
    over_budget,
    settings_rows,
    study_info,
)

LEGACY_CONSTRAINTS_KEY = "constraints"  # the list form optuna-dashboard 0.21 reads
_NEW_CONSTRAINT_PREFIX = "constraints:"


def record_constraint(trial: optuna.Trial, key: str, value: float) -> None:
    """Set a constraint so that Optuna 5 and optuna-dashboard 0.21 both see it.

    Also records the user attribute ``feasible`` (all constraints <= 0), a column in the
    dashboard's trial table.
    """
    trial.set_constraint(key, value)
    attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    values = [v for k, v in sorted(attrs.items()) if k.startswith(_NEW_CONSTRAINT_PREFIX)]
    trial.storage.set_trial_system_attr(trial._trial_id, LEGACY_CONSTRAINTS_KEY, values)
    trial.set_user_attr("feasible", all(v <= 0 for v in values))


def _times(ratio: float, better: str, worse: str) -> str:
    if not math.isfinite(ratio) or ratio <= 0:
        return "-"
    return f"{ratio:.2f}x {better}" if ratio >= 1 else f"{1 / ratio:.2f}x {worse}"


def _layer_table(attrs: dict[str, Any], baseline_widths: dict[str, int] | None) -> list[str]:
    """One row per layer, one column per method of the trial that declares one
    (:attr:`autocompress.methods.Method.LAYER_COLUMN`)."""
    from autocompress.methods import METHODS

    records = attrs.get("records") or {}
    widths = baseline_widths or {}
    columns = {
        cls.LAYER_COLUMN: cls.layer_cells(records[name], widths)
        for name, cls in METHODS.items()
        if cls.LAYER_COLUMN and name in records
    }
    layers = list(dict.fromkeys([*widths, *(n for cells in columns.values() for n in cells)]))
    if not layers or not columns:
        return []
    rows = [
        "| layer | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in layers:
        cells = " | ".join(c.get(name, "-") for c in columns.values())
        rows.append(f"| `{name or '(model)'}` | {cells} |")
    return [*rows, ""]


def trial_note(
    number: int,
    attrs: dict[str, Any],
    values: tuple[float, float, float],
    info: dict[str, Any],
    baseline_widths: dict[str, int] | None = None,
) -> str:
    """A short markdown note on one trial: its configuration, its layers, its result.

    Args:
        number: The trial number.
        attrs: The trial's user attributes (``summary``, ``records``, ``notes``, ...).
        values: Metric, latency (ms), size (KB).
        info: The study's record (:func:`autocompress.record.study_info`).
        baseline_widths: Output channels of each layer of the baseline.
    """
    value, latency, size = values
    base = info["baseline"]
    name = metric_name(info)
    feasible = not over_budget(info, value)
    verdict = (
        "feasible" if feasible else f"**INFEASIBLE**: outside the budget ({budget_words(info)})"
    )
    base_size = (baseline_size_bytes(info) or 0) / 1000
    lines = [f"## Trial {number}: {verdict}", ""]
    if attrs.get("summary"):
        lines += [f"`{attrs['summary']}`", ""]
    lines += [
        f"| | {name} | latency ms | {info['size']} KB |",
        "|---|---|---|---|",
        f"| baseline | {base['metric']:.4f} | {base['latency_ms']:.3f} | {base_size:.1f} |",
        f"| trial {number} | {value:.4f} | {latency:.3f} "
        f"({_times(base['latency_ms'] / latency if latency else math.inf, 'faster', 'slower')})"
        f" | {size:.1f} "
        f"({_times(base_size / size, 'smaller', 'larger') if size else '-'}) |",
        "",
    ]
    sizes = []
    if attrs.get("packed_bytes") is not None:
        sizes.append(f"packed artifact {attrs['packed_bytes']:,} B")
    if attrs.get("deployed_bytes") is not None:
        sizes.append(f"deployed file {attrs['deployed_bytes']:,} B ({attrs.get('deployed_kind')})")
    if sizes:
        lines += ["Sizes on disk: " + "; ".join(sizes) + ".", ""]
    lines += _layer_table(attrs, baseline_widths)
    facts = []
    if "sparsity" in attrs:
        facts.append(f"sparsity {attrs['sparsity']:.1%}")
    if "effective_bits" in attrs:
        facts.append(f"effective bits {attrs['effective_bits']:.2f}")
    if "params" in attrs:
        facts.append(f"params {attrs['params']:,}")
    if "macs" in attrs:
        facts.append(f"MACs {attrs['macs']:,}")
    if facts:
        lines += [", ".join(facts) + ".", ""]
    marks = flags(info, _Frozen(attrs))
    if marks:
        lines += ["Flags: " + ", ".join(marks) + ".", ""]
    lines += [f"- {n}" for n in attrs.get("notes") or []]
    return "\n".join(lines).rstrip() + "\n"


class _Frozen:
    """Just enough of a FrozenTrial for :func:`autocompress.record.flags`."""

    def __init__(self, attrs: dict[str, Any]) -> None:
        self.user_attrs = attrs


def save_trial_note(
    trial: optuna.Trial,
    values: tuple[float, float, float],
    info: dict[str, Any],
    baseline_widths: dict[str, int] | None = None,
) -> None:
    """Write :func:`trial_note` as the trial's note in optuna-dashboard (call after measuring)."""
    from optuna_dashboard import save_note

    attrs = trial.storage.get_trial(trial._trial_id).user_attrs
    save_note(trial, trial_note(trial.number, attrs, values, info, baseline_widths))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def study_note(info: dict[str, Any]) -> str:
    """A short markdown note on a study: its settings in words and its baseline.

    Args:
        info: The study's record (:func:`autocompress.record.study_info`).
    """
    base = info["baseline"]
    name = metric_name(info)
    size = baseline_size_bytes(info)
    test = base.get("test_metric")
    lines = ["## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in settings_rows(info)]
    lines += [
        "",
        "## Baseline (uncompressed)",
        "",
        f"| {name} | test {name} | latency ms | {info['size']} KB |",
        "|---|---|---|---|",
        f"| {base['metric']:.4f} | {'-' if test is None else f'{test:.4f}'} | "
        f"{base['latency_ms']:.3f} | {'-' if size is None else f'{size / 1000:.1f}'} |",
        "",
        f"A trial is feasible when {budget_words(info)} against the baseline; each trial's note "
        "says how it compares.",
    ]
    return "\n".join(lines) + "\n"


def save_study_note(study: optuna.Study, info: dict[str, Any] | None = None) -> None:
    """Write :func:`study_note` as the study's note in optuna-dashboard.

    Args:
        study: An autocompress study (its record is read when ``info`` is not given).
        info: The study's record, when the caller already has it.
    """
    from optuna_dashboard import save_note

    save_note(study, study_note(info if info is not None else study_info(study)))
