"""Microsoft Olive's side of ``benchmarks/olive_comparison.py``: run ONLY under Olive's own venv.

Builds an Olive workflow in Python: the input model is an ONNX file (the digits baseline,
exported by autocompress), the passes are ONNX Runtime quantization (Olive's own search space
over static / dynamic mode, QDQ / QOperator format, MinMax / Entropy / Percentile calibration,
per-channel, reduce_range, int8 / uint8, quantization pre-processing) followed by ONNX Runtime
session-parameter tuning, the evaluator is accuracy on our validation split (``.npy`` files,
read by the data components registered here) plus latency, with a 1-point max-degradation goal
on accuracy, and the search is Olive's Optuna TPE sampler under a time budget.

Writes ``<work>/olive_candidates.json``: every model Olive produced (its file, the pass
settings that made it, Olive's own metrics, whether Olive put it on its Pareto front) and the
run's wall time. Olive's footprint and run history stay in ``<work>/output``.

    /work/olive-venv/bin/python benchmarks/olive_driver.py --data DIR --work DIR --budget 360
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
# Run as a script, this file's folder comes first on sys.path, where benchmarks/transformers.py
# would shadow the transformers package that Olive imports.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]

from olive.data.registry import Registry  # noqa: E402

# --- data components (the driver is its own user_script) ------------------------------------


class _NpyDataset:
    """``({input_name: x[i]}, y[i])`` items from ``.npy`` files (labels are 0 when absent)."""

    def __init__(self, x_path: str, y_path: str | None, input_name: str) -> None:
        self.x = np.load(x_path).astype(np.float32)
        self.y = np.load(y_path).astype(np.int64) if y_path else np.zeros(len(self.x), np.int64)
        self.input_name = input_name

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[dict[str, np.ndarray], np.int64]:
        return {self.input_name: self.x[i]}, self.y[i]


@Registry.register_dataset("autocompress_npy_dataset")
def npy_dataset(
    data_dir: str, x_file: str, y_file: str | None = None, input_name: str = "input"
) -> _NpyDataset:
    """The split saved by olive_comparison.py as ``<data_dir>/<x_file>`` (and ``<y_file>``)."""
    y_path = str(Path(data_dir) / y_file) if y_file else None
    return _NpyDataset(str(Path(data_dir) / x_file), y_path, input_name)


@Registry.register_post_process("autocompress_argmax")
def argmax_post_process(output: Any, **kwargs: Any) -> Any:
    """Class predictions from the logits (the accuracy metric compares them with the labels)."""
    return output.argmax(dim=-1)


# --- the workflow ---------------------------------------------------------------------------


def _data_config(name: str, data: Path, x_file: str, y_file: str | None, batch: int) -> dict:
    return {
        "name": name,
        "user_script": str(Path(__file__).resolve()),
        "load_dataset_config": {
            "type": "autocompress_npy_dataset",
            "params": {"data_dir": str(data), "x_file": x_file, "y_file": y_file},
        },
        "post_process_data_config": {"type": "autocompress_argmax"},
        "dataloader_config": {"params": {"batch_size": batch}},
    }


def workflow_config(
    model: Path,
    data: Path,
    work: Path,
    budget_s: float,
    *,
    threads: int = 1,
    batch: int = 32,
    max_drop: float = 0.01,
    num_classes: int = 10,
    quant_pass: str = "OnnxQuantization",
    session_tuning: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Olive's run config: quantization search, accuracy goal, latency, TPE under a time budget."""
    session = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    passes: dict[str, list[dict[str, Any]]] = {
        # Every knob left unset is searched over Olive's own defaults (``search_defaults``):
        # quant_mode (OnnxQuantization only), quant_format, calibrate_method, per_channel,
        # reduce_range, precision / activation_type, quant_preprocess.
        "quantization": [{"type": quant_pass, "config": {"data_config": "calibration"}}]
    }
    if session_tuning:
        passes["session_params"] = [
            {
                "type": "OrtSessionParamsTuning",
                "config": {
                    "data_config": "latency",
                    "providers_list": ["CPUExecutionProvider"],
                    # the protocol's thread count, fixed; ORT's other session knobs searched
                    "intra_thread_num_list": [threads],
                    "inter_thread_num_list": [1],
                    "execution_mode_list": [0, 1],
                    "opt_level_list": [0, 1, 2, 99],
                },
            }
        ]
    return {
        "input_model": {
            "type": "ONNXModel",
            "config": {
                "model_path": str(model),
                "inference_settings": {"session_options": session},
            },
        },
        "systems": {
            "local": {
                "type": "LocalSystem",
                "accelerators": [
                    {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}
                ],
            }
        },
        "data_configs": [
            _data_config("validation", data, "val_x.npy", "val_y.npy", batch),
            _data_config("latency", data, "val_x.npy", "val_y.npy", batch),
            _data_config("calibration", data, "calib_x.npy", None, batch),
        ],
        "evaluators": {
            "common": {
                # A type must be named: Olive 0.13 under pydantic 2.14 fails on ``"type": None``
                # while looking for file resources in the config.
                "type": "OnnxEvaluator",
                "metrics": [
                    {
                        "name": "accuracy",
                        "type": "accuracy",
                        "data_config": "validation",
                        "sub_types": [
                            {
                                "name": "accuracy_score",
                                "priority": 1,
                                "goal": {"type": "max-degradation", "value": max_drop},
                                "metric_config": {
                                    "task": "multiclass",
                                    "num_classes": num_classes,
                                },
                            }
                        ],
                    },
                    {
                        "name": "latency",
                        "type": "latency",
                        "data_config": "latency",
                        "sub_types": [{"name": "avg", "priority": 2}],
                    },
                    {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "bytes"}]},
                ],
            }
        },
        "passes": passes,
        "search_strategy": {
            "execution_order": "joint",
            "sampler": "tpe",
            "sampler_config": {"seed": seed},
            "max_time": int(budget_s),
        },
        "host": "local",
        "target": "local",
        "evaluator": "common",
        "evaluate_input_model": True,
        "cache_dir": str(work / "cache"),
        "clean_cache": True,
        "output_dir": str(work / "output"),
        "log_severity_level": 1,
    }


def patch_footprint_update() -> None:
    """Work around an Olive 0.13 bug that fails every search step whose first pass is a cache hit.

    ``Engine._run_pass`` records a cached run with ``footprint.record(model_config=...)`` on a
    node that exists already, and ``FootprintNode.update`` then sets the attribute by its alias
    (the field is ``model_config_data``), which pydantic 2 refuses ("object has no field
    model_config"). In a joint search with session tuning, every quantization setting met again
    with other session settings is such a step. The patch maps the alias to the field.
    """
    from olive.engine.footprint import FootprintNode

    original = FootprintNode.update
    if getattr(original, "_autocompress_patch", False):
        return

    def update(self: Any, **kwargs: Any) -> None:
        if "model_config" in kwargs:
            kwargs["model_config_data"] = kwargs.pop("model_config")
        original(self, **kwargs)

    update._autocompress_patch = True  # type: ignore[attr-defined]
    FootprintNode.update = update  # type: ignore[method-assign]


def _metrics(node: dict[str, Any]) -> dict[str, float]:
    value = (node.get("metrics") or {}).get("value") or {}
    return {key: float(item["value"]) for key, item in value.items()}


def _model_file(config: dict | None) -> str | None:
    """The ``.onnx`` file of a footprint node's model config."""
    inner = (config or {}).get("config", {})
    path = inner.get("model_path")
    if not path:
        return None
    path = Path(path)
    if path.is_dir():
        name = inner.get("onnx_file_name")
        found = [path / name] if name else sorted(path.glob("*.onnx"))
        path = found[0] if found else path
    return str(path)


def _chain(nodes: dict[str, dict[str, Any]], model_id: str) -> list[dict[str, Any]]:
    """The passes that made ``model_id``, first pass first, each with the settings it ran with."""
    passes = []
    while model_id in nodes and nodes[model_id].get("parent_model_id") is not None:
        node = nodes[model_id]
        config = dict(node.get("pass_run_config") or {})
        for key in ("data_config", "user_script", "script_dir"):
            config.pop(key, None)
        passes.append({"pass": node.get("from_pass"), "config": config})
        model_id = node["parent_model_id"]
    return passes[::-1]


def candidates(footprint: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every evaluated model of the search (the input model excluded), in the order produced.

    Args:
        footprint: Olive's ``footprint.json``: nodes by model id.
    """
    rows = []
    for model_id, node in footprint.items():
        if node.get("parent_model_id") is None:
            continue
        metrics = _metrics(node)
        if not metrics:
            continue  # an intermediate model: Olive evaluates the last model of a chain
        config = node.get("model_config_data") or node.get("model_config")
        rows.append(
            {
                "model_id": model_id,
                "from_pass": node.get("from_pass"),
                "path": _model_file(config),
                "olive_metrics": metrics,
                "olive_pareto": bool(node.get("is_pareto_frontier")),
                "olive_goals_met": bool((node.get("metrics") or {}).get("if_goals_met")),
                "inference_settings": (config or {}).get("config", {}).get("inference_settings"),
                "passes": _chain(footprint, model_id),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the baseline's .onnx file")
    parser.add_argument("--data", type=Path, required=True, help="folder of val_*.npy, calib_x")
    parser.add_argument("--work", type=Path, required=True, help="Olive's cache and outputs")
    parser.add_argument("--budget", type=float, required=True, help="search seconds (max_time)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-accuracy-drop", type=float, default=0.01)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--quant-pass", default="OnnxQuantization")
    parser.add_argument("--no-session-tuning", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import olive
    import onnxruntime
    from olive.workflows import run as olive_run

    args.work.mkdir(parents=True, exist_ok=True)
    config = workflow_config(
        args.model.resolve(),
        args.data.resolve(),
        args.work.resolve(),
        args.budget,
        threads=args.threads,
        batch=args.batch_size,
        max_drop=args.max_accuracy_drop,
        num_classes=args.num_classes,
        quant_pass=args.quant_pass,
        session_tuning=not args.no_session_tuning,
        seed=args.seed,
    )
    (args.work / "olive_config.json").write_text(json.dumps(config, indent=2))
    patch_footprint_update()
    started = time.perf_counter()
    olive_run(config)
    wall = time.perf_counter() - started
    footprint = json.loads((args.work / "output" / "footprint.json").read_text())
    inputs = [n for n in footprint.values() if n.get("parent_model_id") is None]
    result = {
        "olive": olive.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": sys.version.split()[0],
        "wall_seconds": wall,
        "budget_seconds": args.budget,
        "config": config,
        "input_metrics": _metrics(inputs[0]) if inputs else {},
        "candidates": candidates(footprint),
    }
    out = args.work / "olive_candidates.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"olive: {len(result['candidates'])} candidates in {wall:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
