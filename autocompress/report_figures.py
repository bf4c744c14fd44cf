"""The report's figures: three 2-D projections of the front, the hypervolume over trials and,
for a study with a sensitivity profile, its heatmaps (layers by settings, loss increase).

Each projection is zoomed to the feasible region (the feasible trials, the baseline and the
budget's limit, with a margin): infeasible trials far outside it are not drawn but counted in
the projection's title, so they do not squash the front into one line. Front points carry their
trial numbers, placed where they overlap nothing; warm-start trials are diamonds, trials whose
latency was unstable or measured on a contended CPU are hollow. Size axes are logarithmic with a
few plain ticks (``20 KB``); a metric that is better when lower is drawn with its axis inverted,
so better is up in every projection.

Layout is computed once (constrained), then frozen, so the label placement and the tick
thinning, done in display coordinates, hold in the saved image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial

from autocompress.record import allowed_worsening, budget_words, flags, higher_is_better
from autocompress.sensitivity_view import ProfileRow, ProfileSection

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.backend_bases import RendererBase
    from matplotlib.figure import Figure

    from autocompress.report import ReportData

LABELS = {"latency_ms": "latency (ms)", "size_kb": "size (KB, log scale)"}
UNITS = {"latency_ms": " ms", "size_kb": " KB"}
WORDS = {"latency_ms": "latency", "size_kb": "size"}
LOG = frozenset({2})  # objective indices drawn on a log axis: size
# (x, y) objective indices of the three projections
PROJECTIONS = ((1, 0), (2, 0), (1, 2))
MARGIN = 0.08  # share of the span added on each side of the feasible region
COLORS = {"infeasible": "#aaaaaa", "feasible": "#4c78a8", "front": "#e45756"}
LABEL_POINTS = 8  # font size of the front's trial numbers
MAX_TICKS = 5


@dataclass(frozen=True)
class View:
    """The part of one projection that is drawn.

    Attributes:
        x: The x axis limits (low, high), in data units.
        y: The y axis limits (low, high), in data units (the metric's axis is drawn inverted
            when lower is better; the limits are still low, high).
        outside: The trials left out of the view (all infeasible).
        note: What was left out, in words; empty when nothing was.
    """

    x: tuple[float, float]
    y: tuple[float, float]
    outside: tuple[FrozenTrial, ...]
    note: str


def _budget_limit(data: ReportData) -> float:
    sign = 1 if higher_is_better(data.info) else -1
    return float(data.baseline["metric"]) - sign * allowed_worsening(data.info)


def _baseline(data: ReportData) -> list[float]:
    b = data.baseline
    return [float(b["metric"]), float(b["latency_ms"]), float(b["size_kb"])]


def _padded(values: Sequence[float], log: bool) -> tuple[float, float]:
    """The range of ``values`` with a margin (in log space on a log axis)."""
    if log:
        values = [v for v in values if v > 0] or [1.0]
        lo, hi = math.log10(min(values)), math.log10(max(values))
        pad = max((hi - lo) * MARGIN, 0.05)
        return 10 ** (lo - pad), 10 ** (hi + pad)
    lo, hi = min(values), max(values)
    pad = (hi - lo) * MARGIN or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def _range_words(values: list[float], unit: str) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3g}{unit}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}-{hi:.3g}{unit}"


def projection_view(data: ReportData, xi: int, yi: int) -> View:
    """The limits of one projection and the trials left out of it.

    The view spans the feasible trials, the baseline and, on the metric's axis, the budget's
    limit (all trials when none is feasible), plus a margin.

    Args:
        data: The report's data.
        xi: The x objective's index (0 metric, 1 latency, 2 size).
        yi: The y objective's index.
    """
    base = _baseline(data)
    shown = [t for t in data.trials if t.number in data.feasible] or data.trials
    spans = []
    for i in (xi, yi):
        values = [v for t in shown if math.isfinite(v := float(t.values[i]))] + [base[i]]
        if i == 0:
            values.append(_budget_limit(data))
        spans.append(_padded(values, i in LOG))
    (x0, x1), (y0, y1) = spans
    outside = tuple(
        t for t in data.trials if not (x0 <= t.values[xi] <= x1 and y0 <= t.values[yi] <= y1)
    )
    if not outside:
        return View((x0, x1), (y0, y1), (), "")
    words = []
    for i, (lo, hi) in zip((xi, yi), spans, strict=True):
        off = [float(v) for t in outside if math.isfinite(v := t.values[i]) and not lo <= v <= hi]
        if off:
            name = data.names[i]
            words.append(f"{WORDS.get(name, name)} {_range_words(off, UNITS.get(name, ''))}")
    n = len(outside)
    kind = "infeasible " if all(t.number not in data.feasible for t in outside) else ""
    where = ", ".join(words) or "values not finite"
    note = f"{n} {kind}trial{'s' if n != 1 else ''} outside the view: {where}"
    return View((x0, x1), (y0, y1), outside, note)


def _category(data: ReportData, trial: FrozenTrial, front: set[int]) -> str:
    if trial.number not in data.feasible:
        return "infeasible"
    return "front" if trial.number in front else "feasible"


def _style(data: ReportData, trial: FrozenTrial) -> tuple[bool, bool]:
    """(warm start, latency unreliable) from the trial's flags."""
    marks = flags(data.info, trial)
    return "warm start" in marks, "latency unstable" in marks or "CPU contended" in marks


def log_ticks(lo: float, hi: float, max_ticks: int = MAX_TICKS) -> list[float]:
    """A few round ticks between ``lo`` and ``hi`` (> 0) for a log axis: 1-2-5, 1-3 or 1 per
    decade, whichever gives at most ``max_ticks``; evenly spaced ones on a short range."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks: list[float] = []
    for subs in ((1, 2, 5), (1, 3), (1,)):
        ticks = [
            m * 10.0**e for e in range(first, last + 1) for m in subs if lo <= m * 10.0**e <= hi
        ]
        if len(ticks) <= max_ticks:
            break
    if len(ticks) > max_ticks:
        ticks = ticks[:: math.ceil(len(ticks) / max_ticks)]
    if len(ticks) < 2:
        from matplotlib.ticker import MaxNLocator

        ticks = [
            float(v) for v in MaxNLocator(nbins=3).tick_values(lo, hi) if lo <= v <= hi and v > 0
        ]
    return ticks


def _set_log_axis(axis: Axis, lo: float, hi: float, unit: str) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}{unit}"))
    axis.set_minor_formatter(NullFormatter())


def _scatter(ax: Axes, trials: list[FrozenTrial], xi: int, yi: int, gid: str, **kw: Any) -> None:
    if trials:
        ax.scatter([t.values[xi] for t in trials], [t.values[yi] for t in trials], gid=gid, **kw)


def draw_projection(ax: Axes, data: ReportData, xi: int, yi: int) -> View:
    """Draw one projection on ``ax`` (trial numbers are placed later, by :func:`freeze`).

    Each group of points is one collection whose ``gid`` says what it holds:
    ``<infeasible|feasible|front>[:warm][:hollow]``, or ``baseline``.
    """
    view = projection_view(data, xi, yi)
    left_out = {t.number for t in view.outside}
    front = {t.number for t in data.front}
    groups: dict[tuple[str, bool, bool], list[FrozenTrial]] = {}
    for t in data.trials:
        if t.number not in left_out:
            groups.setdefault((_category(data, t, front), *_style(data, t)), []).append(t)
    for (category, warm, hollow), trials in sorted(groups.items()):
        color = COLORS[category]
        gid = category + (":warm" if warm else "") + (":hollow" if hollow else "")
        size = 46 if category == "front" else 24
        if category == "infeasible":
            _scatter(ax, trials, xi, yi, gid, c=color, marker="x", s=size * 0.8, zorder=2)
            continue
        _scatter(
            ax, trials, xi, yi, gid,
            marker="D" if warm else "o", s=size * (0.8 if warm else 1),
            facecolors="none" if hollow else color, edgecolors=color,
            linewidths=1.4 if hollow else 0.5, zorder=3 if category == "front" else 2,
        )  # fmt: skip
    base = _baseline(data)
    ax.scatter([base[xi]], [base[yi]], marker="*", s=170, facecolors="none", edgecolors="black",
               zorder=4, gid="baseline")  # fmt: skip
    names, better = data.names, higher_is_better(data.info)
    for i, axis, set_lim in ((xi, ax.xaxis, ax.set_xlim), (yi, ax.yaxis, ax.set_ylim)):
        lo, hi = view.x if axis is ax.xaxis else view.y
        if i in LOG:
            (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
            _set_log_axis(axis, lo, hi, UNITS.get(names[i], ""))
        set_lim((lo, hi) if i != 0 or better else (hi, lo))
        label = LABELS.get(names[i], names[i])
        if i == 0:
            label += " (higher is better)" if better else " (lower is better, axis inverted)"
        axis.set_label_text(label)
    if yi == 0:
        ax.axhline(_budget_limit(data), color="#888888", ls="--", lw=1, gid="budget")
    if view.note:
        ax.set_title(view.note, fontsize=8, color="#555555")
    ax.grid(alpha=0.3)
    return view


def draw_hypervolume(ax: Axes, data: ReportData) -> None:
    """The feasible hypervolume after each trial, as a fraction of the reference box."""
    from matplotlib.ticker import MaxNLocator

    if data.hypervolume:
        numbers = [n for n, _, _ in data.hypervolume]
        ax.step(numbers, [f for _, _, f in data.hypervolume], where="post", color="#4c78a8")
        ax.plot(numbers, [f for _, _, f in data.hypervolume], "o", ms=3, color="#4c78a8")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume (fraction of reference box)")
    ax.set_title("feasible hypervolume over trials", fontsize=10)
    ax.grid(alpha=0.3)


def _legend_handles(data: ReportData) -> list[Any]:
    from matplotlib.lines import Line2D

    better = higher_is_better(data.info)
    name = data.names[0]
    limit = f"{name} {'>=' if better else '<='} {_budget_limit(data):.4g}"

    def mark(label: str, marker: str, color: str, face: str | None = None, **kw: Any) -> Any:
        return Line2D([], [], ls="", marker=marker, color=color, label=label,
                      markerfacecolor=face or color, **kw)  # fmt: skip

    front = {t.number for t in data.front}
    present = {_category(data, t, front) for t in data.trials}
    handles = [
        mark(label, marker, COLORS[category], ms=8 if category == "front" else 6)
        for category, label, marker in (
            ("infeasible", "over the budget", "x"),
            ("feasible", "feasible", "o"),
            ("front", "feasible front (trial numbers)", "o"),
        )
        if category in present
    ]
    handles += [
        mark("baseline", "*", "black", "none", ms=12),
        Line2D([], [], color="#888888", ls="--", lw=1, label=f"budget limit ({limit})"),
    ]
    styles = [_style(data, t) for t in data.trials if t.number in data.feasible]
    if any(warm for warm, _ in styles):
        handles.append(mark("warm start", "D", "#333333", ms=6))
    if any(hollow for _, hollow in styles):
        handles.append(mark("hollow: latency unstable or CPU contended", "o", "#333333", "none"))
    return handles


def _overlaps(a: Any, b: Any, pad: float = 0.0) -> bool:
    return bool(a.x0 < b.x1 + pad and b.x0 < a.x1 + pad and a.y0 < b.y1 + pad and b.y0 < a.y1 + pad)


# Label offsets (points) tried in order: close first, then further out with a leader line.
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
_OFFSETS = [(dx * r, dy * r) for r in (4, 9, 15, 22, 30) for dx, dy in _DIRECTIONS]


def _align(ann: Any, dx: float, dy: float) -> None:
    ann.set_position((dx, dy))
    ann.set_horizontalalignment("left" if dx > 0 else "right" if dx < 0 else "center")
    ann.set_verticalalignment("bottom" if dy > 0 else "top" if dy < 0 else "center")


def label_extent(ann: Any, renderer: RendererBase) -> Any:
    """The display box of a label's text (without its leader line)."""
    from matplotlib.text import Text

    ann.update_positions(renderer)  # the offset is relative to the point: place it first
    return Text.get_window_extent(ann, renderer)


def place_front_labels(
    ax: Axes, data: ReportData, xi: int, yi: int, renderer: RendererBase
) -> list[Any]:
    """Number the front's points in ``ax``: each label goes to the first nearby place where it
    overlaps no other label and no point and stays inside the axes (the least crowded place when
    none is free); a label set further off gets a leader line.

    Returns:
        The labels (annotations, ``gid`` ``label:<trial number>``).
    """
    from matplotlib.transforms import Bbox

    box = ax.get_window_extent(renderer)
    r = 3 * ax.figure.dpi / 72
    dots = [
        Bbox.from_extents(x - r, y - r, x + r, y + r)
        for c in ax.collections
        for x, y in c.get_offset_transform().transform(c.get_offsets())
    ]
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    placed: list[Any] = []
    labels = []
    for t in data.front:
        x, y = t.values[xi], t.values[yi]
        if not (x0 <= x <= x1 and y0 <= y <= y1):
            continue
        probe = ax.annotate(str(t.number), (x, y), xytext=(0, 0), textcoords="offset points",
                            fontsize=LABEL_POINTS)  # fmt: skip
        best, best_score = (4.0, 4.0), math.inf
        for dx, dy in _OFFSETS:
            _align(probe, dx, dy)
            ext = label_extent(probe, renderer)
            inside = box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 and ext.y1 <= box.y1
            score = 1000.0 * sum(_overlaps(ext, p, 1) for p in placed) + 100.0 * (not inside)
            score += 10.0 * sum(_overlaps(ext, d) for d in dots) + math.hypot(dx, dy) / 30
            if score < best_score:
                best, best_score = (dx, dy), score
            if score < 1:
                break
        probe.remove()
        far = math.hypot(*best) > 6  # a label set off its point gets a leader line
        arrow = {"arrowstyle": "-", "lw": 0.5, "color": "#999999", "shrinkA": 0, "shrinkB": 3}
        ann = ax.annotate(str(t.number), (x, y), xytext=best, textcoords="offset points",
                          fontsize=LABEL_POINTS, zorder=5, gid=f"label:{t.number}",
                          arrowprops=arrow if far else None)  # fmt: skip
        _align(ann, *best)
        placed.append(label_extent(ann, renderer))
        labels.append(ann)
    return labels


def thin_ticks(axis: Axis, renderer: RendererBase, pad: float = 3.0) -> None:
    """Drop every other major tick until the tick labels no longer overlap."""
    from matplotlib.ticker import FixedLocator

    for _ in range(6):
        ticks = [t for t in axis.get_major_ticks() if t.label1.get_visible()]
        lo, hi = sorted(axis.get_view_interval())
        kept = [(t.get_loc(), t.label1) for t in ticks if lo <= t.get_loc() <= hi]
        boxes = [lab.get_window_extent(renderer) for _, lab in kept if lab.get_text()]
        if len(boxes) < 3 or not any(
            _overlaps(a, b, pad) for a, b in zip(boxes, boxes[1:], strict=False)
        ):
            return
        axis.set_major_locator(FixedLocator([loc for loc, _ in kept][::2]))


def freeze(fig: Figure, projections: list[tuple[Axes, int, int]], data: ReportData) -> None:
    """Compute the layout once, keep it, then thin crowded ticks and number the front."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    if not isinstance(fig.canvas, FigureCanvasAgg):
        raise TypeError("freeze needs a figure on an Agg canvas (FigureCanvasAgg(fig))")
    renderer = fig.canvas.get_renderer()
    for ax, xi, yi in projections:
        thin_ticks(ax.xaxis, renderer)
        thin_ticks(ax.yaxis, renderer)
        place_front_labels(ax, data, xi, yi, renderer)


def report_figure(data: ReportData, *, with_hypervolume: bool) -> Figure:
    """The three projections, with the hypervolume history as a fourth panel (the PNG report)
    or without it (the HTML report draws it apart)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if with_hypervolume:
        fig = Figure(figsize=(11, 9.6), dpi=100, layout="constrained")
        axes = list(fig.subplots(2, 2).flat)
    else:
        fig = Figure(figsize=(15, 5.4), dpi=100, layout="constrained")
        axes = list(fig.subplots(1, 3))
    FigureCanvasAgg(fig)
    for ax, (xi, yi) in zip(axes, PROJECTIONS, strict=False):
        draw_projection(ax, data, xi, yi)
    if with_hypervolume:
        draw_hypervolume(axes[3], data)
    handles = _legend_handles(data)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
               fontsize=9, frameon=False)  # fmt: skip
    fig.suptitle(
        f"{data.study_name}: {len(data.trials)} trials, {len(data.feasible)} feasible, "
        f"front {len(data.front)} ({budget_words(data.info)})"
    )
    freeze(fig, [(ax, xi, yi) for ax, (xi, yi) in zip(axes, PROJECTIONS, strict=False)], data)
    return fig


MAX_PROFILE_ROWS = 60  # rows per heatmap; the most sensitive are kept, in the model's order
MAX_ANNOTATED = 400  # cells; above it the numbers are left to the table


def profile_norm(values: Sequence[float]) -> Any:
    """Colour scale of loss increases: logarithmic over four decades below the largest (the
    increases of 8 and 2 bits differ by orders of magnitude); zero, negative and smaller
    increases take the lowest colour. Linear from 0 when nothing increased."""
    from matplotlib.colors import LogNorm, Normalize

    positive = [v for v in values if math.isfinite(v) and v > 0]
    if not positive:
        return Normalize(vmin=0.0, vmax=1.0)
    top = max(positive)
    low = max(min(positive), top * 1e-4)
    return LogNorm(vmin=low if low < top else top / 10, vmax=top, clip=True)


def kept_rows(section: ProfileSection, limit: int = MAX_PROFILE_ROWS) -> list[ProfileRow]:
    """The rows a heatmap draws: all, or the ``limit`` most sensitive, in the model's order."""
    if len(section.rows) <= limit:
        return list(section.rows)
    keep = {id(r) for r in section.sorted_rows("sensitivity")[:limit]}
    return [r for r in section.rows if id(r) in keep]


def _grid(rows: Sequence[ProfileRow]) -> Any:
    import numpy as np

    values = [[math.nan if v is None else v for v in r.increases] for r in rows]
    return np.ma.masked_invalid(np.array(values, dtype=float))


def draw_profile_section(ax: Axes, section: ProfileSection, norm: Any) -> Any:
    """One heatmap: the section's weights or layers (rows, the model's order) by settings,
    coloured by ``norm``; returns the image."""
    import numpy as np
    from matplotlib import colormaps

    rows = kept_rows(section)
    grid = _grid(rows)
    cmap = colormaps["YlOrRd"].with_extremes(bad="#dddddd")
    image = ax.imshow(grid, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    image.set_gid(f"sensitivity-{section.key}")
    ax.set_xticks(range(len(section.headers)), section.headers, rotation=45, ha="right",
                  fontsize=8)  # fmt: skip
    ax.set_yticks(range(len(rows)), [r.name for r in rows], fontsize=7 if len(rows) > 30 else 8)
    left_out = len(section.rows) - len(rows)
    more = f"\n({len(rows)} most sensitive of {len(section.rows)})" if left_out else ""
    ax.set_title(f"{section.method}{more}", fontsize=10)
    if grid.size <= MAX_ANNOTATED:
        for (i, j), value in np.ndenumerate(grid.filled(math.nan)):
            if math.isfinite(value):
                dark = norm(max(value, norm.vmin)) > 0.6
                ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=6,
                        color="white" if dark else "black")  # fmt: skip
    return image


def sensitivity_figure(sections: Sequence[ProfileSection], title: str) -> Figure:
    """One heatmap per section of the sensitivity profile, side by side, on one colour scale
    (the increases are all of the same loss, so sections compare)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows = max(len(kept_rows(s)) for s in sections)
    widths = [max(len(s.settings), 2) + 3 for s in sections]
    fig = Figure(
        figsize=(min(4.2 * len(sections) + 1, 15), min(2.0 + 0.24 * n_rows, 16)),
        dpi=100,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(sections), width_ratios=widths, squeeze=False)[0]
    norm = profile_norm([float(v) for s in sections for v in _grid(kept_rows(s)).compressed()])
    for ax, section in zip(axes, sections, strict=True):
        image = draw_profile_section(ax, section, norm)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="loss increase (log scale)")
    fig.suptitle(title, fontsize=11)
    return fig
