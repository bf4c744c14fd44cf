"""The text corpus, its tokenizer and the tiny-lm workload (autocompress.zoo.text, zoo.tiny_lm)."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from autocompress.errors import WorkloadError
from autocompress.stdlib_text import help_topics
from autocompress.workload import load_workload, prepare
from autocompress.zoo.text import (
    EOS,
    split_documents,
    token_rows,
    train_tokenizer,
    unigram_perplexity,
)


@pytest.fixture(scope="module")
def docs() -> dict[str, str]:
    return help_topics()


@pytest.fixture(scope="module")
def tokenizer(docs):
    pytest.importorskip("tokenizers")
    split = split_documents(docs)
    return train_tokenizer((docs[n] for n in split.train), vocab_size=512)


@pytest.fixture(scope="module")
def lm_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("baselines")


@pytest.fixture(scope="module")
def tiny_test_size(lm_cache):
    """The test-size tiny-lm, its baseline trained (in seconds) into ``lm_cache``."""
    pytest.importorskip("transformers")
    from autocompress.zoo.tiny_lm import tiny_lm

    torch.set_num_threads(1)
    return prepare(tiny_lm(None, size="test"), cache_dir=lm_cache)


def test_splits_are_disjoint_by_document_and_deterministic(docs):
    split = split_documents(docs)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert set.union(*parts) == set(docs)
    assert sum(len(p) for p in parts) == len(docs)
    assert split == split_documents(docs)
    assert split != split_documents(docs, seed=1)
    total = sum(len(t) for t in docs.values())
    for held_out in (split.val, split.test):
        chars = sum(len(docs[n]) for n in held_out)
        assert 0.09 * total <= chars <= 0.1 * total


@pytest.mark.parametrize("held_out", [0.0, 0.5, -0.1], ids=["zero", "half", "negative"])
def test_split_rejects_impossible_shares(docs, held_out):
    with pytest.raises(ValueError, match="held_out"):
        split_documents(docs, held_out)


def test_tokenizer_round_trips_unseen_text(docs, tokenizer):
    split = split_documents(docs)
    odd = "“quotes” — ß\t\ttabs,  double  spaces\r\n\x00 and 🐍 emoji"
    for text in [docs[n] for n in split.val + split.test] + [odd]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.get_vocab_size() == 512


def test_tokenizer_is_deterministic(docs, tokenizer):
    split = split_documents(docs)
    again = train_tokenizer((docs[n] for n in split.train), vocab_size=512)
    assert again.to_str() == tokenizer.to_str()


def test_token_rows_join_documents_with_eos_and_drop_the_tail(tokenizer):
    rows = token_rows(tokenizer, ["def f(): pass", "class C: ..."], seq_len=4)
    eos = tokenizer.token_to_id(EOS)
    flat = rows.reshape(-1).tolist()
    assert rows.dtype == torch.long and rows.shape[1] == 4
    assert eos in flat
    assert tokenizer.decode(flat) in "def f(): passclass C: ..."
    with pytest.raises(WorkloadError, match="fewer than one row"):
        token_rows(tokenizer, ["x"], seq_len=64)


def test_unigram_perplexity_of_uniform_tokens_is_the_vocabulary_size():
    tokens = torch.arange(64).repeat(10).view(20, 32)
    assert unigram_perplexity(tokens, tokens, 64) == pytest.approx(64.0)


def test_test_size_baseline_trains_and_beats_uniform(tiny_test_size):
    loaded = tiny_test_size
    assert loaded.task.name == "language-modeling"
    assert loaded.name == "tiny-lm-test"
    vocab = loaded.model.config.vocab_size
    val = loaded.evaluate(loaded.model, "val")
    assert val < 0.5 * vocab
    assert loaded.evaluate(loaded.model, "test") < 0.5 * vocab
    assert isinstance(loaded.example_input, torch.Tensor)
    assert loaded.example_input.shape == (1, 32)


def test_test_size_baseline_is_cached(tiny_test_size, lm_cache):
    from autocompress.zoo.tiny_lm import tiny_lm

    assert len(list(lm_cache.glob("tiny-lm-test-*.pt"))) == 1
    start = time.process_time()
    again = prepare(tiny_lm(None, size="test"), cache_dir=lm_cache)
    assert time.process_time() - start < 5
    mine, cached = tiny_test_size.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(mine[k], cached[k]) for k in mine)


def test_model_is_causal(tiny_test_size):
    x = tiny_test_size.val.x[:2]
    changed = x.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % tiny_test_size.model.config.vocab_size
    with torch.inference_mode():
        a, b = tiny_test_size.model(x).logits, tiny_test_size.model(changed).logits
    assert torch.allclose(a[:, :20], b[:, :20], atol=1e-6)
    assert not torch.allclose(a[:, 20:], b[:, 20:])


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_deployed_model_gives_the_eager_logits(tiny_test_size, tmp_path, runtime):
    from autocompress.deploy import deploy

    model, example = tiny_test_size.model, tiny_test_size.example_input
    deployed = deploy(model, tmp_path / "lm", example_input=example, runtime=runtime)
    batch = tiny_test_size.val.x[:3, :20]  # another batch size and sequence length
    with torch.inference_mode():
        for x in (example, batch):
            assert torch.allclose(deployed.run(x), model(x).logits, atol=1e-4)


def test_unknown_size_is_refused():
    pytest.importorskip("transformers")
    from autocompress.zoo.tiny_lm import tiny_lm

    with pytest.raises(WorkloadError, match="unknown tiny-lm size"):
        tiny_lm(None, size="huge")


def test_without_transformers_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    monkeypatch.delitem(sys.modules, "autocompress.zoo.tiny_lm", raising=False)
    with pytest.raises(WorkloadError, match=r"pip install -e '\.\[transformers\]'"):
        load_workload("tiny-lm", cache_dir=None)


@pytest.mark.slow
def test_full_baseline_trains_within_ten_minutes_and_beats_unigram(tmp_path):
    pytest.importorskip("transformers")
    torch.set_num_threads(2)
    start = time.perf_counter()
    loaded = load_workload("tiny-lm", cache_dir=tmp_path)
    assert time.perf_counter() - start < 600
    unigram = unigram_perplexity(loaded.train.x, loaded.val.x, loaded.model.config.vocab_size)
    assert loaded.evaluate(loaded.model, "val") < 0.5 * unigram
