"""The static report: front, hypervolume series, importances, HTML and PNG."""

from __future__ import annotations

import re
import struct

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.report import (
    collect,
    hypervolume_history,
    param_importances,
    reference_point,
    write_report,
)
from tests.test_dashboard import BASELINE, BUDGET, FRONT, TRIALS, make_study

FAST = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(n_trees=8, seed=0)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The directory of the module's synthetic study: its database and artifacts."""
    return tmp_path_factory.mktemp("studies")


@pytest.fixture(scope="module")
def study(studies):
    return make_study(studies)


def test_reference_point_is_fixed_by_the_baseline():
    ref = reference_point(BASELINE, BUDGET)
    np.testing.assert_allclose(ref, [-0.97, 2.2, 440.0])


def test_hypervolume_history_counts_only_feasible_trials(study):
    ref = reference_point(BASELINE, BUDGET)
    history = hypervolume_history(study.get_trials(), ref)
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
    assert '<table id="importances">' in text
    assert set(data.importances) == {"accuracy", "latency_ms", "size_kb"}


def test_png_report_is_one_plausible_image(study, tmp_path):
    out = tmp_path / "r.png"
    write_report(study, out, "png")
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (1100, 900)
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
