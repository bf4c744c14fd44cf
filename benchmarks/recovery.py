"""Recovery of pruned pretrained transformers: today's recipe against distillation on a corpus.

For 25% and 50% fewer MACs of the transformer blocks, by heads, MLP width and depth (each
alone, and combined), the validation metric after recovery with

* **today**: the default importance (head and neuron weight norms, block influence) and
  fine-tuning on the workload's labeled training split, and
* **new**: activation importance (heads and MLP neurons by mean |activation|, blocks by the
  output's change when skipped) and distillation on the workload's unlabeled corpus
  (:mod:`autocompress.corpus`) with the hidden-state term (:mod:`autocompress.distill`),

each with its standard error over the evaluation items, and the paired difference's. Then,
on ``minilm``, the deployed candidates on ONNX Runtime (the same runtime for all): the best
unpruned ones (fp32, dynamic int8) against the new recipe's pruned students (fp32, dynamic
int8; the int8 one reuses the recovered student, :mod:`autocompress.students`), timed
interleaved with eager PyTorch.

    python -m benchmarks.recovery --workload minilm
    python -m benchmarks.recovery --workload tiny-lm

Writes ``benchmarks/results/recovery-<workload>.json``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.data import as_output, call_model, input_batches, split_batch
from autocompress.latency import LatencySettings
from autocompress.macs import count_macs
from autocompress.measure import deploy_for_target, evaluate, time_against, timing_input
from autocompress.methods import Context
from autocompress.methods.depth import DepthPruning
from autocompress.methods.distillation import Distillation
from autocompress.methods.finetune import Finetune
from autocompress.methods.heads import HeadPruning
from autocompress.methods.int8 import Int8
from autocompress.methods.mlp import MlpPruning
from autocompress.objective import CALIBRATION_ROWS
from autocompress.pipeline import CompressionConfig, compress
from autocompress.settings import Target
from autocompress.students import StudentCache
from autocompress.workload import LoadedWorkload, load_workload
from benchmarks.common import write_results

TARGETS = (0.25, 0.5)
# Per workload: the recovery budgets (fine-tuning of today, distillation of the new recipe).
SETTINGS: dict[str, dict[str, Any]] = {
    "minilm": {
        "finetune": {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 1e-4,
                     "schedule": "cosine", "warmup_fraction": 0.1},
        "distill": {"steps": 200, "batch_size": 16, "lr": 3e-4, "hidden": 1.0},
        "budget": 0.01,
    },
    "tiny-lm": {
        "finetune": {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3,
                     "schedule": "cosine", "warmup_fraction": 0.05},
        "distill": {"steps": 0, "batch_size": 16, "lr": 1e-3, "hidden": 1.0},
        "new_finetune": {"epochs": 3, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3,
                         "schedule": "cosine", "warmup_fraction": 0.05},
        "new_alpha": 0.5,
        "budget_relative": 0.05,
    },
}  # fmt: skip


def _apply(wl: LoadedWorkload, methods: dict[str, Any]) -> nn.Module:
    """The baseline with prune-stage ``methods`` applied (no artifact), for counting MACs."""
    from autocompress.architecture import model_facts

    student = copy.deepcopy(wl.model).eval()
    config = CompressionConfig(methods)
    ctx = Context(task=wl.task, example_input=wl.example_input, train=wl.train,
                  facts=model_facts(wl.model, wl.example_input), config=config)  # fmt: skip
    for _, method in config.stage("prune"):
        method.apply(student, ctx)
    return student


class Macs:
    """MACs of the baseline and of its transformer blocks, and the share a pruning removes."""

    def __init__(self, wl: LoadedWorkload) -> None:
        self.wl = wl
        self.total = count_macs(wl.model, wl.example_input)
        from autocompress.transformer_parts import find_transformer_parts

        parts = find_transformer_parts(wl.model)
        assert parts is not None  # noqa: S101 - transformer workloads only
        self.blocks = len(parts.blocks)
        if self.blocks < 2:
            self.block_macs = self.total  # nothing to tell the blocks from the rest by
        else:
            one_less = self.of({"depth": DepthPruning(1 / self.blocks)})
            self.block_macs = self.blocks * (self.total - one_less)

    def of(self, methods: dict[str, Any]) -> int:
        return count_macs(_apply(self.wl, methods), self.wl.example_input)

    def removed(self, macs: int) -> float:
        """Share of the blocks' MACs removed."""
        return (self.total - macs) / self.block_macs


def plans(m: Macs) -> dict[tuple[str, float], dict[str, Any]]:
    """Prune amounts per (kind, target share of the blocks' MACs), from measured slopes.

    Heads and MLP width cost MACs linearly in the share removed; depth by whole blocks.
    A target a kind cannot reach alone (heads keep at least a quarter) takes its maximum.
    """
    heads = (m.total - m.of({"heads": HeadPruning(0.5)})) / m.block_macs / 0.5
    mlp = (m.total - m.of({"mlp": MlpPruning(0.5)})) / m.block_macs / 0.5
    out: dict[tuple[str, float], dict[str, Any]] = {}
    for t in TARGETS:
        out[("heads", t)] = {"heads": min(0.75, t / heads)}
        out[("mlp", t)] = {"mlp": min(0.9, t / mlp)}
        out[("depth", t)] = {"depth": min(0.5, round(t * m.blocks) / m.blocks)}
        depth = min(0.5, 1 / m.blocks) if t >= 0.4 else 0.0
        head_share = 0.5 if t >= 0.4 else 1 / 3
        # what the kept blocks must still shed, as a share of their own MACs
        rest = (t - depth) / (1 - depth) - head_share * heads
        out[("combined", t)] = {"heads": head_share, "mlp": min(0.9, max(0.0, rest / mlp))}
        if depth:
            out[("combined", t)]["depth"] = depth
    return out


def methods_for(plan: dict[str, float], recipe: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The configuration's methods: the plan's pruning with the recipe's importance and
    recovery."""
    new = recipe == "new"
    methods: dict[str, Any] = {}
    if plan.get("depth"):
        methods["depth"] = DepthPruning(plan["depth"], "output" if new else "influence")
    if plan.get("heads"):
        methods["heads"] = HeadPruning(plan["heads"], "activation" if new else "magnitude")
    if plan.get("mlp"):
        methods["mlp"] = MlpPruning(plan["mlp"], "activation" if new else "magnitude")
    if new:
        # The new recipe distils (outputs and hidden states) on the corpus; where the
        # workload's labeled split is in the evaluation's register (tiny-lm), it also fine-tunes
        # there, the teacher's term blended in (alpha).
        alpha = settings.get("new_alpha", 1.0)
        methods["distillation"] = Distillation(temperature=1.0, alpha=alpha, **settings["distill"])
        if "new_finetune" in settings:
            methods["finetune"] = Finetune(**settings["new_finetune"])
    else:
        methods["finetune"] = Finetune(**settings["finetune"])
    return methods


# --- metrics with standard errors over the evaluation items ---------------------------------


@torch.inference_mode()
def per_item(wl: LoadedWorkload, model: Any, split: str) -> tuple[float, torch.Tensor]:
    """The metric on ``split`` and what each item contributes to it.

    ``minilm``: each item's share of its 10 nearest neighbours from its own document (the
    metric is their mean). ``tiny-lm``: each row's summed token NLL and token count (the
    metric is the exponent of their ratio).
    """
    if wl.task.name == "language-modeling":
        rows = []
        for batch in wl.split(split).batches():
            logits = as_output(call_model(model, split_batch(batch)[0]))
            nll, mask = wl.task._token_nll(logits.float(), batch)  # type: ignore[attr-defined]
            rows.append(torch.stack([(nll * mask).sum(1), mask.sum(1).float()], dim=1))
        items = torch.cat(rows).double()
        return math.exp(float(items[:, 0].sum() / items[:, 1].sum())), items
    outs, docs = [], []
    for batch in wl.split(split).batches():
        inputs, labels = split_batch(batch)
        outs.append(torch.as_tensor(call_model(model, inputs)).float())
        docs.append(labels[:, -1].round().long())
    emb, doc = torch.cat(outs), torch.cat(docs)
    n = len(emb)
    k = min(10, n - 1)
    eye = torch.eye(n, dtype=torch.bool)
    same = (doc[:, None] == doc[None, :]) & ~eye
    relevant = same.sum(1)
    a = torch.nn.functional.normalize(emb.double(), dim=1)
    sim = (a @ a.T).masked_fill(eye, -torch.inf)
    hits = same.gather(1, sim.topk(k, dim=1).indices).sum(1).double()
    scored = relevant > 0
    items = hits[scored] / relevant[scored].clamp(max=k)
    return float(items.mean()), items


def value_of(items: torch.Tensor) -> float:
    if items.dim() == 2:
        return math.exp(float(items[:, 0].sum() / items[:, 1].sum()))
    return float(items.mean())


def bootstrap_se(items: torch.Tensor, other: torch.Tensor | None = None, n: int = 400) -> float:
    """Bootstrap standard error over items of the metric (or of the paired difference
    ``metric(items) - metric(other)``, resampling the same items for both)."""
    g = torch.Generator().manual_seed(0)
    values = []
    for _ in range(n):
        idx = torch.randint(0, len(items), (len(items),), generator=g)
        v = value_of(items[idx])
        if other is not None:
            v -= value_of(other[idx])
        values.append(v)
    return float(torch.tensor(values).std())


# --- the rows ---------------------------------------------------------------------------------


def run_rows(
    wl: LoadedWorkload, settings: dict[str, Any], out: Path, only: set[str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any], Macs]:
    macs = Macs(wl)
    base_val, base_items = per_item(wl, wl.model, "val")
    rows = []
    students = StudentCache(out / "students", {"workload": wl.name})
    for (kind, target), plan in plans(macs).items():
        if only and f"{kind}:{target}" not in only:
            continue
        row: dict[str, Any] = {"kind": kind, "target": target, "plan": plan}
        items = {}
        for recipe in ("today", "new"):
            started = time.perf_counter()
            config = CompressionConfig(methods_for(plan, recipe, settings), seed=0)
            c = compress(
                wl.model, config, out / f"{kind}-{target}-{recipe}.acpk", task=wl.task,
                train=wl.train, example_input=wl.example_input, distill_data=wl.distill_data,
                students=students,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            value, items[recipe] = per_item(wl, c.model, "val")
            row["macs_removed"] = round(macs.removed(c.report["macs"]), 4)
            row["macs_removed_total"] = round(1 - c.report["macs"] / macs.total, 4)
            row[recipe] = {
                "val_metric": value,
                "val_se": bootstrap_se(items[recipe]),
                "seconds": round(seconds, 1),
                "summary": config.describe(),
                "records": {k: v for k, v in c.report["records"].items() if k == "distillation"},
            }
            print(f"{kind} {target:.0%} {recipe}: {value:.4f} ({seconds:.0f} s)", flush=True)
        row["new_minus_today"] = row["new"]["val_metric"] - row["today"]["val_metric"]
        row["difference_se"] = bootstrap_se(items["new"], items["today"])
        rows.append(row)
        (out / "rows.partial.json").write_text(str(rows))
    baseline = {"val": base_val, "val_se": bootstrap_se(base_items), "items": len(base_items)}
    return rows, baseline, macs


def feasible(wl: LoadedWorkload, settings: dict[str, Any], base: float, value: float) -> bool:
    if "budget" in settings:
        return wl.task.worsening(base, value) <= settings["budget"]
    return wl.task.worsening(base, value) <= settings["budget_relative"] * abs(base)


RUNTIMES = ("onnxruntime", "openvino")
# int8 per runtime: ONNX Runtime's dynamic int8 (the transformer's usual), OpenVINO's static
# int8 through NNCF (dynamic int8 ran slower than f32 there, section 9).
INT8_MODE = {"onnxruntime": "dynamic", "openvino": "static"}


def run_front(
    wl: LoadedWorkload, settings: dict[str, Any], rows: list[dict[str, Any]], base_val: float,
    macs: Macs, out: Path, runtimes: tuple[str, ...] = RUNTIMES,
) -> dict[str, Any]:  # fmt: skip
    """Deployed candidates on each runtime, each timed interleaved with eager PyTorch.

    Per runtime: the unpruned model in fp32 and int8, and the feasible pruned row of the new
    recipe that removes the most MACs (at least 25%) in fp32 and int8 (its recovered student
    reused from the cache). ``best_unpruned`` / ``best_pruned`` are taken on the runtime where
    the pruned model is fastest, so that the two compare on the same runtime.
    """
    latency = LatencySettings(min_block_seconds=0.05, min_blocks=7, max_blocks=25, max_cv=0.1)
    eager = deploy_for_target(wl, wl.model, out / "eager", Target(runtime="torch", batch_size=1))
    x = timing_input(wl, 1)
    calibration = input_batches(wl.train, CALIBRATION_ROWS)
    candidates: list[dict[str, Any]] = []
    students = StudentCache(out / "students", {"workload": wl.name})
    # The feasible row that removes the most; with none feasible, the best-scoring row that
    # removes at least 25%, timed all the same (its speed-up says what the gap would buy).
    big = [r for r in rows if r["macs_removed"] >= 0.25]
    ok = [r for r in big if feasible(wl, settings, base_val, r["new"]["val_metric"])]
    pruned = sorted(ok, key=lambda r: -r["macs_removed"]) or sorted(
        big, key=lambda r: wl.task.worsening(base_val, r["new"]["val_metric"])
    )
    configs: list[tuple[str, dict[str, Any], float]] = [("unpruned", {}, 0.0)]
    for r in pruned[:1]:
        label = f"{r['kind']} -{r['macs_removed']:.0%} MACs"
        configs.append((label, methods_for(r["plan"], "new", settings), r["macs_removed"]))
    number = 0
    for runtime in runtimes:
        target = Target(runtime=runtime, threads=1, batch_size=1)
        for label, methods, removed in configs:
            for precision in ("fp32", "int8"):
                int8 = Int8(mode=INT8_MODE[runtime]) if precision == "int8" else None
                config = CompressionConfig({**methods, **({"int8": int8} if int8 else {})})
                c = compress(
                    wl.model, config, out / f"front-{number}.acpk", task=wl.task,
                    train=wl.train, example_input=wl.example_input,
                    distill_data=wl.distill_data, students=students,
                )  # fmt: skip
                deployed = deploy_for_target(
                    wl, c.model, out / f"front-{number}", target, int8=int8,
                    calibration=calibration if int8 is not None else None,
                )  # fmt: skip
                lat = time_against(deployed, eager, x, latency, 1)
                value = evaluate(wl, deployed, "val")
                test = evaluate(wl, deployed, "test")
                candidates.append({
                    "trial": number, "runtime": runtime,
                    "label": f"{label} {precision}" + (f" {int8.mode}" if int8 else ""),
                    "macs_removed": removed,
                    "speedup_vs_eager": 1 / (lat.ratio_to_reference or math.nan),
                    "latency_ms": lat.median_ms, "p90_ms": lat.p90_ms, "cv": lat.cv,
                    "contended": lat.contended,
                    "val_metric": value, "test_metric": test,
                    "feasible": feasible(wl, settings, base_val, value),
                    "student_reused": c.report["student_reused"],
                    "deployed_bytes": deployed.size_bytes,
                })  # fmt: skip
                print(candidates[-1], flush=True)
                number += 1
    best: dict[str, Any] = {"best_unpruned": None, "best_pruned": None}
    for runtime in runtimes:
        on = [c for c in candidates if c["runtime"] == runtime and c["feasible"]]
        best_u = max((c for c in on if c["macs_removed"] == 0),
                     key=lambda c: c["speedup_vs_eager"], default=None)  # fmt: skip
        best_p = max((c for c in on if c["macs_removed"] >= 0.25),
                     key=lambda c: c["speedup_vs_eager"], default=None)  # fmt: skip
        if best_p is not None and (
            best["best_pruned"] is None
            or best_p["speedup_vs_eager"] > best["best_pruned"]["speedup_vs_eager"]
        ):
            best = {"best_unpruned": best_u, "best_pruned": best_p}
        elif (
            best["best_pruned"] is None
            and best_u is not None
            and (
                best["best_unpruned"] is None
                or best_u["speedup_vs_eager"] > best["best_unpruned"]["speedup_vs_eager"]
            )
        ):
            best["best_unpruned"] = best_u
    best_u, best_p = best["best_unpruned"], best["best_pruned"]
    closest = max((c for c in candidates if c["macs_removed"] >= 0.25),
                  key=lambda c: (c["val_metric"] if wl.task.higher_is_better
                                 else -c["val_metric"]), default=None)  # fmt: skip
    return {
        "closest_pruned": closest if best_p is None else None,
        "runtimes": f"{', '.join(runtimes)}; 1 thread, batch 1",
        "candidates": candidates,
        "best_unpruned": best_u,
        "best_pruned": best_p,
        "pruned_over_unpruned": (
            best_p["speedup_vs_eager"] / best_u["speedup_vs_eager"] if best_p and best_u else None
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path("studies") / "baselines")
    parser.add_argument("--rows", default="", help="only these rows, e.g. mlp:0.5,depth:0.25")
    parser.add_argument("--steps", type=int, help="distillation steps of the new recipe")
    parser.add_argument("--no-front", action="store_true")
    parser.add_argument("--name", help="results file name (default recovery-<workload>)")
    parser.add_argument(
        "--today-epochs", type=int,
        help="fine-tuning epochs of today's recipe (a control with the new recipe's budget); "
        "results go to recovery-<workload>-today<N>ep.json",
    )  # fmt: skip
    args = parser.parse_args(argv)
    settings = copy.deepcopy(SETTINGS[args.workload])
    if args.steps:
        settings["distill"]["steps"] = args.steps
    if args.today_epochs:
        settings["finetune"]["epochs"] = args.today_epochs
    torch.set_num_threads(1)
    started = time.perf_counter()
    wl = load_workload(args.workload, cache_dir=args.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        only = {r.strip() for r in args.rows.split(",") if r.strip()}
        rows, baseline, macs = run_rows(wl, settings, out, only)
        front = None
        if args.workload == "minilm" and not args.no_front:
            front = run_front(wl, settings, rows, baseline["val"], macs, out)
    payload = {
        "command": "python -m benchmarks.recovery " + " ".join(argv or sys.argv[1:]),
        "eval": {
            "val_items": baseline["items"],
            "test_items": len(wl.test),
            "baseline_val": baseline["val"],
            "baseline_val_se": baseline["val_se"],
        },
        "settings": settings,
        "corpus": wl.distill_data.info if wl.distill_data is not None else None,
        "corpus_rows": len(wl.distill_data) if wl.distill_data is not None else 0,
        "macs": {"total": macs.total, "blocks": macs.block_macs},
        "rows": rows,
        "front": front,
        "seconds": round(time.perf_counter() - started),
    }
    suffix = f"-today{args.today_epochs}ep" if args.today_epochs else ""
    path = write_results(args.name or f"recovery-{args.workload}{suffix}", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
