"""How noisy a workload's metric is: the baseline's validation and test metric with its
bootstrap standard error (over items, as ``study run`` records it), the time of one
evaluation pass, and how far torch's dynamic int8 moves the metric beside two SE.

    nice -n 5 python -m benchmarks.eval_noise --workload minilm --workload digits

The model runs eager in fp32 on one thread. Times are wall and CPU seconds of one pass over a
split (CPU time is the figure that holds on a shared machine). The int8 comparison gives the
change on each split and its paired SE (bootstrap of the per-item differences: both models
judged on the same items), which is smaller than the unpaired SE a budget is held against.
Results: ``benchmarks/results/eval_noise.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.noise import ItemValues, bootstrap_se, items_needed
from autocompress.tasks import eager_runner
from autocompress.workload import DEFAULT_CACHE_DIR, load_workload
from benchmarks.common import RESULTS, write_results


def _pass(workload: Any, model: nn.Module, split: str) -> tuple[ItemValues | None, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    items = workload.task.item_values(eager_runner(model), workload.split(split))
    return items, time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, int8: bool, cache_dir: Path) -> dict[str, Any]:
    """One workload's figures (see the module's docstring)."""
    torch.set_num_threads(1)
    workload = load_workload(name, cache_dir=cache_dir)
    out: dict[str, Any] = {"workload": name, "metric": workload.task.metric_name,
                           "higher_is_better": workload.task.higher_is_better,
                           "data": workload.info.get("data", "")}  # fmt: skip
    base_items: dict[str, ItemValues] = {}
    for split in ("val", "test"):
        items, wall, cpu = _pass(workload, workload.model, split)
        if items is None:
            out[split] = {"value": workload.evaluate(workload.model, split), "se": None}
            continue
        base_items[split] = items
        se = bootstrap_se(items)
        out[split] = {"value": items.value(), "se": se, "items": len(items),
                      "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}  # fmt: skip
        if se:
            out[split]["items_for_1_point"] = items_needed(len(items), se, 0.01)
    if int8 and base_items:
        quantized = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(workload.model), {nn.Linear}, dtype=torch.qint8
        )
        for split, base in base_items.items():
            items, _, _ = _pass(workload, quantized, split)
            assert items is not None
            change = items.value() - base.value()
            paired = ItemValues.mean_of(items.values / items.weights - base.values / base.weights)
            out[split]["torch_dynamic_int8"] = {
                "value": items.value(),
                "change": change,
                "paired_se": bootstrap_se(paired) if bool((base.weights == 1).all()) else None,
            }
    return out


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload (metric) | split | items | metric ± SE | 2 SE | items for 2 SE = 0.01 "
        "| pass wall s | pass CPU s | torch dynamic int8: change (paired SE) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for split in ("val", "test"):
            s = r[split]
            head = f"| {r['workload']} ({r['metric']}) | {split} |"
            if s.get("se") is None:
                lines.append(f"{head} | {s['value']:.4f} (SE unknown) | | | | | |")
                continue
            q = s.get("torch_dynamic_int8")
            int8 = f"{q['change']:+.4f} ({q['paired_se']:.4f})" if q and q["paired_se"] else ""
            lines.append(
                f"{head} {s['items']} | {s['value']:.4f} ± {s['se']:.4f} | {2 * s['se']:.4f} | "
                f"{s.get('items_for_1_point', '')} | {s['wall_s']} | {s['cpu_s']} | {int8} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", action="append", default=None)
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 comparison")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="baselines, teacher embeddings"
    )
    args = parser.parse_args()
    rows = [measure(name, not args.no_int8, args.cache_dir) for name in args.workload or ["minilm"]]
    load = os.getloadavg()
    path = write_results("eval_noise", {"rows": rows, "load_average": load}, args.out)
    (args.out / "eval_noise.md").write_text(
        f"Load average at the end: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}\n\n"
        + _markdown(rows)
    )
    print(path)
    print(_markdown(rows))


if __name__ == "__main__":
    main()
