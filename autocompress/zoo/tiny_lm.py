"""Built-in language-model workload: a small GPT-2 trained on Python's own reference pages.

``tiny-lm`` is transformers' ``GPT2LMHeadModel`` (4 layers, width 128, 1.07M parameters)
on :mod:`pydoc_data.topics` with a 2048-token byte-level BPE (:mod:`autocompress.zoo.text`).
Its baseline is trained by autocompress once and cached; the metric is perplexity.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from autocompress.corpus import DistillData, cached_tokens, stdlib_passages
from autocompress.data import TensorData
from autocompress.errors import WorkloadError
from autocompress.stdlib_text import help_topics
from autocompress.training import TrainingConfig
from autocompress.workload_spec import Workload
from autocompress.zoo.text import (
    INSTALL_HINT,
    eos_id,
    token_rows,
    tokenize_corpus,
)

try:
    from transformers import GPT2Config, GPT2LMHeadModel
except ImportError:
    raise WorkloadError(f"the tiny-lm workload needs transformers: {INSTALL_HINT}") from None


@dataclass(frozen=True)
class TinyLMConfig:
    """The size of the model, its data and its baseline training.

    Attributes:
        n_embd: Width of the residual stream.
        n_layer: Transformer blocks.
        n_head: Attention heads per block.
        seq_len: Tokens per row, and the model's positions.
        vocab_size: Tokens of the BPE tokenizer.
        training: How the baseline is trained.
        max_rows: Keep at most this many rows of each split (``None``: all), for tests.
    """

    n_embd: int
    n_layer: int
    n_head: int
    seq_len: int
    vocab_size: int
    training: TrainingConfig
    max_rows: int | None = None

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if min(self.n_embd, self.n_layer, self.n_head, self.seq_len) < 1:
            raise ValueError("n_embd, n_layer, n_head and seq_len must be >= 1")
        if self.vocab_size < 257:
            raise ValueError(f"vocab_size must cover the 256 bytes and EOS, got {self.vocab_size}")


SIZES: dict[str, TinyLMConfig] = {
    "full": TinyLMConfig(
        n_embd=128,
        n_layer=4,
        n_head=4,
        seq_len=128,
        vocab_size=2048,
        training=TrainingConfig(
            epochs=12,
            batch_size=16,
            optimizer="adamw",
            lr=2e-3,
            schedule="cosine",
            warmup_fraction=0.05,
            weight_decay=0.01,
        ),
    ),
    # Seconds to load and train, for tests: not a useful language model.
    "test": TinyLMConfig(
        n_embd=32,
        n_layer=1,
        n_head=2,
        seq_len=32,
        vocab_size=512,
        training=TrainingConfig(epochs=3, batch_size=16, optimizer="adamw", lr=1e-2),
        max_rows=256,
    ),
}


class TinyGPT2(GPT2LMHeadModel):
    """``GPT2LMHeadModel`` whose attention mask defaults to all ones.

    Given no mask, transformers checks the position ids for packed sequences; under tracing
    that check becomes graph ops (``aten::diff``) that the ONNX exporter cannot export. An
    explicit mask skips it; in eager mode an all-ones mask still takes SDPA's causal fast path.
    """

    def forward(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if input_ids is not None and kwargs.get("attention_mask") is None:
            kwargs["attention_mask"] = torch.ones_like(input_ids)
        return super().forward(input_ids, **kwargs)


def gpt2_config(size: TinyLMConfig, eos_id: int) -> GPT2Config:
    """The model's configuration: no KV cache (tracing, export), SDPA attention, tied embeddings.

    ``gelu_pytorch_tanh`` is GPT-2's ``gelu_new`` computed by one fused PyTorch kernel.
    """
    config = GPT2Config(
        vocab_size=size.vocab_size,
        n_positions=size.seq_len,
        n_embd=size.n_embd,
        n_layer=size.n_layer,
        n_head=size.n_head,
        activation_function="gelu_pytorch_tanh",
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        use_cache=False,
    )
    config._attn_implementation = "sdpa"
    return config


CORPUS_CHARS = 4_000_000  # distillation text: docstrings, comments and source of the library


def distill_corpus(tokenizer: Any, seq_len: int, cache_dir: Path | None) -> DistillData:
    """Unlabeled text for distillation (:mod:`autocompress.corpus`): the standard library's
    docstrings, comment blocks and definitions' source (none of it is a help topic, where
    validation and test come from), in rows of ``seq_len`` tokens, made on first use and
    cached per tokenizer and corpus."""
    tokenizer_key = hashlib.sha256(f"{tokenizer.to_str()}|{seq_len}".encode()).hexdigest()
    key = hashlib.sha256(f"tiny-lm|{sys.version}|{CORPUS_CHARS}|{tokenizer_key}".encode())

    def load() -> torch.Tensor:
        passages = stdlib_passages(
            ("docstring", "comment", "code"), CORPUS_CHARS, cache_dir=cache_dir
        )
        tokens, _ = cached_tokens(
            passages, tokenizer_key,
            lambda texts: token_rows(tokenizer, texts, seq_len), cache_dir,
        )  # fmt: skip
        return cast(torch.Tensor, tokens)

    return DistillData(
        load, key=key.hexdigest(),
        cache_dir=None if cache_dir is None else Path(cache_dir) / "distill",
        info=f"docstrings, comments and source of the standard library (about "
        f"{CORPUS_CHARS / 1e6:.0f} MB)",
    )  # fmt: skip


def tiny_lm(
    data_dir: Path | None = None, size: str = "full", cache_dir: Path | None = None
) -> Workload:
    """The ``tiny-lm`` workload.

    Args:
        data_dir: Unused: the corpus ships with Python.
        size: ``full`` (the built-in workload) or ``test`` (one block of width 32 on 256
            rows of 32 tokens: trains in seconds; no distillation corpus).
        cache_dir: Where the distillation corpus's tokens and teacher outputs are kept.

    Raises:
        WorkloadError: An unknown size.
    """
    del data_dir
    if size not in SIZES:
        raise WorkloadError(f"unknown tiny-lm size {size!r}; use one of {', '.join(SIZES)}")
    settings = SIZES[size]
    corpus = tokenize_corpus(
        help_topics(), vocab_size=settings.vocab_size, seq_len=settings.seq_len
    )
    config = gpt2_config(settings, eos_id(corpus.tokenizer))

    def split(rows: torch.Tensor) -> TensorData:
        rows = rows[: settings.max_rows]
        return TensorData(rows, rows)

    def factory() -> TinyGPT2:
        return TinyGPT2(config)

    docs = corpus.documents
    return Workload(
        name="tiny-lm" if size == "full" else f"tiny-lm-{size}",
        train=split(corpus.train),
        val=split(corpus.val),
        test=split(corpus.test),
        model_factory=factory,
        baseline_training=settings.training,
        task="language-modeling",
        distill_data=(
            distill_corpus(corpus.tokenizer, settings.seq_len, cache_dir)
            if size == "full"
            else None
        ),
        info={
            "data": (
                f"pydoc_data.topics: {len(docs.train)}/{len(docs.val)}/{len(docs.test)} "
                f"documents, rows of {settings.seq_len} tokens"
            ),
            "tokenizer": f"byte-level BPE, {settings.vocab_size} tokens, training documents",
        },
    )
