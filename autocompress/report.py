"""A static report of a study: the Pareto front in 2-D, hypervolume over trials, importances
and, when the study measured one, its per-layer sensitivity profile.

Two forms: one self-contained HTML file (figures embedded as base64 PNGs, opens offline) or one
PNG image. The hypervolume (:mod:`autocompress.hypervolume`, exact) is over
the feasible trials, in minimisation form (accuracy negated), with a reference point fixed by
the baseline: accuracy = baseline - budget, latency and size = 1.1 x baseline. It is also shown
as a fraction of the box between that reference and the ideal point (accuracy 1, latency 0,
size 0), which is easier to read than accuracy x ms x KB. The figures are drawn by
:mod:`autocompress.report_figures`; the settings and the target are written in words
(:func:`autocompress.record.settings_rows`).
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.hypervolume import hypervolume
from autocompress.record import (
    as_losses,
    baseline_metric,
    budget_words,
    feasible_front,
    front_columns,
    front_rows,
    higher_is_better,
    is_feasible,
    metric_limit,
    noise_warning,
    objective_names,
    settings_rows,
    study_info,
    target_words,
)
from autocompress.report_figures import draw_hypervolume, report_figure, sensitivity_figure
from autocompress.sensitivity_view import (
    format_increase,
    format_params,
    legend,
    profile_sections,
    study_profile,
)

FORMATS = ("html", "png")


@dataclass
class ReportData:
    """What the report shows, computed once from the study."""

    study_name: str
    info: dict[str, Any]
    trials: list[FrozenTrial]
    feasible: set[int]
    front: list[FrozenTrial]
    reference: np.ndarray
    hypervolume: list[tuple[int, float, float]]
    importances: dict[str, dict[str, float]] = field(default_factory=dict)
    importance_note: str = ""

    @property
    def baseline(self) -> dict[str, Any]:
        """The study's baseline record."""
        return dict(self.info["baseline"])

    @property
    def names(self) -> list[str]:
        """The objectives' names."""
        return objective_names(self.info)


def _is_feasible(trial: FrozenTrial) -> bool:
    return is_feasible(trial)


def reference_point(info: dict[str, Any]) -> np.ndarray:
    """The hypervolume reference, in minimisation form: the metric at the budget's limit,
    latency and size at 1.1 x the baseline's."""
    base = info["baseline"]
    limit = as_losses(info, [metric_limit(info), 0.0, 0.0])[0]
    return np.array([limit, 1.1 * base["latency_ms"], 1.1 * base["size_kb"]])


def ideal_metric_loss(info: dict[str, Any]) -> float:
    """The metric's best value, in minimisation form: 1 for a higher-is-better metric of at most
    1 (accuracy, recall), twice the baseline for another; 0 for a lower-is-better one."""
    base = float(info["baseline"]["metric"])
    if higher_is_better(info):
        return -(1.0 if base <= 1.0 else 2.0 * base)
    return 0.0


def hypervolume_history(
    trials: list[FrozenTrial], reference: np.ndarray, info: dict[str, Any]
) -> list[tuple[int, float, float]]:
    """After each completed trial: (number, hypervolume, fraction of the reference box).

    Only feasible trials count; a trial worse than the reference in any objective adds nothing.
    """
    ideal = ideal_metric_loss(info)
    ideal_box = float(np.prod(reference - np.array([min(ideal, reference[0] - 1e-12), 0.0, 0.0])))
    points: list[list[float]] = []
    history: list[tuple[int, float, float]] = []
    for t in sorted(trials, key=lambda t: t.number):
        if not _is_feasible(t):  # failed, stopped or over budget: adds nothing
            history.append((t.number, history[-1][1] if history else 0.0,
                            history[-1][2] if history else 0.0))  # fmt: skip
            continue
        loss = as_losses(info, list(t.values))
        if np.all(np.array(loss) <= reference):
            points.append(loss)
        hv = hypervolume(points, reference) if points else 0.0
        history.append((t.number, float(hv), float(hv) / ideal_box if ideal_box > 0 else 0.0))
    return history


def _objective(i: int) -> Callable[[FrozenTrial], float]:
    """The ``i``-th objective value of a trial."""
    return lambda t: t.values[i]


def param_importances(
    study: optuna.Study, evaluator: Any | None = None
) -> tuple[dict[str, dict[str, float]], str]:
    """Parameter importances for each objective, or why there are none.

    Returns:
        ``{metric: {param: importance}}`` and an empty note, or ``{}`` and the reason
        (too few trials, no parameter common to all trials, ...).
    """
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return {}, f"parameter importances need at least 2 completed trials ({len(done)} so far)"
    evaluator = evaluator or optuna.importance.FanovaImportanceEvaluator(seed=0)
    result: dict[str, dict[str, float]] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, metric in enumerate(objective_names(study_info(study))):
                imp = optuna.importance.get_param_importances(
                    study, evaluator=evaluator, target=_objective(i)
                )
                result[metric] = {k: float(v) for k, v in imp.items()}
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return {}, f"parameter importances are not available: {e}"
    if not any(result.values()):
        return {}, "no parameter is set in every completed trial; importances are not available"
    return result, ""


def collect(
    study: optuna.Study, *, importances: bool = True, importance_evaluator: Any | None = None
) -> ReportData:
    """Everything the report shows, from a loaded autocompress study.

    Args:
        study: An autocompress study.
        importances: Compute parameter importances (the slowest part).
        importance_evaluator: An Optuna importance evaluator (default: fANOVA, seed 0).
    """
    info = study_info(study)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ref = reference_point(info)
    imp, note = param_importances(study, importance_evaluator) if importances else ({}, "")
    return ReportData(
        study_name=study.study_name,
        info=info,
        trials=trials,
        feasible={t.number for t in trials if _is_feasible(t)},
        front=feasible_front(study) if trials else [],
        reference=ref,
        hypervolume=hypervolume_history(trials, ref, info),
        importances=imp,
        importance_note=note,
    )


def _png_bytes(fig: Any, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write_png(data: ReportData, path: Path) -> Path:
    """One image: the three projections and the hypervolume history."""
    path.write_bytes(_png_bytes(report_figure(data, with_hypervolume=True)))
    return path


def _img(png: bytes, alt: str) -> str:
    return (
        f'<img alt="{html.escape(alt)}" style="max-width:100%" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    )


def _table(table_id: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _importance_html(data: ReportData) -> str:
    if not data.importances:
        return f"<p>{html.escape(data.importance_note)}</p>"
    params = sorted({p for imp in data.importances.values() for p in imp})
    params.sort(key=lambda p: -max(imp.get(p, 0.0) for imp in data.importances.values()))
    names = data.names
    rows = [[p] + [f"{data.importances[m].get(p, 0.0):.3f}" for m in names] for p in params]
    return _table("importances", ["parameter", *names], rows) + (
        "<p>fANOVA importances over completed trials; parameters set only in some trials "
        "(conditional ones) are left out by Optuna.</p>"
    )


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td:last-child,th:last-child{text-align:left}"
    "#importances td:first-child{text-align:left}"
    "table[id^=sensitivity] td:first-child{text-align:left}"
    "#settings td{text-align:left}#settings th{text-align:left}"
    ".warn{color:#8a5a00}"
)


def _figure_caption(data: ReportData) -> str:
    name = html.escape(data.names[0])
    better = "higher" if higher_is_better(data.info) else "lower"
    direction = "" if better == "higher" else " (its axis is inverted, so better is up)"
    return (
        f"<p>Red: the feasible Pareto front, numbered by trial; blue: other feasible trials; "
        f"grey crosses: trials over the budget; star: the baseline; dashed line: the budget's "
        f"limit on {name}, {better} is better{direction}. Diamonds are warm-start trials; hollow "
        "markers are trials whose latency was unstable or measured on a contended CPU (the "
        "flags column below). Each projection is zoomed to the feasible trials and the "
        "baseline; trials outside that view are counted above it.</p>"
    )


def _sensitivity_html(data: ReportData) -> list[str]:
    """The sensitivity profile's heatmaps and tables; nothing for a study without one."""
    profile = study_profile(data.info)
    sections = profile_sections(profile) if profile is not None else []
    if profile is None or not sections:
        return []
    parts = [
        "<h2>Sensitivity per layer</h2>",
        f"<p>{html.escape(legend(data.info, profile))} Heatmaps: rows in the model's order, "
        "colour on a log scale; the tables list the most sensitive first.</p>",
        _img(
            _png_bytes(
                sensitivity_figure(sections, "loss increase when one layer alone is compressed")
            ),
            "sensitivity profile",
        ),  # fmt: skip
    ]
    for section in sections:
        rows = [
            [row.name, format_params(row.params), *map(format_increase, row.increases)]
            for row in section.sorted_rows("sensitivity")
        ]
        header = [section.noun, "params", *section.headers]
        parts += [
            f"<details><summary>{html.escape(section.method)}: {html.escape(section.what)}"
            "</summary>",
            _table(f"sensitivity-{section.key}", header, rows),
            "</details>",
        ]
    return parts


def write_html(data: ReportData, path: Path) -> Path:
    """A self-contained HTML report (no network needed to open it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    info = data.info
    ref = data.reference
    noise = noise_warning(info)
    hv_rows = [[str(n), f"{hv:.6g}", f"{frac:.4f}"] for n, hv, frac in data.hypervolume]
    final = data.hypervolume[-1] if data.hypervolume else (None, 0.0, 0.0)
    fig = Figure(figsize=(7, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    draw_hypervolume(fig.subplots(), data)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>autocompress report: {html.escape(data.study_name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Study {html.escape(data.study_name)}</h1>",
        f"<p>{len(data.trials)} completed trials, {len(data.feasible)} within the budget "
        f"({html.escape(budget_words(info))}), {len(data.front)} on the feasible Pareto front. "
        f"Measured on {html.escape(target_words(info))}.</p>",
        *([f"<p class='warn'>Warning: {html.escape(noise)}.</p>"] if noise else []),
        _table("settings", ["setting", "value"], [list(row) for row in settings_rows(info)]),
        "<h2>Pareto front, 2-D projections</h2>",
        _img(_png_bytes(report_figure(data, with_hypervolume=False)), "Pareto front projections"),
        _figure_caption(data),
        "<h2>Feasible Pareto front</h2>",
        _table("front", list(front_columns(info)), front_rows(info, data.front)),
        "<h2>Hypervolume over trials</h2>",
        f"<p>Reference point: {html.escape(data.names[0])} at the budget's limit (baseline "
        f"{html.escape(baseline_metric(info))}), latency {ref[1]:.3f} ms, size {ref[2]:.1f} KB "
        "(1.1 x baseline). "
        f"Final hypervolume {final[1]:.6g}, {final[2]:.4f} of the box "
        "between the reference and the ideal point.</p>",
        _img(_png_bytes(fig), "hypervolume history"),
        "<details><summary>hypervolume series</summary>",
        _table("hypervolume", ["trial", "hypervolume", "fraction"], hv_rows),
        "</details>",
        "<h2>Parameter importances</h2>",
        _importance_html(data),
        *_sensitivity_html(data),
        "</body></html>",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_report(
    study: optuna.Study, out: Path, fmt: str = "html", importance_evaluator: Any | None = None
) -> ReportData:
    """Write the report of ``study`` to ``out`` as ``html`` or ``png``.

    Raises:
        ValueError: Unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    data = collect(study, importances=fmt == "html", importance_evaluator=importance_evaluator)
    out.parent.mkdir(parents=True, exist_ok=True)
    (write_html if fmt == "html" else write_png)(data, out)
    return data
