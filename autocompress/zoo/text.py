"""A text corpus that ships with Python, split by document, and a tokenizer trained on it.

The corpus is :mod:`pydoc_data.topics` (read by :func:`autocompress.stdlib_text.help_topics`):
the 79 pages of the language reference that ``help()`` shows (465k characters on Python 3.11;
other Python versions ship other text, so a baseline trained on one is retrained on another).
Whole documents go to one split only. The tokenizer is a byte-level BPE (the ``tokenizers``
library, installed with ``transformers``) trained on the training documents alone, in about a
second and deterministically, so it is rebuilt at each load rather than cached.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from autocompress.errors import WorkloadError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOS = "<|endoftext|>"
INSTALL_HINT = "pip install -e '.[transformers]' in the autocompress checkout"


@dataclass(frozen=True)
class DocumentSplit:
    """Names of the documents in each split, sorted; no name is in two splits."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def split_documents(docs: Mapping[str, str], held_out: float = 0.1, seed: int = 0) -> DocumentSplit:
    """Whole documents to validation and test, each about ``held_out`` of the characters.

    Documents are visited in a seeded random order; each goes to validation if it still fits
    under ``held_out`` of all characters, else to test if it fits there, else to training. The
    documents vary from 200 to 62k characters, so cutting the shuffled list at 80/10/10 of the
    documents would give held-out splits of very different sizes.

    Args:
        docs: The documents by name.
        held_out: Share of the characters each of validation and test may hold, in (0, 0.5).
        seed: Seeds the order.
    """
    if not 0.0 < held_out < 0.5:
        raise ValueError(f"held_out must be in (0, 0.5), got {held_out}")
    names = sorted(docs)
    random.Random(seed).shuffle(names)
    cap = held_out * sum(len(text) for text in docs.values())
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    chars = {"val": 0, "test": 0}
    for name in names:
        size = len(docs[name])
        target = next((s for s in ("val", "test") if chars[s] + size <= cap), "train")
        parts[target].append(name)
        if target != "train":
            chars[target] += size
    return DocumentSplit(*(tuple(sorted(parts[s])) for s in ("train", "val", "test")))


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Tokenizer:
    """A byte-level BPE tokenizer trained on ``texts``, with ``EOS`` as its one special token.

    Byte-level: every text encodes (no unknown token) and decodes back to itself exactly.

    Raises:
        WorkloadError: The ``tokenizers`` library is not installed.
    """
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise WorkloadError(f"a tokenizer needs the tokenizers library: {INSTALL_HINT}") from None
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    return tokenizer


def eos_id(tokenizer: Tokenizer) -> int:
    """The id of ``EOS`` in ``tokenizer``.

    Raises:
        WorkloadError: The tokenizer has no ``EOS`` (it was not made by :func:`train_tokenizer`).
    """
    eos = tokenizer.token_to_id(EOS)
    if eos is None:
        raise WorkloadError(f"the tokenizer has no {EOS} token")
    return eos


def token_rows(tokenizer: Tokenizer, texts: Iterable[str], seq_len: int) -> torch.Tensor:
    """The texts' tokens, each text followed by ``EOS``, cut into rows of ``seq_len``.

    Rows do not overlap and may span two documents (as in GPT-2's training); the tail
    shorter than a row is dropped.

    Returns:
        Token ids ``[rows, seq_len]`` (int64).
    """
    eos = eos_id(tokenizer)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(list(texts)):
        ids.extend(encoding.ids)
        ids.append(eos)
    rows = len(ids) // seq_len
    if rows == 0:
        raise WorkloadError(f"the texts hold {len(ids)} tokens, fewer than one row of {seq_len}")
    return torch.tensor(ids[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


@dataclass(frozen=True)
class TokenizedCorpus:
    """A corpus split by document and tokenized into fixed-length rows.

    Attributes:
        tokenizer: The tokenizer, trained on the training documents.
        documents: Which documents are in which split.
        train: Training token ids ``[rows, seq_len]``.
        val: Validation token ids.
        test: Test token ids.
    """

    tokenizer: Tokenizer
    documents: DocumentSplit
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def tokenize_corpus(
    docs: Mapping[str, str],
    *,
    vocab_size: int = 2048,
    seq_len: int = 128,
    held_out: float = 0.1,
    seed: int = 0,
) -> TokenizedCorpus:
    """Split ``docs`` by document, train the tokenizer on the training ones, cut each split."""
    documents = split_documents(docs, held_out, seed)
    tokenizer = train_tokenizer((docs[name] for name in documents.train), vocab_size)

    def rows(names: tuple[str, ...]) -> torch.Tensor:
        return token_rows(tokenizer, (docs[name] for name in names), seq_len)

    return TokenizedCorpus(
        tokenizer, documents, rows(documents.train), rows(documents.val), rows(documents.test)
    )


def unigram_perplexity(train: torch.Tensor, tokens: torch.Tensor, vocab_size: int) -> float:
    """Perplexity on ``tokens`` of the unigram model of ``train`` (add-one smoothed).

    Scores the next-token targets only (every token but each row's first), as the
    language-modeling task does.
    """
    counts = torch.bincount(train.reshape(-1), minlength=vocab_size).double() + 1.0
    log_p = (counts / counts.sum()).log()
    return math.exp(-float(log_p[tokens[:, 1:].reshape(-1)].mean()))
