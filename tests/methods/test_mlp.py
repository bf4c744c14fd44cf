import copy

import pytest
import torch

from autocompress.architecture import model_facts
from autocompress.methods.mlp import MlpPruning
from autocompress.models import digits_cnn
from autocompress.pipeline import CompressionConfig
from autocompress.transformer_parts import find_transformer_parts
from tests.methods.helpers import apply
from tests.methods.tiny_transformers import (
    FAMILIES,
    check_compress_reload_deploy,
    one_thread,  # noqa: F401 - the fixture
    output,
    same_state,
)

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ["bert", "gpt2", "vit", "encoder"]


def _family(kind):
    factory, example, _, _ = FAMILIES[kind]
    return factory(), example()


def _rows_and_columns(model, mlp):
    """The up layer's weight as [hidden, in] and the down layer's as [hidden, out] (views)."""
    modules = dict(model.named_modules())
    up, down = modules[mlp.up], modules[mlp.down]
    conv1d = type(up).__name__ == "Conv1D"
    return (up.weight.t(), down.weight) if conv1d else (up.weight, down.weight.t())


@pytest.mark.parametrize(
    "kind, amount, width",
    [("bert", 0.5, 64), ("bert", 0.3, 90), ("bert", 0.9, 13), ("gpt2", 0.25, 96), ("vit", 0.5, 32)],
)
def test_amounts_remove_the_share_rounded_down(kind, amount, width):
    model, x = _family(kind)
    ctx = apply("mlp", MlpPruning(amount), model, x)
    parts = find_transformer_parts(model)
    widths = [_rows_and_columns(model, m)[0].shape[0] for m in parts.mlps]
    assert widths == [width] * len(parts.mlps)
    assert all(_rows_and_columns(model, m)[1].shape[0] == width for m in parts.mlps)
    hidden = 128 if kind in ("bert", "gpt2") else 64
    assert all(len(removed) == hidden - width for removed in ctx.records["mlp"].values())
    if kind == "bert":
        assert model.config.intermediate_size == width  # save_pretrained stays loadable
    if kind == "gpt2":
        assert model.config.n_inner == width
    assert output(model, x).shape[0] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_the_smallest_neurons_go_exactly(kind):
    model, x = _family(kind)
    parts = find_transformer_parts(model)
    g = torch.Generator().manual_seed(3)
    expected = []
    for mlp in parts.mlps:
        up, down = _rows_and_columns(model, mlp)
        small = sorted(torch.randperm(up.shape[0], generator=g)[: up.shape[0] // 4].tolist())
        with torch.no_grad():
            up[small] *= 0.01
            down[small] *= 0.01
        expected.append(small)
    zeroed = copy.deepcopy(model)
    for mlp, small in zip(find_transformer_parts(zeroed).mlps, expected, strict=True):
        with torch.no_grad():
            _rows_and_columns(zeroed, mlp)[1][small] = 0
    ctx = apply("mlp", MlpPruning(0.25), model, x)
    assert list(ctx.records["mlp"].values()) == expected
    torch.testing.assert_close(output(model, x), output(zeroed, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_replay_removes_exactly_the_recorded_neurons(kind):
    model, x = _family(kind)
    fresh = copy.deepcopy(model)
    ctx = apply("mlp", MlpPruning(0.4), model, x)
    apply("mlp", MlpPruning(0.1), fresh, x, replay=ctx.records)  # the record wins
    assert same_state(fresh, model)


def test_replay_of_a_record_that_does_not_fit_fails():
    model, x = _family("vit")
    with pytest.raises(ValueError, match="cannot remove neurons"):
        apply("mlp", MlpPruning(0.5), model, x, replay={"mlp": {"blocks.0.mlp.0": list(range(64))}})
    with pytest.raises(ValueError, match="has not"):
        apply("mlp", MlpPruning(0.5), model, x, replay={"mlp": {"blocks.0.mlp.2": [0]}})


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_model_reloads_exactly_and_deploys(kind, tmp_path):
    report = check_compress_reload_deploy(kind, CompressionConfig.of(mlp=MlpPruning(0.5)), tmp_path)
    assert report["params"] < report["params_baseline"]


def test_unavailable_without_transformer_mlps():
    x = torch.randn(1, 1, 8, 8)
    assert MlpPruning.unavailable(model_facts(digits_cnn(), x)) == "no transformer blocks found"
    model, x = _family("vit")
    assert MlpPruning.unavailable(model_facts(model, x)) is None


def test_settings_are_validated():
    with pytest.raises(ValueError, match=r"\[0, 0.9\]"):
        MlpPruning(0.95)
    assert MlpPruning(0.5).describe() == "MLP width -50%"


@pytest.mark.parametrize("kind", KINDS)
def test_activation_ranks_neurons_by_what_they_output_not_their_weights(kind):
    factory, example, _, train = FAMILIES[kind]
    model, x = factory(), example()
    parts = find_transformer_parts(model)
    modules = dict(model.named_modules())
    g = torch.Generator().manual_seed(4)
    expected = []
    for mlp in parts.mlps:
        up, down = _rows_and_columns(model, mlp)
        quiet = sorted(torch.randperm(up.shape[0], generator=g)[: up.shape[0] // 4].tolist())
        with torch.no_grad():
            up[quiet] *= 0.001  # (almost) silent on any input...
            modules[mlp.up].bias[quiet] = 0.0
            down[quiet] *= 1000.0  # ...with the largest weights
        expected.append(quiet)
    by_weights = apply("mlp", MlpPruning(0.25), copy.deepcopy(model), x)
    by_output = apply("mlp", MlpPruning(0.25, "activation"), model, x, train=train())
    assert list(by_output.records["mlp"].values()) == expected
    assert all(not set(r) & set(q) for r, q in
               zip(by_weights.records["mlp"].values(), expected, strict=True))  # fmt: skip


def test_activation_needs_calibration_data_and_a_known_importance():
    model, x = _family("bert")
    with pytest.raises(ValueError, match="calibration data"):
        apply("mlp", MlpPruning(0.25, "activation"), model, x)
    with pytest.raises(ValueError, match="importance"):
        MlpPruning(0.25, "loudness")
