"""Re-measure the fastest feasible trial of target studies against fp32 eager and ORT fp32.

For each study (e.g. one run with ``--target cpu-torch`` and one with ``--target
cpu-onnxruntime`` on ``mnist-lenet5``), loads the deployed file of its fastest feasible trial
(the TorchScript or ONNX file the trial was timed on) and times it in one run, interleaved,
against fp32 eager PyTorch of the uncompressed model and against the uncompressed model in ONNX
Runtime fp32 (the fastest single technique without compression), at the study's batch size.

    python -m benchmarks.target_studies lenet5-cpu-torch lenet5-cpu-onnxruntime \
        --storage sqlite:///studies/autocompress.db
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

from autocompress.data import Inputs, gather_inputs
from autocompress.deploy import Deployed, deploy, load_torchscript, signature_of
from autocompress.latency import LatencySettings, measure_latency
from autocompress.measure import evaluate
from autocompress.record import feasible_front, study_info
from autocompress.storage import STUDIES_DIR
from autocompress.study import load_study
from autocompress.workload import load_workload
from benchmarks.common import RESULTS, against_reference, write_results


def load_deployed(path: str, example_input: Inputs, threads: int) -> Deployed:
    """A trial's deployed file (``.onnx``, ``.pt`` or ``.pt2``) as it was timed, ready to run
    inputs."""
    signature = signature_of(example_input)
    if path.endswith(".pt2"):
        from autocompress.runtimes import load_deployed as load_runtime_file

        return Deployed(load_runtime_file(path, threads), "pt2e", path, Path(path).stat().st_size)
    if path.endswith(".onnx"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        def run_onnx(inputs: Inputs) -> torch.Tensor:
            feed = {
                name: t.numpy()
                for name, t in zip(signature.names, signature.flatten(inputs), strict=True)
            }
            return torch.from_numpy(session.run(None, feed)[0])

        return Deployed(run_onnx, "onnx", path, Path(path).stat().st_size)
    module = load_torchscript(path)

    def run(inputs: Inputs) -> torch.Tensor:
        with torch.inference_mode():
            return module(*signature.flatten(inputs))

    return Deployed(run, "torchscript", path, Path(path).stat().st_size)


REMEASURE = LatencySettings(min_block_seconds=0.05, max_blocks=30)


def measure_study(
    name: str,
    storage: str,
    data_dir: str | None,
    studies_dir: Path = STUDIES_DIR,
    latency: LatencySettings = REMEASURE,
) -> dict[str, Any]:
    """Re-time the fastest feasible trial of study ``name`` against fp32 eager and ORT fp32.

    Args:
        studies_dir: Where the study's baseline is cached (``<studies_dir>/baselines``).
        latency: How each interleaved measurement runs (its threads are the study's).
    """
    study = load_study(name, storage)
    info = study_info(study)
    settings, baseline = info["settings"], info["baseline"]
    target = settings["target"]
    front = feasible_front(study)
    if not front:
        return {"study": name, "error": "no feasible trial"}
    fastest = min(front, key=lambda t: (t.values[1], t.number))
    wl = load_workload(
        settings["workload"],
        data_dir=data_dir or settings.get("data_dir"),
        seed=int(settings.get("seed", 0)),
        cache_dir=Path(studies_dir) / "baselines",
    )
    suffix = ".onnx" if target.get("runtime") == "onnxruntime" else ".pt"
    path = str(Path(fastest.user_attrs["artifact"]).with_suffix(suffix))
    if not Path(path).exists() and Path(path).with_suffix(".pt2").exists():
        path = str(Path(path).with_suffix(".pt2"))  # PT2E int8 on cpu-torch
    threads, batch = int(target["threads"]), int(target["batch_size"])
    deployed = load_deployed(path, wl.example_input, threads)
    x = gather_inputs(wl.val, batch)
    settings_l = replace(latency, threads=threads)
    torch.set_num_threads(threads)
    vs_eager = measure_latency(lambda: deployed.run(x), settings_l, reference=lambda: wl.model(x))
    with tempfile.TemporaryDirectory() as tmp:
        ort_fp32 = deploy(
            wl.model,
            Path(tmp) / "base",
            example_input=wl.example_input,
            runtime="onnxruntime",
            threads=threads,
        )
        vs_ort = measure_latency(
            lambda: deployed.run(x), settings_l, reference=lambda: ort_fp32.run(x)
        )
    eager_ms, eager_ratio = against_reference(vs_eager)
    ort_ms, ort_ratio = against_reference(vs_ort)
    return {
        "study": name,
        "target": target,
        "trial": fastest.number,
        "deployed_file": path,
        "summary": fastest.user_attrs.get("summary"),
        "deployed": fastest.user_attrs.get("deployed_kind"),
        "trials": len(study.trials),
        "front_size": len(front),
        "metric": info["task"]["metric"],
        "baseline_val_metric": baseline["metric"],
        "val_metric": evaluate(wl, deployed, "val"),
        "test_metric": fastest.user_attrs.get("test_metric"),
        "size": info["size"],
        "size_kb": fastest.values[2],
        "baseline_size_kb": baseline["size_kb"],
        "median_ms": vs_eager.median_ms,
        "eager_fp32_ms": eager_ms,
        "speedup_vs_eager_fp32": 1 / eager_ratio,
        # The candidate timed again, interleaved with ORT fp32: its own median of that run.
        "median_vs_ort_ms": vs_ort.median_ms,
        "ort_fp32_ms": ort_ms,
        "speedup_vs_ort_fp32": 1 / ort_ratio,
        "contended": vs_eager.contended or vs_ort.contended,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table, one line per study (the size column names the study's size objective)."""
    metrics = {r["metric"] for r in rows if "metric" in r}
    metric = metrics.pop() if len(metrics) == 1 else "metric"
    lines = [
        f"| study | target | fastest feasible trial | val {metric} (baseline) | ms | "
        "x vs fp32 eager | x vs ORT fp32 | size KB (baseline) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['study']} | - | {r['error']} | | | | | |")
            continue
        t, summary = r["target"], (r["summary"] or "").replace("|", ";")
        lines.append(
            f"| {r['study']} | {t['device']}-{t['runtime']} b={t['batch_size']} "
            f"t={t['threads']} | {r['trial']}: {summary} | {r['val_metric']:.4f} "
            f"({r['baseline_val_metric']:.4f}) | {r['median_ms']:.3f} | "
            f"x{r['speedup_vs_eager_fp32']:.2f} | x{r['speedup_vs_ort_fp32']:.2f} | "
            f"{r['size']} {r['size_kb']:.1f} ({r['baseline_size_kb']:.1f}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--storage", default="sqlite:///studies/autocompress.db")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--studies-dir", type=Path, default=STUDIES_DIR, help="where baselines are cached"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = [measure_study(s, args.storage, args.data_dir, args.studies_dir) for s in args.studies]
    path = write_results("target_studies", {"rows": rows}, args.out)
    (args.out / "target_studies.md").write_text(table(rows))
    print(table(rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
