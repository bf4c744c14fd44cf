import shutil
import uuid

import pytest
from typer.testing import CliRunner

from autocompress.cli import app
from tests.conftest import REPO, TINY_SPACE

runner = CliRunner()


@pytest.fixture
def study_name():
    name = f"cli-test-{uuid.uuid4().hex[:8]}"
    yield name
    shutil.rmtree(REPO / "studies" / name, ignore_errors=True)


def test_every_verb_has_help_with_an_example():
    for verb in (["study", "run"], ["study", "list"], ["study", "status"], ["pareto"], ["demo"]):
        result = runner.invoke(app, [*verb, "--help"])
        assert result.exit_code == 0
        assert "Example: autocompress" in result.output


def test_run_status_list_pareto(digits, tmp_path, study_name, monkeypatch):
    monkeypatch.chdir(REPO)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = runner.invoke(
        app,
        [
            "study",
            "run",
            "--study",
            study_name,
            "--storage",
            url,
            "--space",
            str(TINY_SPACE),
            "--n-trials",
            "2",
            "--batch-size",
            "8",
            "--max-accuracy-drop",
            "0.05",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "feasible Pareto front" in result.output
    assert "baseline" in result.output

    result = runner.invoke(app, ["study", "status", study_name, "--storage", url])
    assert result.exit_code == 0, result.output
    assert "COMPLETE 2" in result.output

    result = runner.invoke(app, ["study", "list", "--storage", url])
    assert study_name in result.output

    result = runner.invoke(app, ["pareto", study_name, "--storage", url])
    assert result.exit_code == 0
    assert "uncompressed fp32" in result.output


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
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    result = runner.invoke(app, [*args, "--storage", f"sqlite:///{tmp_path / 'e.db'}"])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_space_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruning:\n  amount: {low: 0.5, high: 2}\n")
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
    assert "bad.yaml: pruning.amount.high: 2.0 is outside the possible range" in result.output


def test_unreachable_storage(tmp_path):
    result = runner.invoke(app, ["study", "list", "--storage", "postgresql://u@127.0.0.1:1/db"])
    assert result.exit_code == 2
    assert "cannot reach storage" in result.output
