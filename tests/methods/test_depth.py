import copy

import pytest
import torch
from torch import nn

import autocompress.methods.depth as depth
from autocompress.architecture import model_facts
from autocompress.errors import TrialFailure
from autocompress.methods import Context
from autocompress.methods.depth import DepthPruning
from autocompress.methods.heads import HeadPruning
from autocompress.methods.mlp import MlpPruning
from autocompress.methods.structured import StructuredPruning
from autocompress.methods.unstructured import UnstructuredPruning
from autocompress.methods.weights import WeightQuantization
from autocompress.models import digits_cnn
from autocompress.pipeline import CompressionConfig, compress, load_compressed
from autocompress.tasks import Classification
from tests.methods.helpers import apply
from tests.methods.tiny_transformers import (
    FAMILIES,
    bert,
    check_compress_reload_deploy,
    gpt2,
    image_train,
    images,
    one_thread,  # noqa: F401 - the fixture
    output,
    same_state,
    token_train,
    tokens,
    vit,
)

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ["bert", "gpt2", "vit", "encoder"]


@pytest.mark.parametrize(
    "amount, blocks, removed",
    [(0.1, 4, 0), (0.125, 4, 1), (0.25, 4, 1), (0.375, 4, 2), (0.5, 4, 2), (0.5, 2, 1),
     (0.5, 1, 0), (0.3, 10, 3), (0.35, 10, 4)],
)  # fmt: skip
def test_the_share_of_blocks_is_rounded_half_up_never_all(amount, blocks, removed):
    assert DepthPruning(amount).count(blocks) == removed


def _identity_block(model, kind, i):
    """Zero what block ``i`` adds to the residual stream: a pre-norm block becomes identity."""
    with torch.no_grad():
        if kind == "gpt2":
            block = model.transformer.h[i]
            layers = (block.attn.c_proj, block.mlp.c_proj)
        else:
            block = model.blocks[i]
            layers = (block.attn.out_proj, block.mlp[2])
        for layer in layers:
            layer.weight.zero_()
            layer.bias.zero_()


@pytest.mark.parametrize("kind, train", [("gpt2", token_train), ("vit", image_train)])
def test_a_block_that_changes_nothing_goes_first(kind, train):
    model = gpt2(4) if kind == "gpt2" else vit(4)
    x = tokens(2, 16) if kind == "gpt2" else images(2)
    _identity_block(model, kind, 2)
    before = output(model, x)
    ctx = apply("depth", DepthPruning(0.25), model, x, train=train())
    record = ctx.records["depth"]
    assert record["removed"] == [2]
    assert record["influence"][2] == pytest.approx(0.0, abs=1e-6)
    assert min(record["influence"][:2] + record["influence"][3:]) > 1e-3
    torch.testing.assert_close(output(model, x), before, atol=1e-5, rtol=0)
    assert ctx.renamed == {f"{'transformer.h' if kind == 'gpt2' else 'blocks'}.2": None,
                           f"{'transformer.h' if kind == 'gpt2' else 'blocks'}.3":
                           f"{'transformer.h' if kind == 'gpt2' else 'blocks'}.2"}  # fmt: skip


def test_hugging_face_config_and_cache_slots_follow():
    model = gpt2(4)
    x = tokens(2, 16)
    apply("depth", DepthPruning(0.5), model, x, replay={"depth": {"removed": [0, 2]}})
    assert model.config.n_layer == model.config.num_hidden_layers == 2
    assert [block.attn.layer_idx for block in model.transformer.h] == [0, 1]
    ids = x["input_ids"][:1, :4]
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    cached = model.generate(ids, use_cache=True, **kw)
    assert torch.equal(cached, model.generate(ids, use_cache=False, **kw))


def test_the_influence_is_computed_once_per_baseline(monkeypatch):
    model, x = vit(4), images(2)
    facts = model_facts(model, x)
    train = image_train()

    def context():
        return Context(task=Classification(), example_input=x, train=train, facts=facts,
                       config=CompressionConfig.of(depth=DepthPruning(0.5)))  # fmt: skip

    first = context()
    DepthPruning(0.5).apply(copy.deepcopy(model), first)
    monkeypatch.setattr(depth, "influence", lambda *a: pytest.fail("computed again"))
    second = context()
    DepthPruning(0.25).apply(copy.deepcopy(model), second)
    assert second.records["depth"]["influence"] == first.records["depth"]["influence"]


@pytest.mark.parametrize("kind", KINDS)
def test_replay_removes_exactly_the_recorded_blocks(kind):
    factory, example, _, train = FAMILIES[kind]
    model, x = factory(), example()
    fresh = copy.deepcopy(model)
    ctx = apply("depth", DepthPruning(0.5), model, x, train=train())
    apply("depth", DepthPruning(0.5), fresh, x, replay=ctx.records)  # no data needed
    assert same_state(fresh, model)
    assert torch.equal(output(fresh, x), output(model, x))
    with pytest.raises(ValueError, match="cannot remove blocks"):
        apply("depth", DepthPruning(0.5), factory(), x, replay={"depth": {"removed": [0, 1]}})


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_model_reloads_exactly_and_deploys(kind, tmp_path):
    config = CompressionConfig.of(depth=DepthPruning(0.5))
    report = check_compress_reload_deploy(kind, config, tmp_path)
    assert report["params"] < report["params_baseline"]


@pytest.mark.parametrize("kind", ["bert", "encoder"])
def test_every_transformer_method_then_structured_reloads_and_deploys(kind, tmp_path):
    config = CompressionConfig.of(
        structured=StructuredPruning(0.5), mlp=MlpPruning(0.5), heads=HeadPruning(0.5),
        depth=DepthPruning(0.5),
    )  # fmt: skip
    assert list(config.methods) == ["depth", "heads", "mlp", "structured"]
    report = check_compress_reload_deploy(kind, config, tmp_path)
    assert list(report["records"]) == ["depth", "heads", "mlp", "structured"]


@pytest.mark.filterwarnings("ignore:Unwrapped parameters")
def test_per_layer_settings_follow_the_blocks_depth_pruning_keeps(tmp_path):
    model, x = vit(4), images(2)
    # Settings name the baseline's layers: its block 3 is block 1 once blocks 1 and 2 are gone.
    config = CompressionConfig.of(
        depth=DepthPruning(0.5),
        structured=StructuredPruning(0.5, {"blocks.1.mlp.0": 0.25, "blocks.3.mlp.0": 0.75}),
        unstructured=UnstructuredPruning(0.0, {"blocks.3.mlp.2.weight": 0.5}),
        weights=WeightQuantization(8, layer_bits={"blocks.3.mlp.2.weight": 4}),
    )
    c = compress(model, config, tmp_path / "m.acpk", task=Classification(), train=None,
                 example_input=x, facts=model_facts(model, x),
                 replay={"depth": {"removed": [1, 2]}})  # fmt: skip
    records, pruned = c.report["records"], c.model
    assert pruned.blocks[1].mlp[0].out_features == 16  # 64 * (1 - 0.75)
    assert pruned.blocks[0].mlp[0].out_features == 32
    zeros = float((pruned.blocks[1].mlp[2].weight == 0).float().mean())
    assert zeros == pytest.approx(0.5, abs=0.05)
    assert records["weights"]["plan"]["blocks.1.mlp.2.weight"][0] == 4
    assert records["weights"]["plan"]["blocks.0.mlp.2.weight"][0] == 8
    assert records["structured"]["channels"]["blocks.3.mlp.0"] == 16
    assert "blocks.2.mlp.0" not in records["structured"]["channels"]
    loaded, _ = load_compressed(tmp_path / "m.acpk", model, x, Classification())
    assert same_state(loaded, pruned)


def test_per_block_heads_and_mlp_amounts_follow_the_blocks_depth_pruning_keeps(tmp_path):
    model, x = bert(4), tokens(2, 16)
    layer = "bert.encoder.layer"
    config = CompressionConfig.of(
        depth=DepthPruning(0.5),
        heads=HeadPruning(0.25, layer_amounts={f"{layer}.0.attention.self": 0.75,
                                               f"{layer}.3.attention.self": 0.5}),
        mlp=MlpPruning(0.0, layer_amounts={f"{layer}.3.intermediate.dense": 0.75}),
    )  # fmt: skip
    c = compress(model, config, tmp_path / "m.acpk", task=Classification(), train=None,
                 example_input=x, facts=model_facts(model, x),
                 replay={"depth": {"removed": [1, 2]}})  # fmt: skip
    blocks = c.model.bert.encoder.layer  # the baseline's blocks 0 and 3
    assert [b.attention.self.num_attention_heads for b in blocks] == [1, 2]
    assert [b.intermediate.dense.out_features for b in blocks] == [128, 32]
    assert [len(h) for h in c.report["records"]["heads"].values()] == [3, 2]
    unknown = CompressionConfig.of(heads=HeadPruning(0.25, layer_amounts={"nope": 0.5}))
    with pytest.raises(TrialFailure, match="unknown attention"):
        compress(model, unknown, tmp_path / "n.acpk", task=Classification(), train=None,
                 example_input=x)  # fmt: skip


def test_unavailable_without_blocks_to_drop():
    x = torch.randn(1, 1, 8, 8)
    assert DepthPruning.unavailable(model_facts(digits_cnn(), x)) == "no transformer blocks found"

    class OneBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.MultiheadAttention(8, 2, batch_first=True)])

        def forward(self, x):
            return self.blocks[0](x, x, x)[0]

    assert DepthPruning.unavailable(model_facts(OneBlock(), torch.randn(1, 3, 8))) == (
        "a single transformer block"
    )


def test_scoring_needs_calibration_data():
    with pytest.raises(ValueError, match="calibration data"):
        apply("depth", DepthPruning(0.5), vit(), images(2))


def test_settings_are_validated():
    with pytest.raises(ValueError, match=r"\[0, 0.5\]"):
        DepthPruning(0.6)
    assert DepthPruning(0.25).describe() == "depth -25%"


def test_the_transformer_methods_are_search_space_sections():
    import optuna

    from autocompress.search_space import parse_search_space_text

    space = parse_search_space_text("mlp:\n  enabled: true\nheads:\n  enabled: true\ndepth: {}\n")
    assert space["heads.importance"].choices == ("magnitude", "activation")
    assert (space["depth.amount"].low, space["depth.amount"].high) == (0.1, 0.5)
    model, x = vit(4), images(2)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    for _ in range(5):
        config = space.suggest(study.ask(), model_facts(model, x))
        assert list(config.methods) == ["depth", "heads", "mlp"]
        assert 0.1 <= config.methods["heads"].amount <= 0.75
        assert config.describe().startswith("depth -")


def test_output_importance_sees_a_block_whose_change_the_final_norm_removes():
    # Block 1 adds a large constant to every feature: its input and output point elsewhere
    # (the largest influence), but every later LayerNorm subtracts it, so skipping it leaves
    # the output as it is. By output it goes first; by influence it stays.
    model, x = gpt2(4), tokens(2, 16)
    with torch.no_grad():
        block = model.transformer.h[1]
        for layer in (block.attn.c_proj, block.mlp.c_proj):
            layer.weight.zero_()
            layer.bias.fill_(50.0)
    before = output(model, x)
    by_influence = apply("depth", DepthPruning(0.25), copy.deepcopy(model), x, train=token_train())
    assert by_influence.records["depth"]["removed"] != [1]
    ctx = apply("depth", DepthPruning(0.25, "output"), model, x, train=token_train())
    assert ctx.records["depth"]["removed"] == [1]
    assert ctx.records["depth"]["influence"][1] == pytest.approx(0.0, abs=1e-4)
    torch.testing.assert_close(output(model, x), before, atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="importance"):
        DepthPruning(0.25, "loudness")
