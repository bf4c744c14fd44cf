"""Issue 11's acceptance run: every model family users bring completes a short study per CPU
target, and its front holds a trial beyond the warm starts that is faster or smaller within
the budget.

    python -m benchmarks.model_families [--trials 8] [--families hf-bert vit-mha ...]

The families are the tiny models of ``tests/model_families.py`` (depthwise CNN with batch norm
and residuals, ResNet with strided shortcuts, ViT with ``nn.MultiheadAttention``,
``nn.TransformerEncoder``, Hugging Face BERT passed as it is, a GPT-2 language model on a
DataLoader of dict batches), handed over as a user's ``module:function``. Each study uses the
default search space and the default budget (1 accuracy point; 5% perplexity).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from optuna.trial import TrialState

from autocompress.record import feasible_front, study_info
from autocompress.study import StudySettings, Target, create_or_resume, open_storage, run_trials
from autocompress.workers import failure_reasons
from benchmarks.common import RESULTS, machine

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("cpu-torch", "cpu-onnxruntime")


def run_one(family: str, ref: str, target: str, trials: int, root: Path) -> dict[str, Any]:
    """One study: ``trials`` completed trials of ``ref`` on ``target``; its counts and front."""
    name = f"{family}-{target}"
    storage = open_storage(f"sqlite:///{root / 'families.db'}")
    settings = StudySettings(
        workload=ref,
        space_text=(REPO / "search_spaces" / "default.yaml").read_text(),
        space_source="search_spaces/default.yaml",
        target=Target.parse(target, threads=1, batch_size=8),
    )
    started = time.perf_counter()
    study, settings, wl, info = create_or_resume(name, storage, settings, studies_dir=root)
    result = run_trials(study, settings, wl, info, total=trials, studies_dir=root)
    trials_ = study.get_trials(deepcopy=False)
    front = feasible_front(study)
    info = study_info(study)
    base = info["baseline"]
    size_key = "deployed_bytes" if info["size"] == "deployed" else "packed_bytes"
    rows = []
    for t in front:
        rows.append({
            "trial": t.number,
            "metric": t.values[0],
            "latency_ms": t.values[1],
            "size_kb": t.values[2],
            "speedup": base["latency_ms"] / t.values[1],
            "smaller": base[size_key] / 1000 / t.values[2],
            "warm_start": bool(t.user_attrs.get("warm_start")),
            "summary": t.user_attrs.get("summary"),
            "deployed_kind": t.user_attrs.get("deployed_kind"),
        })  # fmt: skip
    beyond = [r for r in rows if not r["warm_start"] and (r["speedup"] > 1 or r["smaller"] > 1)]
    return {
        "family": family,
        "target": target,
        "seconds": time.perf_counter() - started,
        "stopped_because": result.stopped_because,
        "counts": dict(Counter(t.state.name for t in trials_)),
        "failures": failure_reasons(trials_),
        "stopped": {
            t.number: t.user_attrs.get("stopped_reason")
            for t in trials_
            if t.state == TrialState.PRUNED
        },  # fmt: skip
        "baseline": {
            k: base.get(k)
            for k in ("metric", "latency_ms", "packed_bytes", "deployed_bytes", "deployed_kind")
        },  # fmt: skip
        "metric": info["task"]["metric"],
        "front": rows,
        "beyond_warm_starts": len(beyond),
    }


def report(results: list[dict[str, Any]]) -> str:
    """The markdown table of all studies."""
    lines = [
        "| family | target | COMPLETE / PRUNED / FAIL | baseline | best non-warm-start front trial "
        "(speed-up, smaller) | front size | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["counts"]
        best = max(
            (x for x in r["front"] if not x["warm_start"]),
            key=lambda x: x["speedup"] * x["smaller"],
            default=None,
        )
        best_text = (
            f"#{best['trial']} {r['metric']} {best['metric']:.4f}, x{best['speedup']:.2f} faster, "
            f"x{best['smaller']:.2f} smaller ({best['summary']})"
            if best else "none"
        )  # fmt: skip
        lines.append(
            f"| {r['family']} | {r['target']} | {c.get('COMPLETE', 0)} / {c.get('PRUNED', 0)} / "
            f"{c.get('FAIL', 0)} | {r['metric']} {r['baseline']['metric']:.4f}, "
            f"{r['baseline']['latency_ms']:.3f} ms | {best_text} | {len(r['front'])} | "
            f"{r['seconds'] / 60:.1f} |"
        )
    lines.append("")
    for r in results:
        for number, reason in r["failures"].items():
            lines.append(f"- {r['family']} / {r['target']}: trial {number} failed: {reason}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the studies and write results/model_families.{json,md}."""
    from tests.model_families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--targets", nargs="*", default=list(TARGETS))
    parser.add_argument("--root", type=Path, default=REPO / "studies" / "families")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.root.mkdir(parents=True, exist_ok=True)
    results = []
    for family in args.families:
        for target in args.targets:
            print(f"{family} on {target}...", file=sys.stderr, flush=True)
            results.append(run_one(family, FAMILIES[family], target, args.trials, args.root))
    RESULTS.mkdir(exist_ok=True)
    payload = {"machine": machine(), "trials": args.trials, "results": results}
    (RESULTS / "model_families.json").write_text(json.dumps(payload, indent=1, default=str))
    (RESULTS / "model_families.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
