"""The command line: every verb's help and example, runs, resumes, one-line errors."""

import math

import optuna
import pytest
from typer.testing import CliRunner

from autocompress import __version__
from autocompress.cli import app
from autocompress.storage import open_storage
from tests.conftest import BASELINE_CACHE, TINY_SPACE

runner = CliRunner()
VERBS = [
    ["study", "run"],
    ["study", "list"],
    ["study", "status"],
    ["worker"],
    ["pareto"],
    ["dashboard"],
    ["report"],
    ["sensitivity"],
    ["demo"],
    ["export"],
    ["apply"],
]


@pytest.mark.parametrize("verb", VERBS, ids=[" ".join(v) for v in VERBS])
def test_every_verb_has_help_with_a_whole_example(verb):
    result = runner.invoke(app, [*verb, "--help"], terminal_width=80)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == "Example:")
    example = next(line.strip() for line in lines[at + 1 :] if line.strip())
    assert example.startswith(f"autocompress {verb[0]}")
    assert not example.endswith(("-", "\\")), "the example is cut, not wrapped"


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"autocompress {__version__}"


def _seed_cache(root):
    (root / "studies" / "baselines").mkdir(parents=True, exist_ok=True)
    for f in BASELINE_CACHE.glob("digits-*"):
        (root / "studies" / "baselines" / f.name).write_bytes(f.read_bytes())


def test_run_status_list_pareto_and_resume(digits, tmp_path):
    _seed_cache(tmp_path)  # the tests' cwd is tmp_path (conftest)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    run = [
        "study",
        "run",
        "--study",
        "c",
        "--storage",
        url,
        "--space",
        str(TINY_SPACE),
        "--batch-size",
        "8",
        "--max-accuracy-drop",
        "0.05",
        "--no-warm-start",
    ]
    result = runner.invoke(app, [*run, "--n-trials", "2"])
    assert result.exit_code == 0, result.output
    assert "feasible Pareto front" in result.output and "baseline" in result.output
    assert "packed KB" in result.output and "deployed KB" in result.output
    # the baseline's accuracy with its bootstrap standard error, the binomial one; a 5-point
    # budget is above twice it (digits: 359 and 360 images, at 97 to 100%)
    info = optuna.load_study(study_name="c", storage=url).user_attrs["autocompress"]
    base = info["baseline"]
    for key in ("metric", "test_metric"):
        p, n = base[key], base[f"{key}_items"]
        assert n in (359, 360) and base[f"{key}_se"] == pytest.approx(
            math.sqrt(p * (1 - p) / n), rel=0.15
        )
    assert f"{base['metric']:.4f} ± {base['metric_se']:.4f} (SE)" in result.output
    assert "below twice" not in result.output  # no noise warning

    result = runner.invoke(app, ["study", "status", "c", "--storage", url])
    assert result.exit_code == 0, result.output
    assert "COMPLETE 2" in result.output
    assert (
        f"baseline: accuracy {base['metric']:.4f} ± {base['metric_se']:.4f} "
        f"(SE, {base['metric_items']} items) on validation, {base['test_metric']:.4f} ± "
        in result.output
    )

    # a noisier baseline (SE 0.04 on the same images): the budget is below 2 SE, which
    # `study run` says on resume (and status too), with the validation size it would need
    study = optuna.load_study(study_name="c", storage=url)
    study.set_user_attr("autocompress", {**info, "baseline": {**base, "metric_se": 0.04}})
    needed = math.ceil(base["metric_items"] * (2 * 0.04 / 0.05) ** 2)
    for args in (
        ["study", "run", "--study", "c", "--storage", url, "--n-trials", "1"],
        ["study", "status", "c", "--storage", url],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "warning: the budget (0.05) is below twice the metric's standard error" in (
            result.output
        )
        assert f"about {needed:,} validation items (now {base['metric_items']})" in result.output
    study.set_user_attr("autocompress", info)

    result = runner.invoke(app, ["study", "list", "--storage", url])
    assert "c" in result.output

    # --n-trials adds that many; --total tops up to that many; the same meaning in every verb
    result = runner.invoke(
        app, ["study", "run", "--study", "c", "--storage", url, "--n-trials", "1"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["study", "run", "--study", "c", "--storage", url, "--total", "5"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["study", "status", "c", "--storage", url])
    assert "COMPLETE 5" in result.output

    # a resumed study refuses options that differ from its own, listing each
    result = runner.invoke(
        app,
        [
            "study",
            "run",
            "--study",
            "c",
            "--storage",
            url,
            "--n-trials",
            "1",
            "--target",
            "cpu-onnxruntime",
            "--batch-size",
            "16",
        ],
    )
    assert result.exit_code == 2
    assert (
        "--target (study: cpu-torch)" in result.output
        and "--batch-size (study: 8)" in result.output
    )

    result = runner.invoke(app, ["pareto", "c", "--storage", url], terminal_width=250)
    assert result.exit_code == 0 and "uncompressed fp32" in result.output
    assert f"{base['metric']:.4f} ± {base['metric_se']:.4f}" in result.output
    assert "baseline accuracy ± SE: its standard error, a bootstrap" in result.output


def test_empty_storage_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    result = runner.invoke(app, ["study", "list", "--storage", url])
    assert result.exit_code == 2 and "no study database at" in result.output  # nothing created
    open_storage(url)
    result = runner.invoke(app, ["study", "list", "--storage", url])
    assert result.exit_code == 0 and "no studies in this storage yet" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["pareto", "nope"], "no study named 'nope'"),
        (["study", "status", "nope"], "no study named 'nope'"),
        (
            ["study", "run", "--study", "x", "--n-trials", "1", "--workload", "cifar"],
            "unknown workload 'cifar'",
        ),
        (["study", "run", "--study", "x", "--n-trials", "1", "--sampler", "cmaes"], "--sampler"),
        (["study", "run", "--study", "x"], "give --n-trials"),
        (["study", "run", "--study", "x", "--n-trials", "-1"], "--n-trials -1"),
        (["study", "run", "--study", "x", "--timeout", "nan"], "--timeout nan"),
        (["study", "run", "--study", "../../x", "--n-trials", "1"], "is not allowed"),
        (
            ["study", "run", "--study", "x", "--n-trials", "1", "--target", "cuda-torch"],
            "no CUDA GPU",
        ),
    ],
    ids=[
        "pareto",
        "status",
        "workload",
        "sampler",
        "no-budget",
        "negative-trials",
        "nan-timeout",
        "path-name",
        "cuda",
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    open_storage(url)  # an empty database: pareto and status never create one
    result = runner.invoke(app, [*args, "--storage", url])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1


def test_bad_space_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("structured:\n  amount: {low: 0.5, high: 2}\n")
    result = runner.invoke(
        app,
        [
            "study",
            "run",
            "--study",
            "x",
            "--n-trials",
            "1",
            "--space",
            str(bad),
            "--storage",
            f"sqlite:///{tmp_path / 'e.db'}",
        ],
    )
    assert result.exit_code == 2
    assert "bad.yaml: structured.amount.high: 2.0 is outside the possible range" in result.output


def test_unreachable_storage(tmp_path):
    result = runner.invoke(app, ["study", "list", "--storage", "postgresql://u@127.0.0.1:1/db"])
    assert result.exit_code == 2
    assert "cannot reach storage" in result.output


@pytest.mark.slow
def test_demo_tops_up_to_its_total(digits, tmp_path):
    _seed_cache(tmp_path)
    url = f"sqlite:///{tmp_path / 'd.db'}"
    for _ in range(2):
        result = runner.invoke(app, ["demo", "--total", "2", "--storage", url])
        assert result.exit_code == 0, result.output
    assert "already has 2 completed trials" in result.output
    result = runner.invoke(app, ["study", "status", "demo", "--storage", url])
    assert "COMPLETE 2" in result.output


def test_the_study_bar_counts_completed_trials_and_names_the_others():
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from autocompress.progress import RichReporter

    reporter = RichReporter(2, Console(file=io.StringIO(), width=120))

    def trial(number, state, **attrs):
        values = (0.9, 1.0, 10.0) if state == "COMPLETE" else None
        return SimpleNamespace(number=number, state=SimpleNamespace(name=state), values=values,
                               user_attrs={"stopped_reason": "stopped early", **attrs},
                               system_attrs={}, constraints=None)  # fmt: skip

    with reporter:
        for t in (trial(0, "PRUNED"), trial(1, "COMPLETE"), trial(2, "FAIL"), trial(3, "COMPLETE")):
            reporter.trial_finished(t)
    study = reporter.progress.tasks[reporter.study_task]
    assert (study.completed, study.total) == (2, 2)  # 2/2, not 4/2
    assert study.description == "study (1 failed, 1 stopped)"
    # --total 4 on a study that has 3: the bar starts at 3 of 4
    resumed = RichReporter(4, Console(file=io.StringIO()), completed=3)
    assert resumed.progress.tasks[resumed.study_task].completed == 3


@pytest.mark.parametrize("columns", [80, 160])
def test_the_front_table_fits_the_terminal_and_has_a_legend(tmp_path, columns):
    """At 80 columns the metric used to print as ``1.00…``: the figures are never cut, the
    configurations follow on their own lines, and a legend explains the words."""
    import os
    import subprocess
    import sys

    from tests.test_dashboard import make_study

    make_study(tmp_path)
    env = dict(os.environ, COLUMNS=str(columns))
    out = subprocess.run(
        [sys.executable, "-m", "autocompress.cli", "pareto", "dash",
         "--storage", f"sqlite:///{tmp_path / 's.db'}"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= columns
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalnum()}
    assert rows["baseline"][1:3] == ["0.9800", "0.9700"]
    assert rows["4"][1] == "0.9720" and rows["4"][-1] == "10.5x"  # 420 KB / 40 KB
    assert "trial 4: structured" in out
    assert "rr = reduce_range" in out.replace("\n", " ")
    assert "smaller: the baseline's deployed file size / the trial's" in out.replace("\n", " ")
