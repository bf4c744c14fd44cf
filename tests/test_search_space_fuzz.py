"""Property tests: whatever a user writes, the loader succeeds or raises SearchSpaceError; and a
space it accepts can be searched (no "poisoned" space that validates, then crashes a study)."""

from __future__ import annotations

import optuna
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autocompress.architecture import model_facts
from autocompress.errors import SearchSpaceError
from autocompress.methods import METHODS
from autocompress.search_space import parse_search_space, parse_search_space_text
from tests.conftest import full_profile, tiny_cnn

_SCHEMA = {name: {"enabled": None, **cls.SEARCH} for name, cls in METHODS.items()}
_KEYS = [*_SCHEMA, "format_version", "description", "low", "high", "log", "step"]
_KEYS += [k for params in _SCHEMA.values() for k in params]
_FACTS = model_facts(tiny_cnn().eval(), torch.zeros(1, 1, 8, 8))
_PROFILE = full_profile(_FACTS.model)  # what a study gives spaces with per-layer allocation

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["none", "structured", "adam", "cosine", "per_channel", "1e-4"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), scalars), children, max_size=5),
    ),
    max_leaves=30,
)
# Documents shaped like a search space: known sections and keys, arbitrary values.
sections = st.fixed_dictionaries(
    {},
    optional={
        section: st.dictionaries(st.sampled_from(list(params)), documents, max_size=4)
        for section, params in _SCHEMA.items()
    },
)


def _loads_or_rejects(call) -> None:
    try:
        space = call()
    except SearchSpaceError as e:
        assert "\n" not in str(e)  # one line
        return
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    for start in space.warm_starts(_FACTS):
        study.enqueue_trial(start)
    for _ in range(4):  # an accepted space can be searched: every suggestion is a valid config
        space.suggest(study.ask(), _FACTS, profile=_PROFILE)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_arbitrary_structures(document):
    _loads_or_rejects(lambda: parse_search_space(document, "fuzz.yaml"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sections)
def test_arbitrary_space_shaped_structures(document):
    _loads_or_rejects(lambda: parse_search_space(document, "fuzz.yaml"))


@settings(max_examples=60, deadline=None)
@given(sections)
def test_arbitrary_yaml_documents(document):
    text = yaml.safe_dump(document)
    _loads_or_rejects(lambda: parse_search_space_text(text, "fuzz.yaml"))


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    _loads_or_rejects(lambda: parse_search_space_text(text, "fuzz.yaml"))


def test_known_crashers():
    # Found while writing these tests: an integer too large for a float, an impossible date.
    for text in ["finetune:\n  epochs: 1" + "0" * 400 + "\n", "description: 2001-13-01\n"]:
        _loads_or_rejects(lambda: parse_search_space_text(text, "fuzz.yaml"))  # noqa: B023
