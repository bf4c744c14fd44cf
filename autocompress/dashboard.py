"""optuna-dashboard on a study's storage, with every study's artifacts (per-trial recipes).

Feasibility and per-trial notes are written by each trial (:mod:`autocompress.trial_notes`);
this module serves them. The "Best Trials" of an autocompress study are its front
(:func:`autocompress.record.front_of`: feasible, better than the baseline somewhere, not
dominated): optuna-dashboard 0.21 computes them itself, ignoring constraints, so an
infeasible trial (accuracy 0.13) was listed; its front function is replaced by ours for the
studies this app serves.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from autocompress.record import ATTR, front_of, normalize_info

ARTIFACTS = "artifacts"  # per-study artifact directory: studies/<study>-<uid>/artifacts


class StudiesArtifactStore:
    """An Optuna artifact store over every study's ``artifacts`` directory.

    The dashboard shows all studies of a storage, each with its artifacts under
    ``studies/<study>/artifacts``; this store reads an artifact from whichever of them has it
    (the home study's first) and writes uploads to the home study's directory.
    """

    def __init__(self, studies_dir: Path, home: Path | None = None) -> None:
        self.studies_dir = Path(studies_dir)
        self.home = Path(home) / ARTIFACTS if home else self.studies_dir / ARTIFACTS

    def _stores(self) -> Iterator[FileSystemArtifactStore]:
        yield FileSystemArtifactStore(self.home)
        for d in sorted(self.studies_dir.glob(f"*/{ARTIFACTS}")):
            if d != self.home:
                yield FileSystemArtifactStore(d)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """Open the artifact for reading, from the first directory that has it."""
        for store in self._stores():
            try:
                return store.open_reader(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} not found under {self.studies_dir}")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
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
    storage: optuna.storages.BaseStorage,
    studies_dir: Path,
    home: Path | None = None,
    allow_edits: bool = False,
) -> Any:
    """optuna-dashboard's WSGI app on ``storage`` with the studies' artifacts (``home``: the
    folder of the study opened, where uploads go).

    Read-only unless ``allow_edits``: the dashboard has no authentication, and one click
    there deletes a study, its artifacts, or marks trials failed.
    """
    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage, artifact_store=StudiesArtifactStore(studies_dir, home))
    app = with_our_front(app, storage)
    return app if allow_edits else read_only(app)


_serving = threading.local()  # the storage of the request being answered on this thread


def with_our_front(app: Any, storage: optuna.storages.BaseStorage) -> Any:
    """Wrap optuna-dashboard's WSGI app so that its "Best Trials" of an autocompress study are
    :func:`autocompress.record.front_of`, the front every other verb shows."""
    from optuna_dashboard import _app

    original = getattr(_app, "get_pareto_front_trials", None)
    if original is None:
        return app  # another optuna-dashboard: its own best trials
    if not getattr(original, "autocompress", False):
        _app.get_pareto_front_trials = _front_for(original)

    def serve(environ: dict[str, Any], start_response: Any) -> Any:
        match = _STUDY_PAGE.fullmatch(str(environ.get("PATH_INFO", "")))
        _serving.study = (storage, int(match[1])) if match else None
        try:
            return app(environ, start_response)
        finally:
            _serving.study = None

    return serve


_STUDY_PAGE = re.compile(r"/api/studies/(\d+)/?")  # the request that lists best trials


def _front_for(original: Any) -> Any:
    def front(trials: Sequence[FrozenTrial], directions: Sequence[Any]) -> list[FrozenTrial]:
        serving = getattr(_serving, "study", None)
        if serving is not None:
            storage, study_id = serving
            record = storage.get_study_user_attrs(study_id).get(ATTR)
            if isinstance(record, dict):  # an autocompress study
                return front_of(normalize_info(record), list(trials))
        return list(original(trials, directions))

    front.autocompress = True  # type: ignore[attr-defined]
    return front


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_REFUSAL = json.dumps(
    {
        "reason": "this dashboard is read-only: nothing was changed; restart it with "
        "`autocompress dashboard --allow-edits` to edit studies"
    }
).encode()
_MAX_DRAINED = 1 << 20  # request body bytes read (and dropped) before refusing


def read_only(app: Any) -> Any:
    """Wrap a WSGI app so that any request but GET, HEAD or OPTIONS gets 403 and never
    reaches it (the JSON ``reason`` is what optuna-dashboard's pages show)."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD", "GET").upper() in READ_METHODS:
            return app(environ, start_response)
        _drain(environ)
        start_response(
            "403 Forbidden",
            [("Content-Type", "application/json"), ("Content-Length", str(len(_REFUSAL)))],
        )
        return [_REFUSAL]

    return guarded


def _drain(environ: dict[str, Any]) -> None:
    """Read the unread body (up to 1 MiB), so the client sees the 403, not a reset."""
    try:
        length = min(int(environ.get("CONTENT_LENGTH") or 0), _MAX_DRAINED)
        while length > 0:
            chunk = environ["wsgi.input"].read(min(length, 65536))
            if not chunk:
                break
            length -= len(chunk)
    except (ValueError, OSError, KeyError):
        pass


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
