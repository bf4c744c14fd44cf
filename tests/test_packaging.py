"""The package as users install it: a wheel built from the checkout, installed in a fresh venv."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


def _tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files (links kept as links), so the build writes only in tmp."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src, out = REPO / name.decode(), dest / name.decode()
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(src.readlink())
        elif src.exists():
            shutil.copy2(src, out)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to list the tracked files")
    source = _tracked_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("autocompress-*.whl")
    return built


def test_the_wheel_holds_the_spaces_the_licence_the_script_and_the_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    shipped = {p.name for p in (REPO / "search_spaces").glob("*.yaml")}
    assert {f"autocompress/search_spaces/{n}" for n in shipped} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "autocompress = autocompress.cli:main" in entry
    extras = {
        line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Provides-Extra")
    }
    assert {"transformers", "openvino", "minilm", "dashboard", "tracking", "test"} <= extras
    assert not any(n.startswith("tests/") for n in names)


def test_the_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    # The dependencies come from this interpreter's environment (no download here).
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = (
        "import autocompress, autocompress.shipped as s\n"
        "from autocompress.search_space import load_search_space\n"
        "path = s.resolve_space(None)\n"
        "assert str(path).startswith(str(__import__('pathlib').Path(autocompress.__file__)"
        ".parent)), path\n"
        "assert load_search_space(path).text\n"
        "print(autocompress.__file__)\n"
    )
    done = subprocess.run(
        [str(py), "-c", check], cwd=elsewhere, capture_output=True, text=True, env={"PATH": ""}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(venv) in done.stdout  # the installed copy, not the checkout
    version = subprocess.run(
        [str(venv / "bin" / "autocompress"), "--version"], cwd=elsewhere, capture_output=True,
        text=True,
    )  # fmt: skip
    assert version.returncode == 0 and "autocompress" in version.stdout
