"""A static report of a study: the Pareto front in 2-D, hypervolume over trials, importances.

Two forms: one self-contained HTML file (figures embedded as base64 PNGs, opens offline) or one
PNG image. The hypervolume is Optuna's own (``optuna._hypervolume.compute_hypervolume``) over
the feasible trials, in minimisation form (accuracy negated), with a reference point fixed by
the baseline: accuracy = baseline - budget, latency and size = 1.1 x baseline. It is also shown
as a fraction of the box between that reference and the ideal point (accuracy 1, latency 0,
size 0), which is easier to read than accuracy x ms x KB.
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume
from optuna.trial import FrozenTrial, TrialState

from autocompress.study import FRONT_COLUMNS, METRIC_NAMES, feasible_front, front_rows, study_info

FORMATS = ("html", "png")
LABELS = {"accuracy": "accuracy", "latency_ms": "latency (ms)", "size_kb": "size (KB)"}
# (x, y) objective indices of the three projections
PROJECTIONS = ((1, 0), (2, 0), (1, 2))


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
        return self.info["baseline"]

    @property
    def budget(self) -> float:
        """The largest allowed accuracy drop."""
        return self.info["settings"]["max_accuracy_drop"]


def _is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def reference_point(baseline: dict[str, Any], max_accuracy_drop: float) -> np.ndarray:
    """The hypervolume reference, in minimisation form: (-accuracy, latency, size)."""
    return np.array(
        [
            -(baseline["accuracy"] - max_accuracy_drop),
            1.1 * baseline["latency_ms"],
            1.1 * baseline["size_kb"],
        ]
    )


def hypervolume_history(
    trials: list[FrozenTrial], reference: np.ndarray
) -> list[tuple[int, float, float]]:
    """After each completed trial: (number, hypervolume, fraction of the reference box).

    Only feasible trials count; a trial worse than the reference in any objective adds nothing.
    """
    ideal_box = float(np.prod(reference - np.array([-1.0, 0.0, 0.0])))
    points: list[list[float]] = []
    history = []
    for t in sorted(trials, key=lambda t: t.number):
        loss = [-t.values[0], t.values[1], t.values[2]]
        if _is_feasible(t) and np.all(np.array(loss) <= reference):
            points.append(loss)
        hv = compute_hypervolume(np.array(points), reference) if points else 0.0
        history.append((t.number, float(hv), float(hv) / ideal_box if ideal_box > 0 else 0.0))
    return history


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
            for i, metric in enumerate(METRIC_NAMES):
                imp = optuna.importance.get_param_importances(
                    study, evaluator=evaluator, target=lambda t, i=i: t.values[i]
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
    ref = reference_point(info["baseline"], info["settings"]["max_accuracy_drop"])
    imp, note = param_importances(study, importance_evaluator) if importances else ({}, "")
    return ReportData(
        study_name=study.study_name,
        info=info,
        trials=trials,
        feasible={t.number for t in trials if _is_feasible(t)},
        front=feasible_front(study) if trials else [],
        reference=ref,
        hypervolume=hypervolume_history(trials, ref),
        importances=imp,
        importance_note=note,
    )


def _draw_projection(ax: Any, data: ReportData, xi: int, yi: int) -> None:
    base = [data.baseline[m] for m in METRIC_NAMES]
    front = {t.number for t in data.front}
    groups = [
        ([t for t in data.trials if t.number not in data.feasible], "infeasible", "#bbbbbb", "x"),
        (
            [t for t in data.trials if t.number in data.feasible and t.number not in front],
            "feasible",
            "#4c78a8",
            "o",
        ),
        (data.front, "feasible front", "#e45756", "o"),
    ]
    for trials, label, color, marker in groups:
        if trials:
            ax.scatter(
                [t.values[xi] for t in trials],
                [t.values[yi] for t in trials],
                c=color,
                marker=marker,
                s=40 if label == "feasible front" else 22,
                label=label,
                zorder=3 if label == "feasible front" else 2,
            )
    for t in data.front:
        ax.annotate(
            str(t.number), (t.values[xi], t.values[yi]), fontsize=7, xytext=(3, 3),
            textcoords="offset points",
        )  # fmt: skip
    ax.scatter(
        [base[xi]], [base[yi]], marker="*", s=160, facecolors="none", edgecolors="black",
        label="baseline", zorder=4,
    )  # fmt: skip
    if yi == 0:
        ax.axhline(base[0] - data.budget, color="#888888", ls="--", lw=1, label="budget")
    if xi == 2 or yi == 2:
        (ax.set_xscale if xi == 2 else ax.set_yscale)("log")
    ax.set_xlabel(LABELS[METRIC_NAMES[xi]])
    ax.set_ylabel(LABELS[METRIC_NAMES[yi]])
    ax.grid(alpha=0.3)


def _draw_hypervolume(ax: Any, data: ReportData) -> None:
    if data.hypervolume:
        numbers = [n for n, _, _ in data.hypervolume]
        ax.step(numbers, [f for _, _, f in data.hypervolume], where="post", color="#4c78a8")
        ax.plot(numbers, [f for _, _, f in data.hypervolume], "o", ms=3, color="#4c78a8")
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume (fraction of reference box)")
    ax.set_title("feasible hypervolume over trials", fontsize=10)
    ax.grid(alpha=0.3)


def _figure(data: ReportData, *, with_hypervolume: bool) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    if with_hypervolume:
        fig = Figure(figsize=(11, 9), layout="constrained")
        axes = list(fig.subplots(2, 2).flat)
    else:
        fig = Figure(figsize=(15, 4.6), layout="constrained")
        axes = list(fig.subplots(1, 3))
    for ax, (xi, yi) in zip(axes, PROJECTIONS, strict=False):
        _draw_projection(ax, data, xi, yi)
    axes[0].legend(fontsize=8, loc="best")
    if with_hypervolume:
        _draw_hypervolume(axes[3], data)
    fig.suptitle(
        f"{data.study_name}: {len(data.trials)} trials, {len(data.feasible)} feasible, "
        f"front {len(data.front)} (accuracy drop <= {data.budget})"
    )
    return fig


def _png_bytes(fig: Any, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write_png(data: ReportData, path: Path) -> Path:
    """One image: the three projections and the hypervolume history."""
    path.write_bytes(_png_bytes(_figure(data, with_hypervolume=True)))
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
    rows = [[p] + [f"{data.importances[m].get(p, 0.0):.3f}" for m in METRIC_NAMES] for p in params]
    return _table("importances", ["parameter", *METRIC_NAMES], rows) + (
        "<p>fANOVA importances over completed trials; parameters set only in some trials "
        "(conditional ones) are left out by Optuna.</p>"
    )


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td:last-child,th:last-child{text-align:left}"
    "#importances td:first-child{text-align:left}"
)


def write_html(data: ReportData, path: Path) -> Path:
    """A self-contained HTML report (no network needed to open it)."""
    info, b = data.info, data.baseline
    settings, hw = info["settings"], info.get("hardware", {})
    ref = data.reference
    hv_rows = [[str(n), f"{hv:.6g}", f"{frac:.4f}"] for n, hv, frac in data.hypervolume]
    final = data.hypervolume[-1] if data.hypervolume else (None, 0.0, 0.0)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>autocompress report: {html.escape(data.study_name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Study {html.escape(data.study_name)}</h1>",
        f"<p>Workload {html.escape(str(settings['workload']))}; {len(data.trials)} completed "
        f"trials, {len(data.feasible)} within the accuracy budget (drop &le; {data.budget}), "
        f"{len(data.front)} on the feasible Pareto front. Target: "
        f"{html.escape(str(settings['target']))}; hardware: "
        f"{html.escape(str(hw.get('cpu', hw.get('device', '?'))))}.</p>",
        "<h2>Pareto front, 2-D projections</h2>",
        _img(_png_bytes(_figure(data, with_hypervolume=False)), "Pareto front projections"),
        "<p>Red: the feasible Pareto front (trial numbers); blue: other feasible trials; grey "
        "crosses: trials over the accuracy budget; star: the baseline.</p>",
        "<h2>Feasible Pareto front</h2>",
        _table(
            "front",
            list(FRONT_COLUMNS),
            front_rows(data.baseline, data.front),
        ),
        "<h2>Hypervolume over trials</h2>",
        f"<p>Reference point: accuracy {-ref[0]:.4f} (baseline {b['accuracy']:.4f} - budget "
        f"{data.budget}), latency {ref[1]:.3f} ms, size {ref[2]:.1f} KB (1.1 x baseline). "
        f"Final hypervolume {final[1]:.6g} (accuracy x ms x KB), {final[2]:.4f} of the box "
        "between the reference and the ideal point.</p>",
    ]
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), layout="constrained")
    _draw_hypervolume(fig.subplots(), data)
    parts += [
        _img(_png_bytes(fig), "hypervolume history"),
        "<details><summary>hypervolume series</summary>",
        _table("hypervolume", ["trial", "hypervolume", "fraction"], hv_rows),
        "</details>",
        "<h2>Parameter importances</h2>",
        _importance_html(data),
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
