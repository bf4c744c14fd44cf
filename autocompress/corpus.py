"""Unlabeled text for distillation: Python's standard library, read offline.

Recovering a pruned transformer by distillation (Minitron, Muralidharan et al. 2024) wants
far more text than a workload's labeled training split: the teacher labels it. The standard
library ships about 13 MB of Python outside its tests; :func:`stdlib_passages` reads its
docstrings, comment blocks and source, and :func:`topic_passages` the help topics of
:mod:`pydoc_data.topics` (files, docstrings and paragraphs found by
:mod:`autocompress.stdlib_text`), deterministically (modules in an order fixed by their names'
hashes, so a size cap samples the whole library rather than its first letters). A workload
keeps out the sources its validation and test data come from.

:class:`DistillData` holds the text tokenized once (cached on disk under a key made of the
tokenizer and the corpus's sha256) and yields shuffled batches of it;
:class:`CorpusTeacher` keeps the teacher's outputs on it in a memory-mapped file filled as
rows are first used, so a trial pays only for the rows it trains on, once per teacher.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import sys
import tokenize
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.data import Inputs, as_output, call_model
from autocompress.stdlib_text import clip, docstrings, paragraphs, stdlib_modules, stdlib_root

KINDS = ("docstring", "comment", "code", "topic")
# Folders not read, besides the tests (stdlib_text.TEST_FOLDERS): IDLE, an application's
# internals rather than a library's text.
SKIPPED_FOLDERS = ("idlelib",)
TEACHER_CACHE_BYTES = 1024**3  # teacher outputs above this are computed live
CORPUS_FORMAT = 1


@dataclass(frozen=True)
class Passage:
    """One piece of text and where it comes from.

    Attributes:
        source: Dotted module name (``json.decoder``) or ``topics:<name>`` for a help topic.
        kind: ``docstring``, ``comment``, ``code`` or ``topic``.
        text: The text.
    """

    source: str
    kind: str
    text: str


def _pieces(text: str, min_chars: int, max_chars: int) -> Iterator[str]:
    """The paragraphs of ``text``, each cut into pieces of at most ``max_chars`` at word
    boundaries; pieces under ``min_chars`` (headings, a paragraph's short tail) left out."""
    for paragraph in paragraphs(text):
        while paragraph and len(paragraph) >= min_chars:
            piece = clip(paragraph, max_chars)
            yield piece
            paragraph = paragraph[len(piece) :].strip()


def module_passages(
    name: str, source: str, min_chars: int = 80, max_chars: int = 1000
) -> list[Passage]:
    """A module's docstring paragraphs, comment blocks and top-level definitions' source.

    A module that does not parse (a template, another Python's syntax) gives nothing.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out = [
        Passage(name, "docstring", p)
        for doc in docstrings(tree, by_level=True)
        for p in _pieces(doc, min_chars, max_chars)
    ]
    comments: list[str] = []
    last = -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            text = tok.string.lstrip("#").strip()
            if tok.start[0] != last + 1 and comments:
                comments.append("")
            comments.append(text)
            last = tok.start[0]
    except (tokenize.TokenError, SyntaxError):
        pass
    out += [Passage(name, "comment", p) for p in _pieces("\n".join(comments), min_chars, max_chars)]
    lines = source.splitlines()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            end = node.end_lineno or node.lineno
            code = "\n".join(lines[node.lineno - 1 : end]).strip()
            if len(code) >= min_chars:
                out.append(Passage(name, "code", code[: 4 * max_chars]))
    return out


def _order(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _library(root: Path, cache_dir: Path | None) -> list[Passage]:
    """Every passage of every module, in the sampling order; cached per Python and folder
    (parsing the whole library takes a minute on a slow core)."""
    key = hashlib.sha256(f"{CORPUS_FORMAT}|{sys.version}|{root}".encode()).hexdigest()[:24]
    path = None if cache_dir is None else Path(cache_dir) / f"stdlib-passages-{key}.json"
    if path is not None and path.exists():
        try:
            return [Passage(*row) for row in json.loads(path.read_text(encoding="utf-8"))]
        except Exception:  # noqa: BLE001 - a bad cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    modules = stdlib_modules(root, skip=SKIPPED_FOLDERS)
    out: list[Passage] = []
    for name in sorted(modules, key=_order):
        if name == "encodings" or name.startswith("encodings."):
            continue  # codec tables: comments that list code points
        try:
            source = modules[name].read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        out += module_passages(name, source)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([[p.source, p.kind, p.text] for p in out]), encoding="utf-8")
        tmp.replace(path)
    return out


def excluded(name: str, modules: Iterable[str]) -> bool:
    """Whether module ``name`` is one of ``modules`` or inside one of them (a package)."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def stdlib_passages(
    kinds: Iterable[str] = ("docstring", "comment"),
    max_chars: int = 4_000_000,
    exclude: Iterable[str] = (),
    root: Path | None = None,
    cache_dir: Path | None = None,
) -> list[Passage]:
    """Passages of the standard library's modules, up to ``max_chars`` characters in all.

    Modules are taken whole, in the order of their names' sha256, until ``max_chars`` is
    reached: the same passages on every machine with the same Python.

    Args:
        kinds: Which of ``docstring``, ``comment`` and ``code`` to keep.
        max_chars: Stop once this many characters are collected.
        exclude: Dotted module (or package) names left out: the sources of a workload's
            validation and test data.
        root: The library's folder (default: the running Python's).
        cache_dir: Where the parsed library is kept between processes.

    Raises:
        ValueError: An unknown kind.
    """
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS[:3]]
    if unknown:
        raise ValueError(f"unknown passage kind {unknown[0]!r}; use docstring, comment or code")
    exclude = tuple(exclude)
    out: list[Passage] = []
    total, current = 0, ""
    for p in _library(root or stdlib_root(), cache_dir):
        if p.source != current:
            if total >= max_chars:
                break
            current = p.source
        if p.kind in kinds and not excluded(p.source, exclude):
            out.append(p)
            total += len(p.text)
    return out


def topic_passages(
    topics: Mapping[str, str], exclude: Callable[[str], bool] | None = None
) -> list[Passage]:
    """Paragraphs of help topics (``pydoc_data.topics``), those ``exclude`` accepts left out."""
    return [
        Passage(f"topics:{name}", "topic", p)
        for name in sorted(topics)
        if exclude is None or not exclude(name)
        for p in _pieces(topics[name], 80, 1000)
    ]


def corpus_sha256(passages: Iterable[Passage]) -> str:
    """sha256 over the passages' sources, kinds and texts, in order."""
    h = hashlib.sha256()
    for p in passages:
        h.update(f"{p.source}\x00{p.kind}\x00{p.text}\x01".encode())
    return h.hexdigest()


def _tensors_sha256(inputs: Inputs) -> str:
    h = hashlib.sha256()
    items = sorted(inputs.items()) if isinstance(inputs, Mapping) else [("", inputs)]
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def cached_tokens(
    passages: list[Passage],
    tokenizer_key: str,
    tokenize_fn: Callable[[list[str]], Inputs],
    cache_dir: Path | None,
) -> tuple[Inputs, str]:
    """``tokenize_fn`` of the passages' texts, computed once per tokenizer and corpus.

    Returns:
        The tokens and their key (sha256 of the tokenizer key and the corpus).
    """
    key = hashlib.sha256(
        f"{CORPUS_FORMAT}|{tokenizer_key}|{corpus_sha256(passages)}".encode()
    ).hexdigest()
    path = None if cache_dir is None else Path(cache_dir) / f"corpus-{key[:24]}.pt"
    if path is not None and path.exists():
        try:
            tokens = torch.load(path, weights_only=True)
            if isinstance(tokens, torch.Tensor | dict):
                return tokens, key
        except Exception:  # noqa: BLE001 - a bad cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    tokens = tokenize_fn([p.text for p in passages])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(tokens, tmp)
        tmp.replace(path)
    return tokens, key


def _check_inputs(inputs: Any) -> int:
    tensors = list(inputs.values()) if isinstance(inputs, Mapping) else [inputs]
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise ValueError("distill_data must be a tensor or a dict of tensors (rows of inputs)")
    rows = {len(t) for t in tensors}
    if len(rows) != 1 or 0 in rows:
        raise ValueError("distill_data: every tensor needs the same, non-zero number of rows")
    return rows.pop()


class DistillData:
    """Unlabeled inputs for distillation, separate from the labeled training split.

    Args:
        inputs: Rows of model inputs: a tensor ``[rows, ...]`` or a dict of such tensors
            (``input_ids`` and ``attention_mask`` for a tokenizer's output); or a function
            that returns them, called on first use (a corpus is read and tokenized only when
            a trial distils on it).
        key: Identifies the data: keys the teacher's cached outputs and the recovered
            students. Default: the sha256 of the inputs (required with a function).
        cache_dir: Where the teacher's outputs on it are kept; ``None``: in memory only.
        info: What the data is, in words.

    Raises:
        ValueError: Inputs that are not rows of tensors, or a function without a key.
    """

    def __init__(
        self,
        inputs: Inputs | Callable[[], Inputs],
        key: str = "",
        cache_dir: Path | None = None,
        info: str = "",
    ) -> None:
        self._inputs: Inputs | None = None
        self._content_sha256: str | None = None
        self._loader: Callable[[], Inputs] | None = None
        if callable(inputs) and not isinstance(inputs, torch.Tensor):
            if not key:
                raise ValueError("distill_data given as a function needs a key")
            self._loader = inputs
        else:
            _check_inputs(inputs)
            self._inputs = inputs
        self.key = key or _tensors_sha256(inputs)
        self.cache_dir = cache_dir
        self.info = info

    def with_cache_dir(self, cache_dir: Path | None) -> DistillData:
        """The same data, its teacher outputs kept under ``cache_dir``."""
        out = DistillData.__new__(DistillData)
        out.__dict__.update(self.__dict__)
        out.cache_dir = cache_dir
        return out

    @property
    def inputs(self) -> Inputs:
        """The rows (loaded on first use)."""
        if self._inputs is None:
            assert self._loader is not None  # noqa: S101 - one of the two is set
            inputs = self._loader()
            _check_inputs(inputs)
            self._inputs = inputs
        return self._inputs

    @property
    def content_sha256(self) -> str:
        """The sha256 of the rows themselves (loads them; computed once): keys what is cached
        from them across processes, so that a corpus that changed under the same ``key`` is
        never answered from another corpus's cache."""
        if self._content_sha256 is None:
            self._content_sha256 = _tensors_sha256(self.inputs)
        return self._content_sha256

    def __len__(self) -> int:
        inputs = self.inputs
        return len(next(iter(inputs.values()))) if isinstance(inputs, Mapping) else len(inputs)

    def rows(self, idx: torch.Tensor) -> Inputs:
        """Rows ``idx``; dict inputs with an ``attention_mask`` lose the padding columns
        every row of the batch has (masked out anyway: the same outputs, less work)."""
        if not isinstance(self.inputs, Mapping):
            return self.inputs[idx]
        batch = {k: v[idx] for k, v in self.inputs.items()}
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            width = max(1, int(mask.sum(dim=1).max()))
            batch = {k: v[:, :width] if v.dim() >= 2 else v for k, v in batch.items()}
        return batch

    def index_batches(self, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
        """``steps`` batches of row indices, each pass over the data in a seeded order."""
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator)
        at = 0
        for _ in range(steps):
            if at + batch_size > len(order):
                order, at = torch.randperm(len(self), generator=generator), 0
            yield order[at : at + batch_size]
            at += batch_size


def as_distill_data(value: Any, cache_dir: Path | None = None) -> DistillData | None:
    """A workload's ``distill_data`` as :class:`DistillData` (``None`` stays ``None``).

    Raises:
        ValueError: Not a tensor, a dict of tensors or :class:`DistillData`.
    """
    if value is None or isinstance(value, DistillData):
        if isinstance(value, DistillData) and value.cache_dir is None and cache_dir is not None:
            return value.with_cache_dir(cache_dir)
        return value
    return DistillData(value, cache_dir=cache_dir, info="given by the workload")


def weights_sha256(model: nn.Module) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes, bytes)."""
    from autocompress.hashing import state_sha256

    return state_sha256(model.state_dict())


class CorpusTeacher:
    """The teacher's outputs on :class:`DistillData` rows, computed once per row.

    Kept in a memory-mapped ``.npy`` file (with a file of flags saying which rows are done)
    under the data's cache folder, keyed by the rows' content and the teacher's weights; filled as
    rows are first asked for. Outputs larger than ``budget_bytes`` in all (an LM's logits
    over its vocabulary) are not kept: they are computed live.
    """

    def __init__(
        self,
        teacher: nn.Module,
        data: DistillData,
        budget_bytes: int = TEACHER_CACHE_BYTES,
        teacher_key: str | None = None,
    ) -> None:
        self.teacher = teacher
        self.data = data
        self.values: np.ndarray | None = None
        self.done: np.ndarray | None = None
        self.computed = 0  # rows the teacher ran on (for tests and reports)
        one = self._live(data.rows(torch.arange(1)))
        row_shape = tuple(one.shape[1:])
        if isinstance(data.inputs, Mapping) and len(row_shape) > 1:
            return  # per-token outputs of trimmed batches vary in length: computed live
        if one.numel() * 4 * len(data) > budget_bytes:
            return
        shape = (len(data), *row_shape)
        if data.cache_dir is None:
            self.values = np.zeros(shape, dtype=np.float32)
            self.done = np.zeros(len(data), dtype=np.uint8)
            return
        key = hashlib.sha256(
            f"{data.content_sha256}|{teacher_key or weights_sha256(teacher)}|{shape}".encode()
        ).hexdigest()[:24]
        folder = Path(data.cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        values, done = folder / f"teacher-{key}.npy", folder / f"teacher-{key}.done.npy"
        for path, dtype, dims in ((values, np.float32, shape), (done, np.uint8, (len(data),))):
            if path.exists():
                try:
                    arr = np.load(path, mmap_mode="r+")
                    if arr.shape == dims and arr.dtype == dtype:
                        continue
                except Exception:  # noqa: BLE001 - a bad file is made again
                    pass
                path.unlink(missing_ok=True)
                (done if path == values else values).unlink(missing_ok=True)
            np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=dims).flush()
        self.values = np.load(values, mmap_mode="r+")
        self.done = np.load(done, mmap_mode="r+")

    def _live(self, inputs: Inputs) -> torch.Tensor:
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            with torch.inference_mode():
                return as_output(call_model(self.teacher, inputs)).float().clone()
        finally:
            self.teacher.train(was_training)

    @property
    def cached(self) -> bool:
        """Whether outputs are kept (else every call runs the teacher)."""
        return self.values is not None

    def outputs(self, idx: torch.Tensor) -> torch.Tensor:
        """The teacher's outputs on rows ``idx`` (in that order)."""
        if self.values is None or self.done is None:
            self.computed += len(idx)
            return self._live(self.data.rows(idx))
        rows = idx.numpy()
        missing = rows[self.done[rows] == 0]
        if len(missing):
            missing = np.unique(missing)
            out = self._live(self.data.rows(torch.from_numpy(missing)))
            self.computed += len(missing)
            self.values[missing] = out.numpy()
            self.done[missing] = 1
            for array in (self.values, self.done):
                if isinstance(array, np.memmap):
                    array.flush()
        return torch.from_numpy(np.array(self.values[rows]))


def describe(passages: list[Passage]) -> str:
    """Counts and sizes of a corpus, for a workload's info."""
    chars: dict[str, int] = {}
    for p in passages:
        chars[p.kind] = chars.get(p.kind, 0) + len(p.text)
    sources = len({p.source for p in passages})
    parts = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(chars.items()))
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (
        f"{len(passages)} passages of Python {py}'s standard library from {sources} "
        f"sources: {parts}"
    )
