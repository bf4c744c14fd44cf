import numpy as np
import pytest
import torch

from autocompress.corpus import (
    CorpusTeacher,
    DistillData,
    Passage,
    as_distill_data,
    cached_tokens,
    module_passages,
    stdlib_passages,
    topic_passages,
)

MODULE = '''"""Module docstring that is long enough to be kept as one passage of the corpus, surely.

A second paragraph of the module docstring, also long enough to count as its own passage.
"""

# A comment block that explains why the function below exists, on two lines
# so that the two lines join into one passage of more than eighty characters.


def helper(x):
    """Return x doubled: a function docstring long enough to be kept in the corpus too."""
    return 2 * x  # short
'''


def _library(root):
    (root / "pkg").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "alpha.py").write_text(MODULE)
    (root / "pkg" / "__init__.py").write_text(MODULE.replace("helper", "pkg_helper"))
    (root / "pkg" / "beta.py").write_text(MODULE.replace("helper", "beta_helper"))
    (root / "test" / "test_alpha.py").write_text(MODULE.replace("helper", "test_helper"))
    (root / "broken.py").write_text("def (:\n")
    return root


def test_a_module_gives_its_docstrings_comments_and_definitions():
    got = module_passages("alpha", MODULE)
    kinds = [(p.kind, p.text[:30]) for p in got]
    assert ("docstring", "Module docstring that is long ") in kinds
    assert ("docstring", "A second paragraph of the modu") in kinds
    assert ("docstring", "Return x doubled: a function d") in kinds
    comment = [p.text for p in got if p.kind == "comment"]
    assert comment == [
        "A comment block that explains why the function below exists, on two lines so that "
        "the two lines join into one passage of more than eighty characters."
    ]  # the short trailing comment is dropped
    code = [p.text for p in got if p.kind == "code"]
    assert len(code) == 1 and code[0].startswith("def helper(x):")
    assert all(p.source == "alpha" for p in got)


def test_the_library_leaves_out_tests_broken_files_and_excluded_modules(tmp_path):
    root = _library(tmp_path / "lib")
    everything = stdlib_passages(("docstring", "comment", "code"), root=root)
    assert {p.source for p in everything} == {"alpha", "pkg", "pkg.beta"}
    assert not any("test_helper" in p.text for p in everything)
    kept = stdlib_passages(("docstring",), exclude=["pkg"], root=root)
    assert {p.source for p in kept} == {"alpha"}
    assert {p.kind for p in kept} == {"docstring"}
    with pytest.raises(ValueError, match="unknown passage kind"):
        stdlib_passages(("topic",), root=root)


def test_the_cap_takes_whole_modules_in_a_fixed_order_and_the_parse_is_cached(tmp_path):
    root = _library(tmp_path / "lib")
    cache = tmp_path / "cache"
    whole = stdlib_passages(("docstring",), root=root, cache_dir=cache)
    one = stdlib_passages(("docstring",), max_chars=1, root=root, cache_dir=cache)
    first = whole[0].source
    assert [p for p in whole if p.source == first] == one  # one whole module, the first
    assert len(list(cache.glob("stdlib-passages-*.json"))) == 1
    (root / "alpha.py").write_text("")  # the cache is read, not the files
    assert stdlib_passages(("docstring",), root=root, cache_dir=cache) == whole


def test_topics_are_split_into_paragraphs_with_exclusions():
    text = "x" * 90 + "\n\n" + "short\n\n" + "y" * 85
    got = topic_passages({"a": text, "b": text}, exclude=lambda name: name == "b")
    assert got == [Passage("topics:a", "topic", "x" * 90), Passage("topics:a", "topic", "y" * 85)]


def test_tokens_are_made_once_per_tokenizer_and_corpus(tmp_path):
    passages = [Passage("m", "docstring", "one text"), Passage("m", "docstring", "two texts")]
    calls = []

    def tok(texts):
        calls.append(list(texts))
        return torch.tensor([[len(t)] for t in texts])

    a, key = cached_tokens(passages, "tok-1", tok, tmp_path)
    b, same = cached_tokens(passages, "tok-1", tok, tmp_path)
    assert torch.equal(a, b) and key == same and len(calls) == 1
    _, other = cached_tokens(passages, "tok-2", tok, tmp_path)
    _, third = cached_tokens(passages[:1], "tok-1", tok, tmp_path)
    assert len(calls) == 3 and len({key, other, third}) == 3


class _Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(3.0))
        self.rows = 0

    def forward(self, input_ids, attention_mask):
        self.rows += len(input_ids)
        return (input_ids.float() * attention_mask).sum(dim=1, keepdim=True) * self.weight


def _data(cache_dir):
    ids = torch.arange(40).reshape(10, 4)
    mask = torch.ones(10, 4, dtype=torch.long)
    mask[:, 3] = 0  # a padding column every row has
    return DistillData({"input_ids": ids, "attention_mask": mask}, cache_dir=cache_dir)


def test_teacher_outputs_are_computed_once_per_row_and_kept_on_disk(tmp_path):
    teacher = _Counting()
    data = _data(tmp_path)
    cache = CorpusTeacher(teacher, data)
    idx = torch.tensor([4, 1, 4])
    expected = torch.stack([data.inputs["input_ids"][i, :3].sum() * 3.0 for i in idx])[:, None]
    torch.testing.assert_close(cache.outputs(idx), expected.float())
    assert cache.computed == 2  # row 4 once
    again = CorpusTeacher(teacher, _data(tmp_path))  # another process, the same files
    torch.testing.assert_close(again.outputs(torch.tensor([1, 4])), expected[[1, 0]].float())
    assert again.computed == 0
    assert isinstance(again.values, np.memmap)
    other = _Counting()
    with torch.no_grad():
        other.weight.fill_(5.0)  # another teacher: other outputs, not the cached ones
    five = CorpusTeacher(other, _data(tmp_path)).outputs(torch.tensor([1]))
    assert float(five) == pytest.approx(float(expected[1]) / 3 * 5)


def test_batches_trim_common_padding_and_cycle_in_a_seeded_order():
    data = _data(None)
    assert data.rows(torch.tensor([0, 1]))["input_ids"].shape == (2, 3)
    batches = list(data.index_batches(4, 5, seed=1))
    assert [len(b) for b in batches] == [4] * 5
    first_pass = torch.cat(batches[:2])
    assert len(set(first_pass.tolist())) == 8  # no repeat within a pass
    assert all(
        torch.equal(a, b) for a, b in zip(batches, data.index_batches(4, 5, seed=1), strict=True)
    )


def test_distill_data_is_checked():
    with pytest.raises(ValueError, match="tensor or a dict"):
        as_distill_data([1, 2, 3])
    with pytest.raises(ValueError, match="same, non-zero number of rows"):
        DistillData({"a": torch.zeros(2, 3), "b": torch.zeros(3, 3)})
    assert as_distill_data(None) is None
    assert len(as_distill_data(torch.zeros(5, 2))) == 5


def test_a_corpus_given_as_a_function_is_read_on_first_use_only(tmp_path):
    calls = []

    def load():
        calls.append(1)
        return torch.zeros(6, 3, dtype=torch.long)

    data = DistillData(load, key="corpus-v1")
    assert calls == [] and data.key == "corpus-v1"
    assert len(data) == 6 and len(data) == 6
    assert calls == [1]
    with pytest.raises(ValueError, match="needs a key"):
        DistillData(load)
    placed = as_distill_data(data, tmp_path)
    assert placed.cache_dir == tmp_path and placed.key == data.key and data.cache_dir is None


def test_a_workload_hands_its_distillation_data_to_the_study(tmp_path):
    from autocompress.workload import Workload, prepare

    x = torch.randn(8, 4)
    wl = Workload(
        train=(x, torch.zeros(8, dtype=torch.long)), val=(x, torch.zeros(8, dtype=torch.long)),
        test=(x, torch.zeros(8, dtype=torch.long)), model=torch.nn.Linear(4, 2),
        distill_data=torch.randn(20, 4),
    )  # fmt: skip
    loaded = prepare(wl, cache_dir=tmp_path)
    assert len(loaded.distill_data) == 20
    assert loaded.distill_data.cache_dir == tmp_path / "distill"
    from autocompress.errors import WorkloadError

    with pytest.raises(WorkloadError, match="distill_data"):
        Workload(train=wl.train, val=wl.val, test=wl.test, model=wl.model, distill_data="text")


def test_a_corpus_that_changed_under_the_same_key_is_not_answered_from_the_cache(tmp_path):
    teacher = _Counting()
    ids = torch.arange(40).reshape(10, 4)
    mask = torch.ones(10, 4, dtype=torch.long)

    def data(first_row):
        rows = ids.clone()
        rows[0] = first_row
        return DistillData(lambda: {"input_ids": rows, "attention_mask": mask}, key="corpus",
                           cache_dir=tmp_path)  # fmt: skip

    assert float(CorpusTeacher(teacher, data(1)).outputs(torch.tensor([0]))) == 4 * 1 * 3.0
    changed = CorpusTeacher(teacher, data(2))  # same key, a different first row
    assert float(changed.outputs(torch.tensor([0]))) == 4 * 2 * 3.0
    assert changed.computed == 1
