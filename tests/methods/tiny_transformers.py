"""Tiny transformers of every recognised kind, with random biases, and the checks that every
transformer pruning method must pass (replay, reload, deployment)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from autocompress.architecture import model_facts
from autocompress.data import Batches, TensorData, as_output, call_model
from autocompress.deploy import deploy
from autocompress.pipeline import CompressionConfig, compress, load_compressed
from autocompress.tasks import Classification
from tests.model_families import SEQ, VOCAB, EncoderClassifier, TinyViT, tiny_bert_config


@pytest.fixture
def one_thread():
    """One torch thread: tiny models only lose to thread hand-offs on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_biases(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-zero biases everywhere (zero biases hide slicing mistakes and confuse ORT's int8)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def bert(layers: int = 2) -> nn.Module:
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    config = tiny_bert_config()
    config.num_hidden_layers = layers
    return random_biases(BertForSequenceClassification(config))


def gpt2(layers: int = 2) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(  # type: ignore[call-arg]  # attn_implementation: PretrainedConfig's **kwargs
        vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=SEQ,
        use_cache=False, attn_implementation="eager", bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return random_biases(GPT2LMHeadModel(config))


def vit(depth: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return random_biases(TinyViT(depth=depth))


def encoder(depth: int = 2) -> nn.Module:
    torch.manual_seed(0)
    model = EncoderClassifier(depth=depth)
    # nn.TransformerEncoder clones one layer: make the layers differ, as trained ones do.
    with torch.no_grad():
        for layer in model.encoder.layers:
            for p in layer.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return random_biases(model)


def tokens(batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


def images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def token_train() -> Batches:
    return Batches([tokens(16, SEQ, seed) for seed in range(4)], "train")


def image_train() -> TensorData:
    return TensorData(images(64, 9), torch.zeros(64, dtype=torch.long))


# name: (factory, example input, other shapes the deployed model must take, training split)
Family = tuple[
    Callable[[], nn.Module],  # fresh model
    Callable[[], Any],  # example input
    Callable[[], list[Any]],  # other input shapes
    Callable[[], TensorData | Batches],  # training data
]

FAMILIES: dict[str, Family] = {
    "bert": (bert, lambda: tokens(2, SEQ), lambda: [tokens(3, 11, 1)], token_train),
    "gpt2": (gpt2, lambda: tokens(2, SEQ), lambda: [tokens(3, 11, 1)], token_train),
    "vit": (vit, lambda: images(2), lambda: [images(5, 1)], image_train),
    "encoder": (encoder, lambda: images(2), lambda: [images(5, 1)], image_train),
}


def output(model: nn.Module, inputs) -> torch.Tensor:  # noqa: ANN001
    with torch.no_grad():
        return as_output(call_model(model, inputs))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def check_compress_reload_deploy(family: str, config: CompressionConfig, tmp_path) -> dict:  # noqa: ANN001
    """Compress a fresh ``family`` model with ``config``; the artifact must reload to the exact
    model, and both runtimes must match eager at the example's shape and the others."""
    factory, example, others, train = FAMILIES[family]
    model, x = factory(), example()
    c = compress(model, config, tmp_path / "m.acpk", task=Classification(), train=train(),
                 example_input=x, facts=model_facts(model, x))  # fmt: skip
    loaded, _ = load_compressed(tmp_path / "m.acpk", model, x, Classification())
    assert same_state(loaded, c.model)
    assert torch.equal(output(loaded, x), output(c.model, x))
    for runtime in ("torch", "onnxruntime"):
        deployed = deploy(c.model, tmp_path / runtime, example_input=x, runtime=runtime)
        for inputs in (x, *others()):
            err = (deployed.run(inputs) - output(c.model, inputs)).abs().max().item()
            assert err < 1e-4, (runtime, err)
    return c.report
