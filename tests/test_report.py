"""The static report: front, hypervolume series, importances, HTML and PNG."""

from __future__ import annotations

import re
import struct

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.record import normalize_info, study_info, target_words
from autocompress.report import (
    collect,
    hypervolume_history,
    param_importances,
    reference_point,
    write_report,
)
from autocompress.report_figures import (
    PROJECTIONS,
    label_extent,
    log_ticks,
    projection_view,
    report_figure,
)
from tests.test_dashboard import BASELINE, FRONT, HARDWARE, SETTINGS, TRIALS, make_study

FAST = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(n_trees=8, seed=0)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The directory of the module's synthetic study: its database and artifacts."""
    return tmp_path_factory.mktemp("studies")


@pytest.fixture(scope="module")
def study(studies):
    return make_study(studies)


def test_reference_point_is_fixed_by_the_baseline(study):
    ref = reference_point(study_info(study))
    np.testing.assert_allclose(ref, [-0.97, 2.2, 440.0])


def test_hypervolume_history_counts_only_feasible_trials(study):
    info = study_info(study)
    history = hypervolume_history(study.get_trials(), reference_point(info), info)
    assert [n for n, _, _ in history] == list(range(len(TRIALS)))
    hv = [h for _, h, _ in history]
    # trial 0 alone: one box between (-0.985, 1.0, 50) and the reference
    assert hv[0] == pytest.approx((0.985 - 0.97) * (2.2 - 1.0) * (440 - 50))
    assert hv[1] == hv[0]  # infeasible trial 1 adds nothing, though it dominates on speed/size
    assert hv[2] == hv[1]  # dominated by trial 0
    assert hv[3] > hv[2] and hv[4] > hv[3]
    assert hv[5] == hv[4]
    fractions = [f for _, _, f in history]
    assert 0 < fractions[-1] < 1
    assert fractions[0] == pytest.approx(hv[0] / ((1 - 0.97) * 2.2 * 440))


def test_html_report_has_the_front_and_the_hypervolume_series(study, tmp_path):
    out = tmp_path / "r.html"
    data = write_report(study, out, "html", importance_evaluator=FAST)
    text = out.read_text()
    front_table = re.search(r'<table id="front">(.*?)</table>', text, re.S).group(1)
    numbers = re.findall(r"<tr><td>(\w+)</td>", front_table)
    assert numbers == ["baseline", *map(str, FRONT)]
    hv_table = re.search(r'<table id="hypervolume">(.*?)</table>', text, re.S).group(1)
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td></tr>", hv_table)
    assert [int(n) for n, _, _ in rows] == list(range(len(TRIALS)))
    assert [float(h) for _, h, _ in rows] == pytest.approx(
        [h for _, h, _ in data.hypervolume], rel=1e-5
    )
    assert text.count("data:image/png;base64,") == 2
    assert "http://" not in text and "https://" not in text  # opens offline
    assert "{'" not in text  # no Python dict printed
    target = "cpu-onnxruntime, batch 32, 1 thread, on Test CPU 9000 (2 logical cores)"
    assert f"Measured on {target}." in text
    settings = re.search(r'<table id="settings">(.*?)</table>', text, re.S).group(1)
    rows = dict(re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td></tr>", settings))
    assert rows["workload"] == "digits" and rows["budget"] == "accuracy drop &lt;= 0.01"
    assert rows["search space"] == "search_spaces/tiny.yaml"
    assert (rows["sampler"], rows["seed"]) == ("tpe", "7")
    assert rows["size objective"].startswith("deployed file")
    assert '<table id="importances">' in text
    assert set(data.importances) == {"accuracy", "latency_ms", "size_kb"}


def test_html_report_shows_the_baselines_standard_error_and_a_budget_below_it(tmp_path):
    # perplexity 20.0 +- 0.8 on 500 sequences; a 5% budget (1.0) is below 2 SE (1.6)
    noisy = PERPLEXITY | {
        "baseline": PERPLEXITY["baseline"]
        | {"metric_se": 0.8, "metric_items": 500, "test_metric_se": 0.9, "test_metric_items": 480}
    }
    study = make_study(tmp_path, "noisy", PPL_TRIALS, record=noisy)
    out = tmp_path / "n.html"
    write_report(study, out, "html", importance_evaluator=FAST)
    text = out.read_text()
    front_table = re.search(r'<table id="front">(.*?)</table>', text, re.S).group(1)
    baseline_row = re.search(r"<tr><td>baseline</td><td>([^<]+)</td><td>([^<]+)</td>", front_table)
    assert baseline_row.groups() == ("20.0000 ± 0.8000", "20.3000 ± 0.9000")
    settings = re.search(r'<table id="settings">(.*?)</table>', text, re.S).group(1)
    rows = dict(re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td></tr>", settings))
    assert rows["baseline"] == (
        "perplexity 20.0000 ± 0.8000 (SE, 500 items) on validation, "
        "20.3000 ± 0.9000 (SE, 480 items) on test"
    )
    warning = re.search(r"<p class='warn'>(.*?)</p>", text).group(1)
    assert "below twice the metric&#x27;s standard error" in warning
    assert "about 1,280 validation items (now 500)" in warning  # 500 * (1.6 / 1.0) ** 2
    # a study recorded before standard errors: bare values, no warning
    (tmp_path / "old").mkdir()
    old = make_study(tmp_path / "old", "old", PPL_TRIALS, record=PERPLEXITY)
    write_report(old, tmp_path / "o.html", "html", importance_evaluator=FAST)
    text = (tmp_path / "o.html").read_text()
    assert "<tr><td>baseline</td><td>20.0000</td><td>20.3000</td>" in text
    assert "±" not in text and "class='warn'" not in text


def test_png_report_is_one_plausible_image(study, tmp_path):
    out = tmp_path / "r.png"
    write_report(study, out, "png")
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (1100, 960)
    assert out.stat().st_size > 20_000


def test_importances_of_a_tiny_study_say_why_not(tmp_path):
    study = make_study(tmp_path, trials=TRIALS[:1])
    importances, note = param_importances(study, FAST)
    assert importances == {} and "at least 2 completed trials" in note
    data = collect(study, importance_evaluator=FAST)
    assert [t.number for t in data.front] == [0]


def test_report_command(study, studies, tmp_path):
    url = f"sqlite:///{studies / 's.db'}"
    out = tmp_path / "out" / "r.png"
    result = CliRunner().invoke(
        app, ["report", "dash", "--storage", url, "--format", "png", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.exists() and "front 3" in result.output
    result = CliRunner().invoke(app, ["report", "dash", "--storage", url, "--format", "pdf"])
    assert result.exit_code == 2 and "--format 'pdf'" in result.output


def test_report_takes_its_format_from_the_name_or_refuses_a_mismatch(study, studies, tmp_path):
    url = f"sqlite:///{studies / 's.db'}"
    png = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["report", "dash", "--storage", url, "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a PNG, not HTML under that name
    html = tmp_path / "x.html"
    result = CliRunner().invoke(app, ["report", "dash", "--storage", url, "--out", str(html)])
    assert result.exit_code == 0 and html.read_text().lstrip().lower().startswith("<!doctype html")
    clash = tmp_path / "y.png"
    result = CliRunner().invoke(
        app, ["report", "dash", "--storage", url, "--out", str(clash), "--format", "html"]
    )
    assert result.exit_code == 2 and "ends in .png but --format is html" in result.output
    assert not clash.exists()


# --- the pictures -----------------------------------------------------------------------------

# Beyond TRIALS: two trials far off the feasible region, one in accuracy, one in latency and size.
FAR = [(0.20, 0.4, 15.0), (0.93, 12.0, 5000.0)]
FLAGS = {0: {"warm_start": True}, 4: {"latency_stable": False}, 3: {"latency_contended": True}}
PERPLEXITY = {
    "task": {"name": "language_modeling", "metric": "perplexity", "higher_is_better": False},
    "budget": {"absolute": None, "relative": 0.05},
    "baseline": BASELINE | {"metric": 20.0, "test_metric": 20.3},
}
# (perplexity, latency ms, size KB); feasible when perplexity <= 21
PPL_TRIALS = [(20.5, 1.0, 50.0), (35.0, 0.5, 20.0), (20.2, 1.5, 100.0), (19.8, 1.8, 300.0),
              (20.9, 0.8, 40.0), (80.0, 0.4, 10.0), (20.4, 1.6, 150.0)]  # fmt: skip


# A front of 12 trials a few pixels apart: labels at one fixed offset would overlap.
CROWDED = [(0.975 + 0.0008 * i, 1.0 + 0.012 * i, 60.0 - i) for i in range(12)]


def spread_trials(n: int = 48, seed: int = 3) -> tuple[list[tuple[float, float, float]], dict]:
    """Many trials with a spread: most near the baseline, every 8th far off in accuracy, one far
    off in latency; four warm starts, one unstable and one contended latency."""
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        accuracy = float(np.clip(0.99 - rng.exponential(0.012), 0.9, 0.995))
        latency = float(rng.uniform(0.3, 2.3))
        size = float(np.exp(rng.uniform(np.log(8), np.log(450))))
        if i % 8 == 5:
            accuracy = float(rng.uniform(0.2, 0.7))
        if i == 11:
            latency, accuracy = 9.0, 0.95
        trials.append((accuracy, latency, size))
    extra = {i: {"warm_start": True} for i in range(4)}
    extra |= {7: {"latency_stable": False}, 13: {"latency_contended": True}}
    return trials, extra


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Report data and the PNG report's figure of four in-memory studies."""
    root = tmp_path_factory.mktemp("pictures")
    many, extra = spread_trials()
    studies = {
        "flagged": make_study(root / "f", trials=TRIALS + FAR, extra=FLAGS, in_memory=True),
        "many": make_study(root / "m", trials=many, extra=extra, in_memory=True),
        "perplexity": make_study(root / "p", trials=PPL_TRIALS, record=PERPLEXITY, in_memory=True),
        "crowded": make_study(root / "c", trials=CROWDED, in_memory=True),
    }
    out = {}
    for name, study in studies.items():
        data = collect(study, importances=False)
        out[name] = (data, report_figure(data, with_hypervolume=True))
    return out


def _inside(lo_hi: tuple[float, float], value: float) -> bool:
    lo, hi = sorted(lo_hi)
    return bool(lo <= value <= hi)


def _base(data) -> list[float]:
    return [data.baseline["metric"], data.baseline["latency_ms"], data.baseline["size_kb"]]


def _drawn_points(ax) -> set[tuple[float, float]]:
    return {(float(p[0]), float(p[1])) for c in ax.collections for p in c.get_offsets()}


@pytest.mark.parametrize("name", ["flagged", "many", "perplexity"])
def test_projections_zoom_to_the_feasible_region(pictures, name):
    data, fig = pictures[name]
    for ax, (xi, yi) in zip(fig.axes, PROJECTIONS, strict=False):
        xlim, ylim = ax.get_xlim(), ax.get_ylim()
        for t in [t for t in data.trials if t.number in data.feasible]:
            assert _inside(xlim, t.values[xi]) and _inside(ylim, t.values[yi]), t.number
        assert _inside(xlim, _base(data)[xi]) and _inside(ylim, _base(data)[yi])
        view = projection_view(data, xi, yi)
        drawn = _drawn_points(ax)
        for t in data.trials:
            point = (float(t.values[xi]), float(t.values[yi]))
            seen = _inside(xlim, point[0]) and _inside(ylim, point[1])
            assert (t in view.outside) is not seen
            assert (point in drawn) is seen, t.number  # drawn exactly when in the view
        assert all(t.number not in data.feasible for t in view.outside)
        assert ax.get_title() == view.note


def test_far_infeasible_trials_are_left_out_and_counted(pictures):
    data, fig = pictures["flagged"]
    acc_latency = fig.axes[0]
    ylo, yhi = acc_latency.get_ylim()
    assert 0.965 < ylo < 0.97 and 0.99 < yhi < 0.995  # the budget's limit 0.97 .. best 0.99
    assert acc_latency.get_xlim()[1] < 2.2  # the baseline's 2 ms, not the far trial's 12 ms
    view = projection_view(data, 1, 0)
    assert {t.number for t in view.outside} == {1, 5, 6, 7}
    assert view.note == (
        "4 infeasible trials outside the view: latency 0.4-12 ms, accuracy 0.2-0.95"
    )
    size_latency = projection_view(data, 1, 2)
    assert size_latency.note.startswith("4 infeasible trials outside the view: latency 0.4-12 ms")
    many, _ = pictures["many"]
    outside = projection_view(many, 1, 0).outside
    # here every infeasible trial is under the budget's limit, so all are left out: the far
    # ones (every 8th, 0.2-0.7) and trial 11 (9 ms)
    infeasible = {t.number for t in many.trials if t.number not in many.feasible}
    assert {t.number for t in outside} == infeasible and {5, 11, 13 + 8} <= infeasible


def _no_overlap(boxes: list) -> bool:
    return not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


@pytest.mark.parametrize("name", ["flagged", "many", "perplexity"])
def test_tick_labels_are_few_plain_and_apart(pictures, name):
    _, fig = pictures[name]
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            labels = [
                t.label1 for t in axis.get_major_ticks()
                if lo <= t.get_loc() <= hi and t.label1.get_visible() and t.label1.get_text()
            ]  # fmt: skip
            assert _no_overlap([lab.get_window_extent(renderer) for lab in labels])
            if axis.get_scale() == "log":
                texts = [lab.get_text() for lab in labels]
                assert 2 <= len(texts) <= 5, texts
                assert all(re.fullmatch(r"\d+(\.\d+)? KB", t) for t in texts), texts
                minor = [t.label1.get_text() for t in axis.get_minor_ticks()]
                assert not any(minor)


@pytest.mark.parametrize(
    "lo, hi, expected",
    [(30, 480, [50, 100, 200]), (8, 500, [10, 30, 100, 300]), (1, 1e6, [1, 100, 1e4, 1e6]),
     (31, 39, [33, 36, 39])],
    ids=["1-2-5", "1-3", "decades", "short"],
)  # fmt: skip
def test_log_ticks_are_round_and_few(lo, hi, expected):
    assert log_ticks(lo, hi) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["flagged", "many", "perplexity", "crowded"])
def test_front_labels_do_not_overlap(pictures, name):
    data, fig = pictures[name]
    renderer = fig.canvas.get_renderer()
    for ax, (xi, yi) in zip(fig.axes, PROJECTIONS, strict=False):
        labels = [t for t in ax.texts if (t.get_gid() or "").startswith("label:")]
        shown = [t.number for t in data.front if t not in projection_view(data, xi, yi).outside]
        assert sorted(int(t.get_text()) for t in labels) == sorted(shown)
        boxes = [label_extent(t, renderer) for t in labels]
        assert _no_overlap(boxes)
        frame = ax.get_window_extent(renderer)
        assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 for b in boxes)
        assert all(frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)


def test_hypervolume_axis_has_whole_trial_numbers(pictures, tmp_path):
    tiny = collect(make_study(tmp_path, trials=TRIALS[:2], in_memory=True), importances=False)
    for _, fig in [*pictures.values(), (tiny, report_figure(tiny, with_hypervolume=True))]:
        ax = fig.axes[3]
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def _points(ax, gid: str) -> set[tuple[float, float]]:
    return {(float(p[0]), float(p[1])) for c in ax.collections if c.get_gid() == gid
            for p in c.get_offsets()}  # fmt: skip


def test_flags_change_the_markers(pictures):
    data, fig = pictures["flagged"]
    ax = fig.axes[0]  # accuracy over latency
    at = {t.number: (t.values[1], t.values[0]) for t in data.trials}
    assert _points(ax, "front:warm") == {at[0]}
    assert _points(ax, "front:hollow") == {at[3], at[4]}  # contended, unstable
    hollow = next(c for c in ax.collections if c.get_gid() == "front:hollow")
    assert all(alpha == 0 for *_, alpha in hollow.get_facecolors())
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "warm start" in legend and "hollow: latency unstable or CPU contended" in legend
    plain = [t.get_text() for t in pictures["perplexity"][1].legends[0].get_texts()]
    assert "warm start" not in plain


def test_lower_is_better_metric_is_drawn_better_up(pictures):
    for name, limit, inverted in [("flagged", 0.97, False), ("perplexity", 21.0, True)]:
        _, fig = pictures[name]
        for ax in fig.axes[:2]:  # the metric is the y axis of the first two projections
            assert bool(ax.yaxis_inverted()) is inverted
            assert ("lower is better" in ax.get_ylabel()) is inverted
            (budget,) = [line for line in ax.lines if line.get_gid() == "budget"]
            assert budget.get_ydata()[0] == pytest.approx(limit)
    legend = [t.get_text() for t in pictures["perplexity"][1].legends[0].get_texts()]
    assert "budget limit (perplexity <= 21)" in legend


@pytest.mark.parametrize(
    "target, hardware, words",
    [
        (SETTINGS["target"], HARDWARE,
         "cpu-onnxruntime, batch 32, 1 thread, on Test CPU 9000 (2 logical cores)"),
        ({"device": "cuda", "threads": 4, "batch_size": 1}, {"cpu": "x", "gpu": "H200"},
         "cuda-torch, batch 1, 4 threads, on H200"),
        (None, {}, "not recorded"),
    ],
    ids=["cpu", "cuda-old-record", "missing"],
)  # fmt: skip
def test_target_in_words(target, hardware, words):
    info = normalize_info({"settings": {"target": target}, "hardware": hardware,
                           "baseline": {"metric": 0.9}})  # fmt: skip
    assert target_words(info) == words
