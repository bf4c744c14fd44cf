"""Mutation check: break each rule the suite must guard, on purpose, and see a test fail.

Each mutation is one named source edit (an exact text, found exactly once, and its
replacement) on a copy of the package in a temporary folder; the tests that guard that rule
run against the copy (``-x``, stopping at the first failure). A mutation is *caught* when they
fail. The score is caught / total; a surviving mutation is a rule the suite does not check.

    python -m benchmarks.mutation_check            # all mutations
    python -m benchmarks.mutation_check --only unstructured-keeps-smallest

Before the mutations, the same tests run on the unmutated copy: a mutation is only caught if
they passed there. Results go to ``benchmarks/results/mutation_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COPIED = ("autocompress", "tests", "search_spaces", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    """One deliberate break: in ``path``, ``old`` (found exactly once) becomes ``new``.

    Attributes:
        name: Short id.
        rule: The behaviour it breaks, in words.
        path: File, relative to the repository.
        old: Exact text replaced.
        new: Its replacement.
        tests: pytest arguments selecting the tests that guard the behaviour.
    """

    name: str
    rule: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


RECORD = ("tests/test_record.py",)
MUTATIONS = (
    Mutation(
        "budget-ignores-direction",
        "the budget direction for lower-is-better metrics (feasibility)",
        "autocompress/record.py",
        "return base - value if higher_is_better(info) else value - base",
        "return base - value",
        RECORD,
    ),
    Mutation(
        "budget-counts-improvement",
        "a metric better than the baseline is within the budget",
        "autocompress/record.py",
        "return worsening(info, value, baseline) - allowed_worsening(info)",
        "return abs(worsening(info, value, baseline)) - allowed_worsening(info)",
        RECORD,
    ),
    Mutation(
        "test-flag-ignores-direction",
        "the 'test over budget' flag for lower-is-better metrics",
        "autocompress/record.py",
        "if over_budget(info, float(test), baseline=float(base_test)):",
        "if over_budget(info, 2 * float(base_test) - float(test), baseline=float(base_test)):",
        RECORD + ("-k", "flag"),
    ),
    Mutation(
        "export-no-budget-warning",
        "export warns about a trial over the budget",
        "autocompress/recipe/_selection.py",
        'out = ["this trial is outside the study\'s budget"] if over_budget(info, value) else []',
        "out: list[str] = []",
        RECORD + ("-k", "export"),
    ),
    Mutation(
        "bits-read-the-profile-backwards",
        "per-layer bits are allocated from the sensitivity profile",
        "autocompress/methods/weights.py",
        "name: {b: v for b, v in curve.items() if int(b) in offered}",
        "name: {b: -v for b, v in curve.items() if int(b) in offered}",
        ("tests/methods/test_weights.py", "-k", "sensitivity"),
    ),
    Mutation(
        "ratios-ignore-the-profile",
        "per-layer pruning ratios are allocated from the sensitivity profile",
        "autocompress/methods/_layer_amounts.py",
        "found = allocate_ratios({n: curves[n] for n in chosen}, sizes, amount, step)",
        "found = allocate_ratios({n: curves[chosen[0]] for n in chosen}, sizes, amount, step)",
        (
            "tests/methods/test_unstructured.py",
            "tests/methods/test_structured.py",
            "-k",
            "sensitivity",
        ),
    ),  # fmt: skip
    Mutation(
        "distillation-has-no-effect",
        "distillation changes what fine-tuning learns",
        "autocompress/training.py",
        "loss = distill.alpha * soft + (1.0 - distill.alpha) * loss",
        "loss = loss + 0.0 * soft",
        ("tests/test_training.py", "-k", "distill"),
    ),
    Mutation(
        "unstructured-keeps-smallest",
        "unstructured pruning zeroes the smallest magnitudes",
        "autocompress/methods/unstructured.py",
        "keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False",
        "keep[torch.topk(flat, k, largest=True, sorted=False).indices] = False",
        ("tests/methods/test_unstructured.py",),
    ),
    Mutation(
        "unstructured-by-signed-value",
        "unstructured pruning ranks by magnitude, not by signed value",
        "autocompress/methods/unstructured.py",
        "flat = weight.detach().abs().reshape(-1)",
        "flat = weight.detach().reshape(-1)",
        ("tests/methods/test_unstructured.py",),
    ),
    Mutation(
        "structured-removes-largest",
        "structured pruning removes the lowest-norm channels",
        "autocompress/methods/structured.py",
        "importance=tp.importance.MagnitudeImportance(p=2),",
        "importance=lambda g, imp=tp.importance.MagnitudeImportance(p=2): -imp(g),",
        ("tests/methods/test_structured.py", "-k", "lowest_norm"),
    ),
    Mutation(
        "structured-random-channels",
        "structured pruning chooses channels by norm, not at random",
        "autocompress/methods/structured.py",
        "importance=tp.importance.MagnitudeImportance(p=2),",
        "importance=tp.importance.RandomImportance(),",
        ("tests/methods/test_structured.py", "-k", "lowest_norm"),
    ),
)


def _copy(into: Path) -> None:
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, into / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, into / name)


def _run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, float]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, timeout=timeout)
        passed = done.returncode == 0
    except subprocess.TimeoutExpired:
        passed = False  # a mutation that hangs the tests is caught by the timeout
    return passed, round(time.perf_counter() - started, 1)


def check(mutations: tuple[Mutation, ...], timeout: float = 600.0) -> list[dict[str, object]]:
    """Apply each mutation to a fresh copy of the package and run its tests.

    Raises:
        ValueError: A mutation's text is not found exactly once (the code moved on).
        RuntimeError: The tests fail on the unmutated copy.
    """
    out = []
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        clean = Path(tmp) / "clean"
        clean.mkdir()
        _copy(clean)
        for m in mutations:
            count = (clean / m.path).read_text().count(m.old)
            if count != 1:
                raise ValueError(f"mutation {m.name}: its text is in {m.path} {count} times, not 1")
        for tests in dict.fromkeys(m.tests for m in mutations):
            passed, _ = _run_tests(clean, tests, timeout)
            if not passed:
                raise RuntimeError(f"the tests {' '.join(tests)} fail before any mutation")
        for m in mutations:
            work = Path(tmp) / m.name
            shutil.copytree(clean, work)
            path = work / m.path
            path.write_text(path.read_text().replace(m.old, m.new))
            passed, seconds = _run_tests(work, m.tests, timeout)
            out.append({**asdict(m), "caught": not passed, "seconds": seconds})
            print(f"{'caught  ' if not passed else 'SURVIVED'} {m.name}: {m.rule} ({seconds} s)")
            shutil.rmtree(work)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutation names (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/mutation_check.json")
    args = parser.parse_args(argv)
    chosen = tuple(m for m in MUTATIONS if not args.only or m.name in args.only)
    results = check(chosen)
    caught = sum(bool(r["caught"]) for r in results)
    print(f"mutation score: {caught}/{len(results)} caught")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"caught": caught, "total": len(results),
                                    "mutations": results}, indent=1) + "\n")  # fmt: skip
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
