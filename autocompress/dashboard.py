"""optuna-dashboard on a study's storage: feasibility it can see, a note per trial, artifacts.

optuna-dashboard 0.21 reads a trial's constraints only from the old system attribute
``constraints`` (a list); Optuna 5's ``trial.set_constraint(key, value)`` stores
``constraints:<key>`` instead, which the dashboard ignores, so infeasible trials would look
feasible on its Pareto front. :func:`record_constraint` writes both forms: Optuna reads the old
list under the keys ``"0"``, ``"1"``, ... which never collide with a named key, and the values
are the same, so Optuna's feasibility (``best_trials``, :func:`~autocompress.study.feasible_front`)
is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from torch import nn

from autocompress.steps.prune import prunable_layers

ARTIFACTS = "artifacts"  # per-study artifact directory: studies/<study>/artifacts
LEGACY_CONSTRAINTS_KEY = "constraints"  # the list form optuna-dashboard 0.21 reads
_NEW_CONSTRAINT_PREFIX = "constraints:"


def artifact_dir(studies_dir: Path, study_name: str) -> Path:
    """Where a study's artifacts (e.g. per-trial recipes) are stored."""
    return Path(studies_dir) / study_name / ARTIFACTS


def record_constraint(trial: optuna.Trial, key: str, value: float) -> None:
    """Set a constraint so that Optuna 5 and optuna-dashboard 0.21 both see it.

    Also records the user attribute ``feasible`` (all constraints <= 0), a column in the
    dashboard's trial table.

    Args:
        trial: The running trial.
        key: The constraint's name, e.g. ``accuracy_drop``.
        value: Feasible when ``<= 0``.
    """
    trial.set_constraint(key, value)
    attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    values = [v for k, v in sorted(attrs.items()) if k.startswith(_NEW_CONSTRAINT_PREFIX)]
    trial.storage.set_trial_system_attr(trial._trial_id, LEGACY_CONSTRAINTS_KEY, values)
    trial.set_user_attr("feasible", all(v <= 0 for v in values))


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels (conv) or features (linear) of each prunable layer, by module name."""
    return {
        name: m.out_features if isinstance(m, nn.Linear) else m.out_channels
        for name, m in prunable_layers(model)
    }


def _pct_change(value: float, base: float) -> str:
    return f"{(value - base) / base:+.1%}" if base else ""


def _times(ratio: float, better: str, worse: str) -> str:
    return f"{ratio:.2f}x {better}" if ratio >= 1 else f"{1 / ratio:.2f}x {worse}"


def _config_in_words(config: dict[str, Any]) -> list[str]:
    p, f, q, d = config["prune"], config["finetune"], config["quantize"], config.get("distill")
    words = []
    if p["method"] == "structured":
        words.append(f"Structured pruning removes {p['amount']:.0%} of each layer's channels.")
    elif p["method"] == "unstructured":
        words.append(f"Unstructured pruning zeroes {p['amount']:.0%} of all weights.")
    else:
        words.append("No pruning.")
    if f["epochs"]:
        kd = (
            f", distilled from the baseline (T={d['temperature']:.1f}, alpha={d['alpha']:.2f})"
            if d
            else ""
        )
        words.append(
            f"Fine-tuned {f['epochs']} epoch(s) with {f['optimizer']}, lr {f['lr']:.1e}, "
            f"{f['schedule']} schedule{kd}."
        )
    else:
        words.append("No fine-tuning.")
    bits = q["weight_bits"]
    if bits == 32:
        words.append("Weights stay float32.")
    elif bits == 16:
        words.append("Weights stored as float16.")
    else:
        edges = " (first and last layer at 8 bits)" if q.get("keep_edges_8bit") and bits < 8 else ""
        words.append(f"Weights {bits}-bit {q['granularity'].replace('_', '-')}{edges}.")
    if q.get("int8_activations"):
        words.append("Runs with int8 activations and kernels.")
    return words


def trial_note(
    number: int,
    user_attrs: dict[str, Any],
    values: tuple[float, float, float],
    baseline: dict[str, Any],
    max_accuracy_drop: float,
    baseline_widths: dict[str, int] | None = None,
) -> str:
    """A short markdown note on one trial: its configuration, its layers, its result.

    Args:
        number: The trial number.
        user_attrs: The trial's user attributes (``config``, ``summary``, ``channels``,
            ``weight_bits``, ``sparsity``, ...).
        values: Accuracy, latency (ms), size (KB).
        baseline: The study's baseline record.
        max_accuracy_drop: The accuracy budget.
        baseline_widths: Output channels of each layer of the baseline (:func:`layer_widths`).
    """
    acc, lat, size = values
    drop = baseline["accuracy"] - acc
    feasible = drop <= max_accuracy_drop
    verdict = (
        "feasible"
        if feasible
        else f"**INFEASIBLE**: accuracy drop {drop * 100:.2f} pt > budget "
        f"{max_accuracy_drop * 100:.2f} pt"
    )
    lines = [f"## Trial {number}: {verdict}", ""]
    if user_attrs.get("summary"):
        lines += [f"`{user_attrs['summary']}`", ""]
    if user_attrs.get("config"):
        lines += [" ".join(_config_in_words(user_attrs["config"])), ""]
    lines += [
        "| | accuracy | latency ms | size KB |",
        "|---|---|---|---|",
        f"| baseline | {baseline['accuracy']:.4f} | {baseline['latency_ms']:.3f} "
        f"| {baseline['size_kb']:.1f} |",
        f"| trial {number} | {acc:.4f} ({-drop * 100 + 0.0:+.2f} pt) | {lat:.3f} "
        f"({_times(baseline['latency_ms'] / lat, 'faster', 'slower')}) | {size:.1f} "
        f"({_times(baseline['size_kb'] / size, 'smaller', 'larger')}) |",
        "",
    ]
    lines += _layer_table(
        user_attrs.get("channels") or {}, user_attrs.get("weight_bits") or {}, baseline_widths
    )
    facts = []
    if "sparsity" in user_attrs:
        facts.append(f"sparsity {user_attrs['sparsity']:.1%}")
    if "effective_bits" in user_attrs:
        facts.append(f"effective bits {user_attrs['effective_bits']:.1f}")
    if "params" in user_attrs:
        change = _pct_change(user_attrs["params"], baseline.get("params", 0))
        facts.append(f"params {user_attrs['params']:,} ({change})")
    if "macs" in user_attrs:
        facts.append(f"MACs {user_attrs['macs']:,}")
    if facts:
        lines += [", ".join(facts) + ".", ""]
    lines += [f"- {n}" for n in user_attrs.get("notes") or []]
    return "\n".join(lines).rstrip() + "\n"


def _layer_table(
    channels: dict[str, int], weight_bits: dict[str, int], widths: dict[str, int] | None
) -> list[str]:
    bits_by_layer = {
        k.removesuffix(".weight").removesuffix("weight"): b for k, b in weight_bits.items()
    }
    layers = list(dict.fromkeys([*(widths or {}), *channels, *bits_by_layer]))
    if not layers:
        return []
    rows = ["| layer | channels kept | weight bits |", "|---|---|---|"]
    for name in layers:
        kept = channels.get(name, (widths or {}).get(name))
        total = (widths or {}).get(name)
        if kept is None:
            kept_text = "?"
        elif total:
            kept_text = f"{kept} / {total} ({kept / total:.0%})"
        else:
            kept_text = str(kept)
        rows.append(f"| `{name or '(model)'}` | {kept_text} | {bits_by_layer.get(name, 32)} |")
    return [*rows, ""]


def save_trial_note(
    trial: optuna.Trial,
    values: tuple[float, float, float],
    baseline: dict[str, Any],
    max_accuracy_drop: float,
    baseline_model: nn.Module | None = None,
) -> None:
    """Write :func:`trial_note` as the trial's note in optuna-dashboard (call after measuring)."""
    from optuna_dashboard import save_note

    widths = layer_widths(baseline_model) if baseline_model is not None else None
    attrs = trial.storage.get_trial(trial._trial_id).user_attrs
    save_note(
        trial,
        trial_note(trial.number, attrs, values, baseline, max_accuracy_drop, widths),
    )


class StudiesArtifactStore:
    """An Optuna artifact store over every study's ``artifacts`` directory.

    The dashboard shows all studies of a storage, each with its artifacts under
    ``studies/<study>/artifacts``; this store reads an artifact from whichever of them has it
    (the home study's first) and writes uploads to the home study's directory.
    """

    def __init__(self, studies_dir: Path, home: str | None = None) -> None:
        self.studies_dir = Path(studies_dir)
        self.home = artifact_dir(self.studies_dir, home) if home else self.studies_dir / ARTIFACTS

    def _stores(self) -> Iterator[FileSystemArtifactStore]:
        yield FileSystemArtifactStore(self.home)
        for d in sorted(self.studies_dir.glob(f"*/{ARTIFACTS}")):
            if d != self.home:
                yield FileSystemArtifactStore(d)

    def open_reader(self, artifact_id: str) -> IO[bytes]:
        """Open the artifact for reading, from the first directory that has it."""
        for store in self._stores():
            try:
                return store.open_reader(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} not found under {self.studies_dir}")

    def write(self, artifact_id: str, content_body: IO[bytes]) -> None:
        """Store an upload in the home study's directory."""
        self.home.mkdir(parents=True, exist_ok=True)
        FileSystemArtifactStore(self.home).write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        """Remove the artifact from the directory that has it."""
        for store in self._stores():
            try:
                return store.remove(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} not found under {self.studies_dir}")


def dashboard_app(
    storage: optuna.storages.BaseStorage, studies_dir: Path, study_name: str | None = None
) -> Any:
    """optuna-dashboard's WSGI app on ``storage`` with the studies' artifacts."""
    import optuna_dashboard

    return optuna_dashboard.wsgi(
        storage, artifact_store=StudiesArtifactStore(studies_dir, study_name)
    )


def study_url(host: str, port: int, study: optuna.Study | None = None) -> str:
    """The dashboard's address, at the study's page when one is given."""
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}/dashboard"
    return f"{base}/studies/{study._study_id}" if study is not None else base


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the browser's many polling requests would drown the terminal


def make_dashboard_server(app: Any, host: str = "127.0.0.1", port: int = 8080) -> WSGIServer:
    """A WSGI server for ``app`` (call ``serve_forever``); port 0 picks a free one."""
    return make_server(host, port, app, handler_class=_QuietHandler)
