"""Our front against Microsoft Olive's: same model, split, budget and wall clock, one meter.

The protocol (issue 14): the digits workload (the small CNN on scikit-learn's 8x8 digits,
validation split 20%). Each side searches for the same wall-clock budget with the same 1-point
accuracy budget on the validation split, one after the other on this machine:
  * autocompress: a study on ``cpu-onnxruntime`` (1 thread, batch 32) over
    ``search_spaces/default.yaml``; its feasible Pareto front's deployed ``trial-N.onnx`` files;
  * Olive: ``benchmarks/olive_driver.py`` run by the Python of Olive's own venv
    (``--olive-python`` or ``AUTOCOMPRESS_OLIVE_PYTHON``), given the baseline exported to ONNX
    and the data as ``.npy`` files; every model file its search wrote.
Then one common meter: every file is timed in ONNX Runtime on the CPU, 1 thread, batch 32,
interleaved with the same ORT fp32 file of the baseline (:func:`autocompress.latency.
measure_latency`, ``reference=``: latencies are ratios to it), its validation accuracy is
measured by us (``wl.task.metric``), and its deployed bytes are read on disk. The union table
marks each point's origin and status (on the joint front, dominated and by whom, or over the
budget), and the verdict says whether every point of Olive's front is dominated by ours on
(accuracy, latency, deployed bytes), or lists those that are not.

    python -m benchmarks.olive_comparison --minutes 6 --olive-python /work/olive-venv/bin/python

Install Olive in a venv of its own (never into this project's):
    python3 -m venv /work/olive-venv
    /work/olive-venv/bin/pip install torch==2.13.0 'olive-ai[cpu]==0.13.0' requests psutil
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import optuna
import torch

from autocompress.data import Inputs, TensorData, gather_inputs, input_batches
from autocompress.deploy import export_onnx, load_onnx
from autocompress.latency import LatencySettings, measure_latency
from autocompress.objective import CALIBRATION_ROWS
from autocompress.record import feasible_front, study_info
from autocompress.storage import STUDIES_DIR
from autocompress.study import (
    StudySettings,
    Target,
    artifact_dir,
    create_or_resume,
    load_study,
    open_storage,
    run_trials,
)
from autocompress.workload import LoadedWorkload, load_workload
from benchmarks.common import RESULTS, against_reference, write_results

T = TypeVar("T")

OLIVE_ENV = "AUTOCOMPRESS_OLIVE_PYTHON"
DRIVER = Path(__file__).resolve().parent / "olive_driver.py"
SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "default.yaml"
NAME = "olive_comparison"
METER = LatencySettings(min_block_seconds=0.05, max_blocks=30)
OURS, OLIVE = "autocompress", "olive"
_EPS = 1e-12

# --- dominance and the verdict (pure: no model, no Olive) -----------------------------------


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether ``a`` is at least as good as ``b`` on (accuracy up, latency down, bytes down)
    and strictly better on one."""
    ge = (
        a["accuracy"] >= b["accuracy"] - _EPS
        and a["latency"] <= b["latency"] + _EPS
        and a["bytes"] <= b["bytes"]
    )
    gt = (
        a["accuracy"] > b["accuracy"] + _EPS
        or a["latency"] < b["latency"] - _EPS
        or a["bytes"] < b["bytes"]
    )
    return ge and gt


def front(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point of ``points`` dominates."""
    return [p for p in points if not any(dominates(o, p) for o in points if o is not p)]


def _within_noise(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether ``a``'s latency lead over ``b`` is within twice the meter's spread of either."""
    cv = max(a.get("latency_cv") or 0.0, b.get("latency_cv") or 0.0)
    lead = (b["latency"] - a["latency"]) / b["latency"] if b["latency"] > 0 else 0.0
    return 0 < lead <= 2 * cv


def compare(
    ours: Sequence[dict[str, Any]],
    olive: Sequence[dict[str, Any]],
    baseline_accuracy: float,
    max_drop: float,
) -> dict[str, Any]:
    """Join two sides' points, mark each one's status and give the verdict.

    Args:
        ours: autocompress's points: dicts with ``name``, ``accuracy``, ``latency`` (a ratio to
            the common baseline or ms: the same unit on both sides) and ``bytes``; other keys
            are kept.
        olive: Olive's points, the same way (``olive_pareto``: Olive marked it on its front).
        baseline_accuracy: The baseline's validation accuracy (the common meter's).
        max_drop: The budget: a point is feasible when its accuracy is at least
            ``baseline_accuracy - max_drop``.

    Returns:
        ``rows`` (every point with ``origin``, ``feasible``, ``side_front``, ``joint_front``,
        ``dominated_by``, ``status``), ``ours_front`` and ``olive_front`` (names of each
        side's front: its feasible points no point of the same side dominates, plus for Olive
        any point Olive itself marked on its front), ``not_dominated`` (Olive front points no
        point of ours dominates), ``dominated`` (each other Olive front point with the best of
        ours that dominates it and the margins) and ``verdict`` (one sentence).
    """
    floor = baseline_accuracy - max_drop - _EPS
    rows = [{**p, "origin": OURS} for p in ours] + [{**p, "origin": OLIVE} for p in olive]
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        raise ValueError("point names must be unique across both sides")
    for r in rows:
        r["feasible"] = r["accuracy"] >= floor
    feasible = [r for r in rows if r["feasible"]]
    joint = {id(r) for r in front(feasible)}
    side_fronts = {
        origin: {id(r) for r in front([f for f in feasible if f["origin"] == origin])}
        for origin in (OURS, OLIVE)
    }
    for r in rows:
        r["side_front"] = id(r) in side_fronts[r["origin"]] or (
            r["origin"] == OLIVE and r["feasible"] and bool(r.get("olive_pareto"))
        )
        r["joint_front"] = id(r) in joint
        r["dominated_by"] = [o["name"] for o in feasible if o is not r and dominates(o, r)]
        if not r["feasible"]:
            r["status"] = f"over budget (accuracy < {floor + _EPS:.4f})"
        elif r["joint_front"]:
            r["status"] = "joint front"
        else:
            by_ours = [o for o in feasible if o["origin"] == OURS and dominates(o, r)]
            by = by_ours or [o for o in feasible if dominates(o, r)]
            shown = ", ".join(o["name"] for o in by[:3]) + (" ..." if len(by) > 3 else "")
            r["status"] = f"dominated by {shown}"
    ours_front = [r for r in rows if r["origin"] == OURS and r["side_front"]]
    olive_front = [r for r in rows if r["origin"] == OLIVE and r["side_front"]]
    not_dominated, dominated = [], []
    for r in olive_front:
        by = [o for o in ours_front if dominates(o, r)]
        if not by:
            not_dominated.append(r["name"])
            continue
        best = min(by, key=lambda o: (o["latency"], o["bytes"], -o["accuracy"]))
        dominated.append(
            {
                "olive": r["name"],
                "by": best["name"],
                "accuracy_gain": best["accuracy"] - r["accuracy"],
                "latency_ratio": best["latency"] / r["latency"] if r["latency"] else math.nan,
                "bytes_ratio": best["bytes"] / r["bytes"] if r["bytes"] else math.nan,
                "latency_within_noise": _within_noise(best, r),
            }
        )
    if not olive_front:
        verdict = "Olive's front is empty: none of its files is within the accuracy budget."
    elif not not_dominated:
        verdict = (
            "every point of Olive's front is dominated by ours on "
            "(accuracy, latency, deployed bytes)"
        )
    else:
        verdict = (
            f"{len(not_dominated)} of {len(olive_front)} points of Olive's front are not "
            f"dominated by ours on (accuracy, latency, deployed bytes): {', '.join(not_dominated)}"
        )
    return {
        "rows": rows,
        "ours_front": [r["name"] for r in ours_front],
        "olive_front": [r["name"] for r in olive_front],
        "not_dominated": not_dominated,
        "dominated": dominated,
        "verdict": verdict,
    }


def table(result: dict[str, Any]) -> str:
    """The union table in markdown, best accuracy first, then fastest."""
    lines = [
        "| origin | point | what | val accuracy | time / ORT fp32 | speed-up | ms | "
        "deployed bytes | front of its side | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(result["rows"], key=lambda r: (-r["accuracy"], r["latency"], r["bytes"]))
    for r in rows:
        ms = r.get("ms")
        flags = []
        if r.get("contended"):
            flags.append("contended")
        if r.get("stable") is False:
            flags.append("unstable")
        latency = f"{r['latency']:.3f}" + (f" ({', '.join(flags)})" if flags else "")
        lines.append(
            f"| {r['origin']} | {r['name']} | {str(r.get('what', '')).replace('|', ';')} | "
            f"{r['accuracy']:.4f} | {latency} | x{1 / r['latency']:.2f} | "
            f"{'' if ms is None else f'{ms:.3f}'} | {r['bytes']:,} | "
            f"{'yes' if r['side_front'] else ''} | {r['status']} |"
        )
    return "\n".join(lines) + "\n"


def verdict_lines(result: dict[str, Any]) -> str:
    """The verdict, then each Olive front point with the best of ours that dominates it."""
    lines = [f"**Verdict**: {result['verdict']}.", ""]
    for d in result["dominated"]:
        noise = (
            " (the latency lead is within the meter's noise)" if d["latency_within_noise"] else ""
        )
        lines.append(
            f"- {d['olive']} is dominated by {d['by']}: accuracy {d['accuracy_gain']:+.4f}, "
            f"latency x{d['latency_ratio']:.2f}, bytes x{d['bytes_ratio']:.2f}{noise}"
        )
    for name in result["not_dominated"]:
        lines.append(f"- {name}: **not dominated** by any point of our front")
    return "\n".join(lines) + "\n"


# --- the two searches -----------------------------------------------------------------------


def export_inputs(wl: LoadedWorkload, folder: Path) -> Path:
    """The baseline's ONNX file, the validation split and the calibration rows as ``.npy``.

    Olive calibrates on the same training rows as our int8 (the first ``CALIBRATION_ROWS``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "baseline-fp32.onnx"
    if not isinstance(wl.val, TensorData):
        raise SystemExit(
            "the Olive comparison needs a workload whose validation split is tensors "
            "(TensorData), not batches: Olive reads it as one .npy file"
        )
    export_onnx(wl.model, wl.example_input, model)
    np.save(folder / "val_x.npy", wl.val.x.numpy())
    np.save(folder / "val_y.npy", wl.val.y.numpy())
    calibration = torch.cat(input_batches(wl.train, CALIBRATION_ROWS))
    np.save(folder / "calib_x.npy", calibration.numpy())
    return model


def run_ours(
    wl: LoadedWorkload,
    study_name: str,
    storage: str,
    studies_dir: Path,
    seconds: float,
    threads: int,
    batch: int,
    max_drop: float,
    seed: int,
) -> dict[str, Any]:
    """A new study on ``cpu-onnxruntime`` for ``seconds`` (no trial starts after that)."""
    settings = StudySettings(
        workload="digits",
        space_text=SPACE.read_text(),
        space_source=str(SPACE),
        target=Target.parse("cpu-onnxruntime", threads=threads, batch_size=batch),
        max_metric_drop=max_drop,
        seed=seed,
    )
    store = open_storage(storage)
    if study_name in optuna.get_all_study_names(store):
        raise SystemExit(
            f"study {study_name!r} exists in {storage}: give a new --study for a fresh search "
            "of the same length, or --ours-study NAME to measure that one again"
        )
    study, settings, wl, info = create_or_resume(
        study_name, store, settings, studies_dir=studies_dir, workload=wl
    )
    started = time.perf_counter()
    result = run_trials(study, settings, wl, info, timeout=seconds, studies_dir=studies_dir)
    return {
        "study": study_name,
        "storage": storage,
        "wall_seconds": time.perf_counter() - started,
        "budget_seconds": seconds,
        "completed": result.completed,
        "failed": result.failed,
        "pruned": result.pruned,
        "stopped_because": result.stopped_because,
    }


def our_points(study_name: str, storage: str, studies_dir: Path) -> list[dict[str, Any]]:
    """The deployed files of the study's feasible front, with what each trial did."""
    study = load_study(study_name, storage)
    folder = artifact_dir(studies_dir, study)
    points = []
    for t in feasible_front(study):
        path = folder / f"trial-{t.number}.onnx"
        if not path.exists():
            continue
        points.append(
            {
                "name": f"ours#{t.number}",
                "path": str(path),
                "what": t.user_attrs.get("summary", ""),
                "deployed_kind": t.user_attrs.get("deployed_kind"),
                "study_values": list(t.values),
            }
        )
    return points


def olive_python(option: str | None) -> str:
    """The interpreter of Olive's venv: the option, else ``$AUTOCOMPRESS_OLIVE_PYTHON``."""
    python = option or os.environ.get(OLIVE_ENV)
    if not python:
        raise SystemExit(
            f"give --olive-python PATH or set {OLIVE_ENV} (the python of Olive's own venv)"
        )
    if not Path(python).exists():
        raise SystemExit(f"Olive's python {python} does not exist")
    return python


def run_olive(
    python: str,
    model: Path,
    data: Path,
    work: Path,
    seconds: float,
    threads: int,
    batch: int,
    max_drop: float,
    seed: int,
    extra: Sequence[str] = (),
) -> Path:
    """Olive's search in its own interpreter; returns its ``olive_candidates.json``."""
    # Olive runs in ``work``: every path it is given must not depend on our working directory.
    work, model, data = work.resolve(), model.resolve(), data.resolve()
    work.mkdir(parents=True, exist_ok=True)
    command = [
        python, str(DRIVER), "--model", str(model), "--data", str(data), "--work", str(work),
        "--budget", str(seconds), "--threads", str(threads), "--batch-size", str(batch),
        "--max-accuracy-drop", str(max_drop), "--seed", str(seed), *extra,
    ]  # fmt: skip
    log = work / "olive.log"
    env = {**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "PYTHONPATH": ""}
    with log.open("w") as out:
        done = subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
            timeout=seconds + 900,
            check=False,
        )
    result = work / "olive_candidates.json"
    if done.returncode != 0 or not result.exists():
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"Olive's driver failed (exit {done.returncode}); see {log}:\n{tail}")
    return result


def olive_points(candidates: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per model file Olive wrote, with the ORT session settings of its fastest
    evaluation by Olive's own meter (``olive_session``), and whether Olive put any of its
    evaluations on its front."""
    by_file: dict[str, dict[str, Any]] = {}
    for c in candidates["candidates"]:
        path = c.get("path")
        if not path or not Path(path).exists():
            continue
        latency = c["olive_metrics"].get("latency-avg", math.inf)
        kept = by_file.get(path)
        if kept is None or latency < kept["olive_latency_ms"]:
            by_file[path] = {
                "path": path,
                "olive_latency_ms": latency,
                "olive_accuracy": c["olive_metrics"].get("accuracy-accuracy_score"),
                "olive_session": (c.get("inference_settings") or {}).get("session_options") or {},
                "passes": c["passes"],
                "olive_pareto": bool(kept and kept["olive_pareto"]) or c["olive_pareto"],
            }
        else:
            kept["olive_pareto"] = kept["olive_pareto"] or c["olive_pareto"]
    points = []
    for i, p in enumerate(by_file.values()):
        quant: dict[str, Any] = next(
            (s["config"] for s in p["passes"] if "quantization" in s["pass"]), {}
        )
        what = describe_olive(quant, p["olive_session"])
        points.append({"name": f"olive#{i}", "what": what, **p})
    return points


def knobs_seen(candidates: dict[str, Any]) -> dict[str, list[Any]]:
    """Each pass setting that took more than one value in Olive's search, with its values."""
    values: dict[str, set[str]] = {}
    for c in candidates["candidates"]:
        for step in c["passes"]:
            for key, value in (step.get("config") or {}).items():
                if isinstance(value, dict) and "olive_parameter_type" in value:
                    continue  # a setting the step ignored (a static one in dynamic mode)
                values.setdefault(f"{step['pass']}.{key}", set()).add(json.dumps(value))
    return {k: [json.loads(v) for v in sorted(vs)] for k, vs in values.items() if len(vs) > 1}


def describe_olive(quant: dict[str, Any], session: dict[str, Any]) -> str:
    """Olive's quantization settings in a few words."""
    if quant.get("quant_mode") == "dynamic":
        words = [f"dynamic {quant.get('precision')}"]
    else:
        words = [
            f"static {quant.get('quant_format')} w:{quant.get('precision')} "
            f"a:{quant.get('activation_type')} {quant.get('calibrate_method')}"
        ]
    words += [k for k in ("per_channel", "reduce_range") if quant.get(k)]
    if quant.get("quant_preprocess"):
        words.append("preprocessed")
    level = session.get("graph_optimization_level")
    if level is not None:
        words.append(f"(Olive's session: ORT opt {level})")
    return " ".join(words)


# --- the common meter -----------------------------------------------------------------------


def deployed_bytes(path: str | os.PathLike[str]) -> int:
    """The file's bytes on disk, plus those of the external-data files it names."""
    import onnx

    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    seen = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in seen:
                    seen.add(entry.value)
                    total += (path.parent / entry.value).stat().st_size
    return total


def runner(
    path: str, threads: int, session: dict[str, Any] | None = None
) -> Callable[[Inputs], torch.Tensor]:
    """The file as a callable: :func:`autocompress.deploy.load_onnx` (all graph optimisations),
    or an ORT session with the given graph optimisation level and execution mode."""
    if not session or (
        session.get("graph_optimization_level") in (None, 99)
        and session.get("execution_mode") in (None, 0)
    ):
        return load_onnx(path, threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel(
        int(session.get("graph_optimization_level") or 99)
    )
    options.execution_mode = ort.ExecutionMode(int(session.get("execution_mode") or 0))
    options.log_severity_level = 3
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(inputs: Inputs) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {name: inputs.numpy()})[0])

    return run


def interleave(*sides: Sequence[T]) -> list[T]:
    """The points of both sides alternated, so drift in the machine's load hits both alike."""
    out: list[T] = []
    for i in range(max((len(s) for s in sides), default=0)):
        out += [s[i] for s in sides if i < len(s)]
    return out


def measure(
    wl: LoadedWorkload,
    baseline: Path,
    points: Sequence[dict[str, Any]],
    threads: int,
    batch: int,
    settings: LatencySettings = METER,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Accuracy, latency (ratio to ORT fp32 of ``baseline``, timed interleaved) and deployed
    bytes of every point's file; fills them into the points and returns the baseline's."""
    torch.set_num_threads(threads)
    settings = replace(settings, threads=threads)
    reference = load_onnx(baseline, threads)
    x = gather_inputs(wl.val, batch)
    base_ms = []
    for i, p in enumerate(points):
        run = runner(p["path"], threads, p.get("session"))
        p["accuracy"] = wl.task.metric(run, wl.val)
        lat = measure_latency(partial(run, x), settings, reference=lambda: reference(x))
        reference_ms, p["latency"] = against_reference(lat)
        p["latency_cv"] = lat.cv
        p["stable"], p["contended"] = lat.stable, lat.contended
        p["measured_ms"] = lat.median_ms
        p["bytes"] = deployed_bytes(p["path"])
        base_ms.append(reference_ms)
        progress(
            f"  [{i + 1}/{len(points)}] {p['name']}: acc {p['accuracy']:.4f} "
            f"x{1 / p['latency']:.2f} {p['bytes']:,} B"
        )
    base_median = float(np.median(base_ms)) if base_ms else math.nan
    for p in points:  # the ratio, in the baseline's median ms over the whole session
        p["ms"] = p["latency"] * base_median
    return {
        "path": str(baseline),
        "accuracy": wl.task.metric(reference, wl.val),
        "bytes": deployed_bytes(baseline),
        "median_ms": base_median,
    }


# --- the run --------------------------------------------------------------------------------


def loadavg() -> str:
    """``/proc/loadavg``'s first three fields (empty where there is none)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def markdown(payload: dict[str, Any]) -> str:
    """The results file in words: the settings, both searches, the table and the verdict."""
    s, ours, olive, base, result = (
        payload["settings"], payload["ours"], payload["olive"], payload["baseline"],
        payload["result"],
    )  # fmt: skip
    knobs = "; ".join(
        f"{k.split('.', 1)[1]} {'/'.join(str(v) for v in vs)}"
        for k, vs in (olive.get("knobs_seen") or {}).items()
    )
    return (
        "# autocompress vs Microsoft Olive on digits\n\n"
        f"`{payload['command']}`\n\n"
        f"Budget: {s['minutes']:g} min of search per side, one after the other; accuracy at "
        f"most {s['max_drop']} below the baseline on the validation split; ORT CPU, "
        f"{s['threads']} thread, batch {s['batch_size']}. Load average before / after: "
        f"{payload['load_before']} / {payload['load_after']} (a shared 2-core machine).\n\n"
        f"- Baseline (ORT fp32, the reference of every ratio): val accuracy "
        f"{base['accuracy']:.4f}, {base['bytes']:,} B, {base['median_ms']:.3f} ms per batch "
        "(median over the session).\n"
        f"- autocompress: study `{ours.get('study')}`, {ours.get('completed', '?')} trials "
        f"completed in {ours.get('wall_seconds', math.nan):.0f} s "
        f"({ours.get('stopped_because', 'reused')}); the {ours.get('n_files', '?')} files of its "
        f"feasible front measured, {len(result['ours_front'])} on its front under the common "
        "meter.\n"
        f"- Olive {olive.get('olive', '?')} (ORT {olive.get('onnxruntime', '?')}): "
        f"{olive.get('n_candidates', '?')} evaluated models in "
        f"{olive.get('wall_seconds', math.nan):.0f} s, {olive.get('n_files', '?')} distinct "
        f"files, all measured; {len(result['olive_front'])} on its front. Knobs its search "
        f"varied: {knobs or 'none'}.\n\n"
        + (
            "Olive's files ran with the ORT session settings its session tuning chose.\n\n"
            if s.get("olive_sessions")
            else "Every file ran with the same ORT session settings (all graph optimisations, "
            "sequential, 1 intra-op thread); \"Olive's session\" is what Olive's session "
            "tuning chose, not applied here.\n\n"
        )
        + "time / ORT fp32: the file's median over the baseline's, timed interleaved in the same "
        "run (lower is faster); ms = that ratio x the baseline's median. contended: the "
        "meter's thread waited for a CPU; unstable: its spread stayed above 5%. A side's "
        "front: its feasible points that no point of the same side dominates (for Olive, also "
        "any point Olive itself marked on its front).\n\n"
        + table(result)
        + "\n"
        + verdict_lines(result)
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="search time of each side")
    parser.add_argument("--olive-python", default=None, help=f"or ${OLIVE_ENV}")
    parser.add_argument("--study", default=None, help="name of our new study")
    parser.add_argument("--storage", default="sqlite:///studies/olive-comparison.db")
    parser.add_argument("--studies-dir", type=Path, default=STUDIES_DIR)
    parser.add_argument("--work", type=Path, default=None, help="exports and Olive's files")
    parser.add_argument("--ours-study", default=None, help="measure this study: no new search")
    parser.add_argument(
        "--olive-candidates", type=Path, default=None, help="an olive_candidates.json to reuse"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-accuracy-drop", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-session-tuning", action="store_true", help="Olive without it")
    parser.add_argument(
        "--olive-sessions",
        action="store_true",
        help="time Olive's files with the ORT session settings Olive chose (default: the "
        "common session of every file: all graph optimisations, sequential)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.work or args.studies_dir / "olive-comparison" / stamp
    seconds = args.minutes * 60
    python = None if args.olive_candidates else olive_python(args.olive_python)  # fail early
    load_before = loadavg()
    torch.set_num_threads(args.threads)
    wl = load_workload("digits", cache_dir=args.studies_dir / "baselines", seed=args.seed)
    baseline = export_inputs(wl, work / "inputs")

    if args.ours_study:
        ours_info: dict[str, Any] = {"study": args.ours_study, "storage": args.storage}
    else:
        name = args.study or f"digits-olive-{stamp}"
        print(f"autocompress: study {name} for {seconds:.0f} s ...", flush=True)
        ours_info = run_ours(
            wl, name, args.storage, args.studies_dir, seconds,
            args.threads, args.batch_size, args.max_accuracy_drop, args.seed,
        )  # fmt: skip
    ours = our_points(ours_info["study"], args.storage, args.studies_dir)
    study = load_study(ours_info["study"], args.storage)
    info = study_info(study)
    ours_info.setdefault("completed", sum(t.state.name == "COMPLETE" for t in study.trials))
    ours_info["settings"] = {k: v for k, v in info["settings"].items() if k != "space_text"}
    ours_info["n_files"] = len(ours)

    if args.olive_candidates:
        candidates_path = args.olive_candidates
    else:
        print(f"olive: search for {seconds:.0f} s ...", flush=True)
        extra = ["--no-session-tuning"] if args.no_session_tuning else []
        assert python is not None
        candidates_path = run_olive(
            python, baseline, work / "inputs", work / "olive",
            seconds, args.threads, args.batch_size, args.max_accuracy_drop, args.seed, extra,
        )  # fmt: skip
    candidates = json.loads(Path(candidates_path).read_text())
    olive = olive_points(candidates)
    for p in olive:
        p["session"] = p["olive_session"] if args.olive_sessions else None
    olive_info = {
        k: candidates.get(k) for k in ("olive", "onnxruntime", "wall_seconds", "budget_seconds")
    }
    quant = candidates["config"]["passes"]["quantization"][0]
    olive_info.update(
        n_candidates=len(candidates["candidates"]),
        n_files=len(olive),
        candidates_file=str(candidates_path),
        quantization_pass=quant["type"],
        session_tuning=candidates["config"]["passes"].get("session_params"),
        input_metrics=candidates.get("input_metrics"),
        knobs_seen=knobs_seen(candidates),
    )

    print(f"common meter: {len(ours)} of ours, {len(olive)} of Olive's ...", flush=True)
    base = measure(wl, baseline, interleave(ours, olive), args.threads, args.batch_size)
    result = compare(ours, olive, base["accuracy"], args.max_accuracy_drop)
    payload = {
        "command": "python -m benchmarks.olive_comparison " + " ".join(argv or sys.argv[1:]),
        "settings": {
            "minutes": args.minutes,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "max_drop": args.max_accuracy_drop,
            "seed": args.seed,
            "meter": METER.__dict__,
            "olive_sessions": args.olive_sessions,
        },
        "load_before": load_before,
        "load_after": loadavg(),
        "baseline": base,
        "ours": ours_info,
        "olive": olive_info,
        "result": result,
    }
    path = write_results(NAME, payload, args.out)
    (args.out / f"{NAME}.md").write_text(markdown(payload))
    print(table(result))
    print(verdict_lines(result))
    print(f"wrote {path} and {args.out / f'{NAME}.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
