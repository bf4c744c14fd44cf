"""Transformers on CPU: the searched front against each single technique alone.

    python -m benchmarks.transformer_models --workload tiny-lm --study lm-ort --storage URL
    python -m benchmarks.transformer_models --workload minilm --study minilm-ort --storage URL

On one thread, every candidate is timed interleaved against fp32 eager PyTorch on the same
batch (1 x 128 tokens, and 8 x 128) in one run, so the speed-ups compare. The candidates:
ONNX Runtime fp32, ONNX Runtime dynamic int8, int4 weight-only (MatMulNBits) rounded to nearest
and with GPTQ at the same group size, 50% of the attention heads removed with one epoch of
distillation, and the deployed files of the study's feasible Pareto front (run the study first,
e.g. ``autocompress study run --study lm-ort --workload tiny-lm --space
search_spaces/transformer.yaml --target cpu-onnxruntime --batch-size 1 --timeout 3600``). Each
single technique's metric is measured here on the validation and test splits, the front's are
the study's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from autocompress.data import call_model, gather_inputs, map_tensors
from autocompress.deploy import load_onnx
from autocompress.latency import LatencySettings, measure_latency
from autocompress.measure import deploy_for_target
from autocompress.methods.distillation import Distillation
from autocompress.methods.finetune import Finetune
from autocompress.methods.heads import HeadPruning
from autocompress.methods.int8 import Int8
from autocompress.methods.weights import WeightQuantization
from autocompress.pipeline import CompressionConfig, compress
from autocompress.record import allowed_worsening, feasible_front, study_info, worsening
from autocompress.settings import Target
from autocompress.study import artifact_dir, load_study
from autocompress.workload import LoadedWorkload, load_workload
from benchmarks.common import RESULTS, against_reference, machine

TIMING = LatencySettings(min_block_seconds=0.1, min_blocks=7, max_blocks=40, max_cv=0.05)
BATCHES = (1, 8)


def singles(group: int = 32) -> dict[str, CompressionConfig]:
    """Each single technique, as the study would configure it."""
    ft = Finetune(epochs=1, batch_size=16, optimizer="adamw", lr=3e-4, schedule="cosine")
    return {
        "ort-fp32": CompressionConfig(),
        "ort-dynamic-int8": CompressionConfig.of(int8=Int8(mode="dynamic")),
        f"int4-rtn-g{group}": CompressionConfig.of(
            weights=WeightQuantization(4, f"group{group}", "rtn", keep_edges_8bit=False)
        ),
        f"int4-gptq-g{group}": CompressionConfig.of(
            weights=WeightQuantization(4, f"group{group}", "gptq", keep_edges_8bit=False)
        ),
        "heads-50-kd": CompressionConfig.of(
            heads=HeadPruning(0.5), finetune=ft, distillation=Distillation(2.0, 0.5)
        ),
    }


def _single(wl: LoadedWorkload, name: str, config: CompressionConfig, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    c = compress(wl.model, config, out / f"{name}.acpk", task=wl.task, train=wl.train,
                 example_input=wl.example_input)  # fmt: skip
    deployed = deploy_for_target(
        wl, c.model, out / name, Target(runtime="onnxruntime", batch_size=1),
        int8=config.get("int8"), weights=config.get("weights"),
    )  # fmt: skip
    return {
        "name": name,
        "kind": "single",
        "summary": config.describe(),
        "deployed_kind": deployed.kind,
        "deployed_bytes": deployed.size_bytes,
        "packed_bytes": c.size_bytes,
        "val": wl.task.metric(deployed.run, wl.val),
        "test": wl.task.metric(deployed.run, wl.test),
        "run": deployed.run,
        "seconds_to_build": time.perf_counter() - started,
    }


def _front(study_name: str, storage: str, studies_dir: Path) -> tuple[list[dict[str, Any]], dict]:
    study = load_study(study_name, storage)
    info = study_info(study)
    folder = artifact_dir(studies_dir, study)
    rows = []
    for t in feasible_front(study):
        path = folder / f"trial-{t.number}.onnx"
        if not path.exists():
            continue
        rows.append({
            "name": f"front-{t.number}",
            "kind": "front",
            "summary": t.user_attrs.get("summary"),
            "deployed_kind": t.user_attrs.get("deployed_kind"),
            "deployed_bytes": path.stat().st_size,
            "packed_bytes": t.user_attrs.get("packed_bytes"),
            "val": t.values[0],
            "test": t.user_attrs.get("test_metric"),
            "run": load_onnx(path),
            "warm_start": bool(t.user_attrs.get("warm_start")),
        })  # fmt: skip
    return rows, info


def _time(rows: list[dict[str, Any]], wl: LoadedWorkload) -> None:
    """Every row's speed-up against fp32 eager, interleaved, at each batch size."""
    model = wl.model.eval()
    for batch in BATCHES:
        x = gather_inputs(wl.val, batch)
        x = map_tensors(x, lambda t: t.contiguous())
        eager = measure_latency(partial(call_model, model, x), TIMING).median_ms
        for row in rows:
            result = measure_latency(
                partial(row["run"], x),
                TIMING,
                reference=partial(call_model, model, x),
            )
            eager_ms, ratio = against_reference(result)
            row[f"b{batch}_ms"] = result.median_ms
            row[f"b{batch}_eager_ms"] = eager_ms
            row[f"b{batch}_speedup"] = 1.0 / ratio
            row[f"b{batch}_stable"] = result.stable and not result.contended
        for row in rows:
            row[f"b{batch}_eager_alone_ms"] = eager


def run(workload: str, study: str | None, storage: str | None, studies_dir: Path,
        data_dir: str | None = None, out_dir: Path = RESULTS) -> dict[str, Any]:  # fmt: skip
    """Build the single techniques, load the study's front, time everything, write results."""
    torch.set_num_threads(1)
    wl = load_workload(workload, data_dir=data_dir, cache_dir=studies_dir / "baselines")
    base_val = wl.evaluate(wl.model, "val")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [_single(wl, name, config, Path(tmp)) for name, config in singles().items()]
        info = None
        if study and storage:
            front, info = _front(study, storage, studies_dir)
            rows += front
        _time(rows, wl)
    if info is None:
        task = wl.task
        lm = task.name == "language-modeling"
        info = {
            "task": {
                "metric": task.metric_name,
                "higher_is_better": task.higher_is_better,
                "name": task.name,
            },
            "baseline": {"metric": base_val},
            "budget": {
                "absolute": 0.01 if task.name == "classification" else None,
                "relative": 0.05 if lm else None,
            },
        }
        if workload == "minilm":
            info["budget"] = {"absolute": 0.01, "relative": None}
    allowed = allowed_worsening(info)
    fp32_bytes = next(r["deployed_bytes"] for r in rows if r["name"] == "ort-fp32")
    for row in rows:
        row.pop("run")
        row["feasible"] = math.isfinite(row["val"]) and worsening(info, row["val"]) <= allowed
        row["smaller_than_fp32_file"] = fp32_bytes / row["deployed_bytes"]
    payload = {
        "machine": machine(),
        "workload": workload,
        "metric": info["task"]["metric"],
        "baseline_val": info["baseline"]["metric"],
        "allowed_worsening": allowed,
        "rows": rows,
        "aims": _aims(rows),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"transformers-{workload}.json").write_text(json.dumps(payload, indent=1))
    (out_dir / f"transformers-{workload}.md").write_text(report(payload))
    return payload


def _aims(rows: list[dict[str, Any]]) -> dict[str, Any]:
    feasible = [r for r in rows if r["feasible"]]
    singles_ = [r for r in feasible if r["kind"] == "single"]
    front = [r for r in feasible if r["kind"] == "front"]
    out: dict[str, Any] = {}
    for batch in BATCHES:
        key = f"b{batch}_speedup"
        best_single = max((r[key] for r in singles_), default=float("nan"))
        best_front = max((r[key] for r in front), default=float("nan"))
        out[f"b{batch}"] = {
            "best_front_speedup_vs_eager": best_front,
            "best_single_speedup_vs_eager": best_single,
            "front_over_best_single": best_front / best_single if best_single else float("nan"),
        }
    out["smallest_feasible_deployed_vs_fp32"] = max(
        (r["smaller_than_fp32_file"] for r in feasible), default=float("nan")
    )
    rtn = next((r for r in rows if r["name"].startswith("int4-rtn")), None)
    gptq = next((r for r in rows if r["name"].startswith("int4-gptq")), None)
    if rtn and gptq:
        out["int4_rtn_vs_gptq_val"] = [rtn["val"], gptq["val"]]
    return out


def report(payload: dict[str, Any]) -> str:
    """The markdown table."""
    m = payload["metric"]
    lines = [
        f"{payload['workload']}: baseline validation {m} {payload['baseline_val']:.4f}, allowed "
        f"worsening {payload['allowed_worsening']:.4g}; speed-ups are interleaved against fp32 "
        "eager PyTorch on one thread.",
        "",
        f"| candidate | val {m} | test {m} | feasible | x eager b1 | x eager b8 | deployed file | "
        "x smaller than ORT fp32 | what |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        test = f"{r['test']:.4f}" if r.get("test") is not None else "-"
        lines.append(
            f"| {r['name']} | {r['val']:.4f} | {test} | {'yes' if r['feasible'] else 'no'} | "
            f"{r['b1_speedup']:.2f} | {r['b8_speedup']:.2f} | {r['deployed_bytes']:,} B "
            f"({r['deployed_kind']}) | {r['smaller_than_fp32_file']:.2f} | {r['summary']} |"
        )
    lines += ["", "Aims: " + json.dumps(payload["aims"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="tiny-lm")
    parser.add_argument("--study")
    parser.add_argument("--storage")
    parser.add_argument("--studies-dir", type=Path, default=Path("studies"))
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    payload = run(args.workload, args.study, args.storage, args.studies_dir, args.data_dir)
    sys.stdout.write(report(payload))


if __name__ == "__main__":
    main()
