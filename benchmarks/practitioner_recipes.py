"""What a practitioner gets in two or three lines, against the study's best feasible front trial.

    python -m benchmarks.practitioner_recipes --workload digits --study ov-digits \\
        --storage sqlite:///studies/practitioner.db

On one thread, in one run, every recipe below and the deployed file of the study's fastest
feasible front trial are timed interleaved against fp32 eager PyTorch on the same batch (the
study's batch size), evaluated on the validation and the test split, and compared by the mean
cosine of their outputs to fp32 eager's on the validation inputs:

- ``torch-eager-fp32``: the model as it is;
- ``torch-eager-bf16``: ``model.to(torch.bfloat16)`` (where the CPU has bfloat16 instructions);
- ``ort-fp32``: the ONNX export in ONNX Runtime;
- ``ort-fused-dynamic-int8``: ``onnxruntime.transformers.optimizer`` (transformers only; the
  fused operators are listed) then ``quantize_dynamic``;
- ``openvino-default``: ``openvino.convert_model(model, example_input=...)``, saved with
  ``ov.save_model``'s defaults and compiled with the CPU plugin's defaults;
- ``openvino-nncf-int8``: ``nncf.quantize`` (``model_type=TRANSFORMER`` with attention) on
  the training split's calibration batches;
- ``openvino-nncf-accuracy-control``: ``nncf.quantize_with_accuracy_control`` at the study's
  budget on the validation split (the accuracy-aware anchor).

``front_over_best_recipe`` is the front trial's speed-up over eager divided by the fastest
feasible recipe's. Results go to ``benchmarks/results/practitioner-<workload>.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from optuna.trial import FrozenTrial

from autocompress.data import (
    Inputs,
    as_output,
    call_model,
    gather_inputs,
    input_batches,
    map_tensors,
    split_batch,
)
from autocompress.deploy import export_onnx, load_deployed, load_onnx
from autocompress.hardware import cpu_flags
from autocompress.latency import LatencySettings, measure_latency
from autocompress.record import allowed_worsening, feasible_front, study_info, worsening
from autocompress.runtimes import has_attention
from autocompress.runtimes._base import files_size
from autocompress.runtimes._onnx_tools import (
    fuse_transformer,
    transformer_type,
    with_eager_attention,
)
from autocompress.study import artifact_dir, load_study
from autocompress.workload import LoadedWorkload, load_workload
from benchmarks.common import RESULTS, against_reference, machine

TIMING = LatencySettings(min_block_seconds=0.1, min_blocks=7, max_blocks=40, max_cv=0.05)
CALIBRATION_ROWS = 256
DEFAULT_BATCH = {"digits": 32, "minilm": 1, "tiny-lm": 1}
Run = Callable[[Inputs], torch.Tensor]


def _files_bytes(*paths: Path) -> int:
    return files_size(paths)


@contextlib.contextmanager
def _quiet() -> Any:
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _eager_run(model: torch.nn.Module) -> Run:
    def run(x: Inputs) -> torch.Tensor:
        with torch.inference_mode():
            return as_output(call_model(model, x))

    return run


def _eager(model: torch.nn.Module, out: Path) -> tuple[Run, int]:
    torch.save(model.state_dict(), out / "eager.pt")
    return _eager_run(model), _files_bytes(out / "eager.pt")


def _eager_bf16(model: torch.nn.Module, out: Path) -> tuple[Run, int]:
    bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
    torch.save(bf16.state_dict(), out / "bf16.pt")

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.bfloat16) if torch.is_floating_point(t) else t

    def run(x: Inputs) -> torch.Tensor:
        with torch.inference_mode():
            return as_output(call_model(bf16, map_tensors(x, cast))).float()

    return run, _files_bytes(out / "bf16.pt")


def _ort_fp32(wl: LoadedWorkload, out: Path) -> tuple[Run, int]:
    path = out / "ort-fp32.onnx"
    export_onnx(wl.model, wl.example_input, path)
    return load_onnx(path), _files_bytes(path)


def _ort_fused_int8(wl: LoadedWorkload, out: Path, facts: dict[str, Any]) -> tuple[Run, int]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = out / "fused-fp32.onnx"
    kind = transformer_type(wl.model)
    export_onnx(with_eager_attention(wl.model) if kind else wl.model, wl.example_input, fp32)
    if kind is not None:
        facts["fused_operators"] = fuse_transformer(fp32, kind)
    else:
        facts["fused_operators"] = "not a BERT/GPT-2/ViT: no transformer fusion"
    path = out / "ort-fused-int8.onnx"
    with _quiet():
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": 1})  # float: fused ops  # fmt: skip
    return load_onnx(path), _files_bytes(path)


def _ov_inputs(example: Inputs) -> tuple[Any, Callable[[Inputs], Any]]:
    """The example for ``convert_model`` and the feed of a batch for the compiled model."""
    if isinstance(example, dict):
        return dict(example), lambda x: {k: v.numpy() for k, v in x.items()}
    if isinstance(example, tuple):
        return example, lambda x: [t.numpy() for t in x]
    return example, lambda x: [x.numpy()]


def _ov_runner(compiled: Any, feed: Callable[[Inputs], Any]) -> Run:
    request = compiled.create_infer_request()

    def run(x: Inputs) -> torch.Tensor:
        request.infer(feed(x))
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


def _ov_save(model: Any, out: Path, name: str, threads: int) -> tuple[Any, int]:
    import openvino as ov

    xml = out / f"{name}.xml"
    ov.save_model(model, str(xml))  # its default: float weights stored as float16
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": threads})
    return compiled, _files_bytes(xml, xml.with_suffix(".bin"))


def _ov_convert(wl: LoadedWorkload) -> Any:
    import openvino as ov

    example, _ = _ov_inputs(wl.example_input)
    with torch.no_grad(), _quiet():
        return ov.convert_model(wl.model, example_input=example)


def _ov_default(wl: LoadedWorkload, out: Path, facts: dict[str, Any]) -> tuple[Run, int]:
    compiled, size = _ov_save(_ov_convert(wl), out, "ov-default", 1)
    facts["precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return _ov_runner(compiled, _ov_inputs(wl.example_input)[1]), size


def _nncf_dataset(wl: LoadedWorkload, split: Any) -> Any:
    import nncf

    _, feed = _ov_inputs(wl.example_input)
    return nncf.Dataset(input_batches(split, CALIBRATION_ROWS), feed)


def _ov_int8(wl: LoadedWorkload, out: Path, facts: dict[str, Any]) -> tuple[Run, int]:
    import nncf

    extra = {"model_type": nncf.ModelType.TRANSFORMER} if has_attention(wl.model) else {}
    with _quiet():
        quantized = nncf.quantize(_ov_convert(wl), _nncf_dataset(wl, wl.train), **extra)
    compiled, size = _ov_save(quantized, out, "ov-int8", 1)
    facts["model_type"] = "transformer" if extra else "default"
    return _ov_runner(compiled, _ov_inputs(wl.example_input)[1]), size


def _ov_accuracy_control(
    wl: LoadedWorkload, out: Path, facts: dict[str, Any], info: dict[str, Any]
) -> tuple[Run, int]:
    import nncf

    _, feed = _ov_inputs(wl.example_input)
    sign = 1.0 if info["task"]["higher_is_better"] else -1.0

    def validate(compiled: Any, _items: Any) -> float:
        # NNCF maximises; the whole validation split scores the model, as the study does.
        return sign * float(wl.task.metric(_ov_runner(compiled, feed), wl.val))

    extra = {"model_type": nncf.ModelType.TRANSFORMER} if has_attention(wl.model) else {}
    val_items = nncf.Dataset([x for x, _ in map(split_batch, _val_batches(wl))], feed)
    started = time.perf_counter()
    with _quiet():
        quantized = nncf.quantize_with_accuracy_control(
            _ov_convert(wl), _nncf_dataset(wl, wl.train), val_items, validate,
            max_drop=allowed_worsening(info), drop_type=nncf.DropType.ABSOLUTE, **extra,
        )  # fmt: skip
    facts["seconds"] = round(time.perf_counter() - started, 1)
    facts["max_drop"] = allowed_worsening(info)
    compiled, size = _ov_save(quantized, out, "ov-ac", 1)
    return _ov_runner(compiled, feed), size


def _val_batches(wl: LoadedWorkload) -> list[Any]:
    return list(wl.val.batches(64))


def _front_best(study_name: str, storage: str, studies_dir: Path) -> dict[str, Any] | None:
    """The fastest feasible front trial whose deployed file is on disk."""
    study = load_study(study_name, storage)
    folder = artifact_dir(studies_dir, study)
    best: tuple[FrozenTrial, Path] | None = None
    for t in feasible_front(study):
        path = next((p for p in folder.glob(f"trial-{t.number}.*")
                     if p.suffix in (".xml", ".onnx", ".pt", ".pt2")), None)  # fmt: skip
        if path is None:
            continue
        if best is None or t.values[1] < best[0].values[1]:
            best = (t, path)
    if best is None:
        return None
    t, path = best
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return {
        "trial": t.number,
        "summary": t.user_attrs.get("summary"),
        "deployed_kind": t.user_attrs.get("deployed_kind"),
        "run": load_deployed(path),
        "deployed_bytes": _files_bytes(*files),
        "study_val_metric": t.values[0],
    }


def _cosine(wl: LoadedWorkload, run: Run, reference: list[torch.Tensor], rows: int) -> float:
    x = gather_inputs(wl.val, rows)
    got = run(x).float().reshape(rows, -1)
    return float(F.cosine_similarity(got, reference[0].reshape(rows, -1), dim=1).mean())


def _time_all(
    rows: dict[str, dict[str, Any]], wl: LoadedWorkload, batch: int, timing: LatencySettings
) -> float:
    """Every row's speed-up against fp32 eager, interleaved with it on the same batch."""
    model = wl.model.eval()
    x = map_tensors(gather_inputs(wl.val, batch), lambda t: t.contiguous())
    eager_ms = []
    for row in rows.values():
        result = measure_latency(
            partial(row["run"], x), timing, reference=lambda: call_model(model, x)
        )
        eager, ratio = against_reference(result)
        row["latency_ms"] = result.median_ms
        row["latency_p90_ms"] = result.p90_ms
        row["latency_cv"] = result.cv
        row["speedup_vs_eager"] = 1.0 / ratio
        row["stable"] = bool(result.stable and not result.contended)
        eager_ms.append(eager)
    return float(np.median(eager_ms))


def _study_info_or_default(wl: LoadedWorkload, study: str | None, storage: str | None) -> dict:
    if study and storage:
        return study_info(load_study(study, storage))
    task = wl.task
    budget = {"absolute": 0.01, "relative": None}
    if task.name == "language-modeling":
        budget = {"absolute": None, "relative": 0.05}
    return {
        "task": {"metric": task.metric_name, "higher_is_better": task.higher_is_better,
                 "name": task.name},
        "baseline": {"metric": wl.evaluate(wl.model, "val")},
        "budget": budget,
        "settings": {"target": {"batch_size": DEFAULT_BATCH.get(wl.name, 1)}},
    }  # fmt: skip


def run(
    workload: str,
    study: str | None = None,
    storage: str | None = None,
    studies_dir: Path = Path("studies"),
    data_dir: str | None = None,
    out_dir: Path = RESULTS,
    recipes: tuple[str, ...] | None = None,
    timing: LatencySettings = TIMING,
) -> dict[str, Any]:
    """Build every recipe, load the study's best front trial, time and evaluate all, write."""
    torch.set_num_threads(1)
    wl = load_workload(workload, data_dir=data_dir, cache_dir=studies_dir / "baselines")
    info = _study_info_or_default(wl, study, storage)
    batch = int(info["settings"]["target"].get("batch_size") or DEFAULT_BATCH.get(workload, 1))
    builders: dict[str, Callable[[Path, dict[str, Any]], tuple[Run, int]]] = {
        "torch-eager-fp32": lambda out, f: _eager(wl.model, out),
        "torch-eager-bf16": lambda out, f: _eager_bf16(wl.model, out),
        "ort-fp32": lambda out, f: _ort_fp32(wl, out),
        "ort-fused-dynamic-int8": lambda out, f: _ort_fused_int8(wl, out, f),
        "openvino-default": lambda out, f: _ov_default(wl, out, f),
        "openvino-nncf-int8": lambda out, f: _ov_int8(wl, out, f),
        "openvino-nncf-accuracy-control": lambda out, f: _ov_accuracy_control(wl, out, f, info),
    }
    if not any(flag in cpu_flags() for flag in ("avx512_bf16", "amx_bf16")):
        builders.pop("torch-eager-bf16")
    if recipes is not None:
        builders = {k: v for k, v in builders.items() if k in recipes}
    rows: dict[str, dict[str, Any]] = {}
    allowed = allowed_worsening(info)
    rows_for_cosine = min(64, len(wl.val))
    reference = [_eager_run(wl.model)(gather_inputs(wl.val, rows_for_cosine))]
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in builders.items():
            facts: dict[str, Any] = {}
            started = time.perf_counter()
            try:
                run_fn, size = build(Path(tmp), facts)
            except Exception as e:  # noqa: BLE001 - a recipe that fails is reported, not fatal
                rows[name] = {
                    "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
                }
                continue
            rows[name] = {"run": run_fn, "deployed_bytes": size, "facts": facts,
                          "seconds_to_build": round(time.perf_counter() - started, 1)}  # fmt: skip
        front = _front_best(study, storage, studies_dir) if study and storage else None
        timed = {k: v for k, v in rows.items() if "run" in v}
        if front is not None:
            timed["front"] = front
        eager_ms = _time_all(timed, wl, batch, timing)
        for row in timed.values():
            row["val_metric"] = float(wl.task.metric(row["run"], wl.val))
            row["test_metric"] = float(wl.task.metric(row["run"], wl.test))
            row["cosine_to_fp32"] = _cosine(wl, row["run"], reference, rows_for_cosine)
            row["feasible"] = bool(
                math.isfinite(row["val_metric"]) and worsening(info, row["val_metric"]) <= allowed
            )
            row.pop("run")
    if front is not None:
        rows.pop("front", None)
    feasible = [r for r in rows.values() if r.get("feasible")]
    fastest = max(feasible, key=lambda r: r["speedup_vs_eager"], default=None)
    payload: dict[str, Any] = {
        "host": {**machine(), "load_average": os.getloadavg()},
        "workload": workload,
        "study": study,
        "batch_size": batch,
        "eager_fp32_ms": eager_ms,
        "metric": info["task"]["metric"],
        "higher_is_better": info["task"]["higher_is_better"],
        "baseline_val": info["baseline"]["metric"],
        "budget": allowed,
        "recipes": rows,
        "front_best": front,
        "fastest_feasible_recipe": next((k for k, r in rows.items() if r is fastest), None),
        "front_over_best_recipe": (
            front["speedup_vs_eager"] / fastest["speedup_vs_eager"]
            if front is not None and fastest is not None and front.get("feasible")
            else None
        ),
        "front_smaller_than_best_recipe": (
            fastest["deployed_bytes"] / front["deployed_bytes"]
            if front is not None and fastest is not None
            else None
        ),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"practitioner-{workload.replace(':', '-').replace('/', '-')}"
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str))
    (out_dir / f"{stem}.md").write_text(report(payload))
    return payload


def report(payload: dict[str, Any]) -> str:
    """The markdown table."""
    m = payload["metric"]
    host = payload["host"]
    lines = [
        f"{payload['workload']} (batch {payload['batch_size']}, one thread; eager fp32 "
        f"{payload['eager_fp32_ms']:.3f} ms): baseline validation {m} "
        f"{payload['baseline_val']:.4f}, budget {payload['budget']:.4g}. Host: {host['cpu']} "
        f"({host.get('isa', '')}), load {host['load_average'][0]:.2f}.",
        "",
        f"| recipe | x eager | val {m} | test {m} | cosine to fp32 | deployed bytes | feasible |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = dict(payload["recipes"])
    if payload.get("front_best"):
        f = payload["front_best"]
        rows[f"front trial {f['trial']} ({f['summary']})"] = f
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['speedup_vs_eager']:.2f} | {r['val_metric']:.4f} | "
            f"{r['test_metric']:.4f} | {r['cosine_to_fp32']:.4f} | {r['deployed_bytes']:,} | "
            f"{'yes' if r['feasible'] else 'no'} |"
        )
    ratio = payload.get("front_over_best_recipe")
    lines += [
        "",
        f"front_over_best_recipe: {ratio:.2f}" if ratio else "front_over_best_recipe: -",
        f"(fastest feasible recipe: {payload['fastest_feasible_recipe']})",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--study")
    parser.add_argument("--storage")
    parser.add_argument("--studies-dir", type=Path, default=Path("studies"))
    parser.add_argument("--data-dir")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    payload = run(args.workload, args.study, args.storage, args.studies_dir, args.data_dir,
                  args.out_dir)  # fmt: skip
    sys.stdout.write(report(payload))


if __name__ == "__main__":
    main()
