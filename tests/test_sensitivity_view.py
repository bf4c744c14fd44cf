"""The sensitivity profile shown: ``autocompress sensitivity`` tables, CSV and JSON hold the stored
values, most sensitive first; a study without a profile says so; the report draws it."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.report import write_report
from autocompress.report_figures import MAX_PROFILE_ROWS, kept_rows, sensitivity_figure
from autocompress.sensitivity_view import profile_sections
from tests.test_dashboard import make_study

runner = CliRunner()

# A profile whose order is known in advance: by largest increase c (5.0), a (3.0), b (0.2) for
# bits; b before a for pruning. The model's order is a, b, c.
PROFILE = {
    "format": 1,
    "request": {"bits": [8, 4, 2], "granularity": "per_channel", "rows": 256},
    "bits": {
        "a.weight": {"8": 0.001, "4": 0.5, "2": 3.0},
        "b.weight": {"8": 0.002, "4": 0.01, "2": 0.2},
        "c.weight": {"8": -0.0001, "4": 0.9, "2": 5.0},
    },
    "prune": {"a.weight": {"0.5": 0.3, "0.9": 0.4}, "b.weight": {"0.5": 0.7, "0.9": 2.25}},
    "channels": {"a": {"0.25": 0.05, "0.5": 1.5}},
    "params": {"a.weight": 1200, "b.weight": 48, "c.weight": 96, "a": 1200},
    "base_loss": 0.1234,
    "calibration": {"split": "train", "rows": 256},
    "seconds": 1.5,
}
BY_SENSITIVITY = {
    "bits": ["c.weight", "a.weight", "b.weight"],
    "prune": ["b.weight", "a.weight"],
    "channels": ["a"],
}
BY_MODEL = {"bits": ["a.weight", "b.weight", "c.weight"], "prune": ["a.weight", "b.weight"],
            "channels": ["a"]}  # fmt: skip
METHODS = {"bits": "weights", "prune": "unstructured", "channels": "structured"}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("profiled")
    make_study(root, "prof", record={"sensitivity": PROFILE})
    (root / "plain").mkdir()
    make_study(root / "plain", "plain")
    return f"sqlite:///{root / 's.db'}", f"sqlite:///{root / 'plain' / 's.db'}"


def _stored(url: str, name: str) -> dict:
    """The profile as the database holds it, read without autocompress."""
    import optuna

    return optuna.load_study(study_name=name, storage=url).user_attrs["autocompress"]["sensitivity"]


@pytest.mark.parametrize("sort", ["sensitivity", "model"])
def test_csv_holds_every_stored_value_in_order(profiled, sort):
    url, _ = profiled
    result = runner.invoke(app, ["sensitivity", "prof", "--storage", url, "--format", "csv",
                                 "--sort", sort])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    stored = _stored(url, "prof")
    order = BY_SENSITIVITY if sort == "sensitivity" else BY_MODEL
    expected = [
        (key, METHODS[key], name, str(stored["params"][name]), setting, value)
        for key in ("bits", "prune", "channels")
        for name in order[key]
        for setting, value in stored[key][name].items()
    ]
    got = [(r["section"], r["method"], r["name"], r["params"], r["setting"],
            float(r["loss_increase"])) for r in rows]  # fmt: skip
    assert got == expected


def _table_rows(text: str, title: str) -> list[list[str]]:
    """The body rows of the rich table whose title starts with ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(title))
    rows = []
    for line in lines[start:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


def test_tables_print_the_stored_values_most_sensitive_first_with_a_legend(profiled):
    url, _ = profiled
    result = runner.invoke(app, ["sensitivity", "prof", "--storage", url])
    assert result.exit_code == 0, result.output
    stored = _stored(url, "prof")
    for key, method in METHODS.items():
        rows = _table_rows(result.stdout, f"prof: {method}")
        assert [r[0] for r in rows] == BY_SENSITIVITY[key]
        for row in rows:
            values = list(stored[key][row[0]].values())
            assert row[1] == f"{stored['params'][row[0]]:,}"
            assert [float(c) for c in row[2:]] == pytest.approx(values, rel=1e-3)
    head = result.stdout.splitlines()
    assert any(re.search(r"8 bits\s*┃\s*4 bits\s*┃\s*2 bits", line) for line in head)
    assert any(re.search(r"50% pruned\s*┃\s*90% pruned", line) for line in head)
    legend = " ".join(result.stdout.split())
    assert "Increase of the classification loss over the uncompressed model's (0.1234)" in legend
    assert "on the first 256 examples of the train split" in legend


def test_json_is_the_stored_profile(profiled):
    url, _ = profiled
    result = runner.invoke(app, ["sensitivity", "prof", "--storage", url, "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == _stored(url, "prof") == PROFILE


def test_a_study_without_a_profile_says_which_spaces_make_one(profiled):
    _, plain = profiled
    result = runner.invoke(app, ["sensitivity", "plain", "--storage", plain])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("study 'plain' has no sensitivity profile")
    assert "per_layer: true" in lines[0] and "search_spaces/per_layer.yaml" in lines[0]
    result = runner.invoke(app, ["sensitivity", "plain", "--storage", plain, "--format", "csv"])
    assert result.exit_code == 0
    assert result.stdout == "section,method,name,params,setting,loss_increase\n"
    assert "has no sensitivity profile" in result.stderr
    result = runner.invoke(app, ["sensitivity", "plain", "--storage", plain, "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--format", "xml"], "--format 'xml': use text, csv or json"),
     (["--sort", "size"], "--sort 'size': use sensitivity or model")],
)  # fmt: skip
def test_bad_options_are_one_line(profiled, args, message):
    url, _ = profiled
    result = runner.invoke(app, ["sensitivity", "prof", "--storage", url, *args])
    assert result.exit_code == 2 and result.output.strip() == f"error: {message}"


def test_report_draws_the_profile_only_when_there_is_one(profiled, tmp_path):
    url, plain = profiled
    import optuna

    with_profile = optuna.load_study(study_name="prof", storage=url)
    write_report(with_profile, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Sensitivity per layer</h2>" in page and 'alt="sensitivity profile"' in page
    table = page[page.index('<table id="sensitivity-bits">') :].split("</table>")[0]
    assert re.findall(r"<tr><td>([^<]+)</td>", table) == BY_SENSITIVITY["bits"]
    without = optuna.load_study(study_name="plain", storage=plain)
    write_report(without, tmp_path / "p.html")
    page = (tmp_path / "p.html").read_text()
    assert "Sensitivity" not in page and "sensitivity profile" not in page


def test_heatmaps_hold_the_stored_values_in_the_models_order():
    sections = profile_sections(PROFILE)
    fig = sensitivity_figure(sections, "t")
    images = {im.get_gid(): im for ax in fig.axes for im in ax.images}
    assert set(images) == {"sensitivity-bits", "sensitivity-prune", "sensitivity-channels"}
    for key in METHODS:
        drawn = images[f"sensitivity-{key}"].get_array()
        expected = [list(PROFILE[key][name].values()) for name in BY_MODEL[key]]
        assert drawn.tolist() == expected
        ax = images[f"sensitivity-{key}"].axes
        assert [t.get_text() for t in ax.get_yticklabels()] == BY_MODEL[key]
    # one colour scale for every section: the largest increase anywhere is its top
    norms = {id(im.norm) for im in images.values()}
    assert len(norms) == 1 and images["sensitivity-bits"].norm.vmax == 5.0


def test_a_long_profile_keeps_the_most_sensitive_rows_in_the_models_order():
    n = MAX_PROFILE_ROWS + 5
    bits = {f"l{i}.weight": {"4": float(i % 7) + i / 1000} for i in range(n)}
    (section,) = profile_sections({"bits": bits})
    kept = [r.name for r in kept_rows(section)]
    least = sorted(bits, key=lambda k: bits[k]["4"])[:5]
    assert kept == [k for k in bits if k not in least]


# A transformer's profile (format 2): heads, MLP neurons and depth per block.
BLOCKS_PROFILE = {
    "format": 2,
    "request": {"heads": ["magnitude"], "mlp": ["activation"], "depth": True, "rows": 256},
    "heads.magnitude": {"l.0.attn": {"0.25": 0.01, "0.5": 0.2, "0.75": 0.9},
                        "l.1.attn": {"0.25": 0.3, "0.5": 0.6, "0.75": 1.2}},
    "mlp.activation": {"l.0.up": {"0.25": 0.02, "0.9": 0.5},
                       "l.1.up": {"0.25": 0.001, "0.9": 0.05}},
    "depth": {"l.0": {"skipped": 0.4}, "l.1": {"skipped": 2.5}},
    "params": {"l.0.attn": 4096, "l.1.attn": 4096, "l.0.up": 8192, "l.1.up": 8192,
               "l.0": 16640, "l.1": 16640},
    "base_loss": 0.5,
    "calibration": {"split": "train", "rows": 256},
}  # fmt: skip


def test_heads_mlp_and_depth_rows_are_shown(tmp_path):
    make_study(tmp_path, "blocks", record={"sensitivity": BLOCKS_PROFILE})
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = runner.invoke(app, ["sensitivity", "blocks", "--storage", url, "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = [(r["section"], r["method"], r["name"], r["params"], r["setting"], r["loss_increase"])
            for r in csv.DictReader(io.StringIO(result.stdout))]  # fmt: skip
    assert rows == [
        ("heads.magnitude", "heads", "l.1.attn", "4096", "0.25", "0.3"),
        ("heads.magnitude", "heads", "l.1.attn", "4096", "0.5", "0.6"),
        ("heads.magnitude", "heads", "l.1.attn", "4096", "0.75", "1.2"),
        ("heads.magnitude", "heads", "l.0.attn", "4096", "0.25", "0.01"),
        ("heads.magnitude", "heads", "l.0.attn", "4096", "0.5", "0.2"),
        ("heads.magnitude", "heads", "l.0.attn", "4096", "0.75", "0.9"),
        ("mlp.activation", "mlp", "l.0.up", "8192", "0.25", "0.02"),
        ("mlp.activation", "mlp", "l.0.up", "8192", "0.9", "0.5"),
        ("mlp.activation", "mlp", "l.1.up", "8192", "0.25", "0.001"),
        ("mlp.activation", "mlp", "l.1.up", "8192", "0.9", "0.05"),
        ("depth", "depth", "l.1", "16640", "skipped", "2.5"),
        ("depth", "depth", "l.0", "16640", "skipped", "0.4"),
    ]
    result = runner.invoke(app, ["sensitivity", "blocks", "--storage", url, "--sort", "model"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(re.search(r"attention\s*┃\s*params\s*┃\s*25% heads\s*┃\s*50% heads", x)
               for x in lines)  # fmt: skip
    assert any(re.search(r"MLP\s*┃\s*params\s*┃\s*25% neurons\s*┃\s*90% neurons", x)
               for x in lines)  # fmt: skip
    assert any(re.search(r"block\s*┃\s*params\s*┃\s*skipped", x) for x in lines)
    assert [r[0] for r in _table_rows(result.stdout, "blocks: depth")] == ["l.0", "l.1"]
    assert _table_rows(result.stdout, "blocks: heads")[1] == ["l.1.attn", "4,096", "0.3", "0.6",
                                                              "1.2"]  # fmt: skip
    result = runner.invoke(app, ["sensitivity", "blocks", "--storage", url, "--format", "json"])
    assert json.loads(result.stdout) == BLOCKS_PROFILE
