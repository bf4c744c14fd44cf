"""MACs of one forward pass: every matrix product and convolution, attention's included.

Expected values are computed by hand: a layer costs its input width times its output width per
token (a convolution: its kernel's inputs per output element); an attention layer adds its
query-key and attention-value products, 2 · length² · inner width per sequence.
"""

import pytest
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from autocompress.macs import count_macs
from autocompress.methods.heads import HeadPruning
from tests.methods.helpers import apply
from tests.methods.tiny_transformers import bert, encoder, gpt2, images, tokens, vit

BATCH, LENGTH = 2, 16


def _attention(batch: int, length: int, inner: int) -> int:
    """Query-key and attention-value products of one attention layer."""
    return batch * 2 * length * length * inner


def test_conv_net_counts_plain_grouped_and_depthwise_convolutions():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.Conv2d(8, 16, 1),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    x = torch.randn(BATCH, 3, 8, 8)
    per_image = (
        8 * 8 * 8 * (3 * 9)  # 8 channels on 8x8, each from 3 channels' 3x3
        + 8 * 8 * 8 * 9  # depthwise: each channel from its own 3x3
        + 8 * 8 * 16 * 8  # pointwise
        + 4 * 4 * 16 * (4 * 9)  # stride 2: 4x4 outputs, 4 channels per group
        + 16 * 10
    )
    assert count_macs(model, x) == BATCH * per_image


def test_grouped_conv1d():
    model = nn.Conv1d(4, 6, 3, groups=2)
    assert count_macs(model, torch.randn(BATCH, 4, 10)) == BATCH * 8 * 6 * (2 * 3)


def _bert_macs(heads: int, hidden: int = 64, inner_mlp: int = 128, layers: int = 2) -> int:
    """Tiny BERT (head width 16): per token, query/key/value and output projections and the
    MLP; per sequence, the attention products, the pooler (first token) and the classifier."""
    inner = heads * 16
    per_token = 4 * hidden * inner + 2 * hidden * inner_mlp
    per_sequence = 2 * LENGTH * LENGTH * inner
    return layers * (BATCH * LENGTH * per_token + BATCH * per_sequence) + BATCH * (
        hidden * hidden + hidden * 2
    )


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_bert_counts_the_attention_products(attention):
    model = bert(2)
    model.set_attn_implementation(attention)
    assert count_macs(model, tokens(BATCH, LENGTH)) == _bert_macs(heads=4)


def test_head_pruning_removes_the_attention_products_macs_too():
    model, x = bert(2), tokens(BATCH, LENGTH)
    before = count_macs(model, x)
    apply("heads", HeadPruning(0.5), model, x)  # 2 of 4 heads per layer
    after = count_macs(model, x)
    assert after == _bert_macs(heads=2)
    projections = 2 * BATCH * LENGTH * 4 * 64 * 32  # two layers, 32 of 64 inner width gone
    assert before - after == projections + 2 * _attention(BATCH, LENGTH, 32)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_gpt2_counts_its_conv1d_layers_and_attention(attention):
    # transformers' Conv1D is GPT-2's linear layer. Per token, each block's c_attn
    # (32 -> 96), c_proj (32 -> 32), c_fc (32 -> 128), mlp c_proj (128 -> 32) and the
    # output layer (32 -> vocab); per sequence, each block's (causal, counted whole) attention.
    model = gpt2(2)
    model.set_attn_implementation(attention)
    vocab = model.config.vocab_size
    per_token = 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32) + 32 * vocab
    want = BATCH * LENGTH * per_token + 2 * _attention(BATCH, LENGTH, 32)
    assert count_macs(model, tokens(BATCH, LENGTH)) == want


def _vit_macs(inner: int) -> int:
    """The tests' tiny ViT on 16x16 images: 4x4 patches (16 of them, 48 inputs each, width
    32), a class token, two blocks of attention of ``inner`` width and an MLP 32 -> 64 -> 32,
    4 classes from the class token."""
    tokens_ = 17
    per_token = 3 * 32 * inner + inner * 32 + 2 * 32 * 64
    blocks = 2 * (BATCH * tokens_ * per_token + _attention(BATCH, tokens_, inner))
    return BATCH * 16 * 32 * 48 + blocks + BATCH * 32 * 4


def test_multihead_attention_is_counted_off_its_fused_kernel():
    # In eval mode without gradients nn.MultiheadAttention runs one fused operator.
    assert count_macs(vit(2), images(BATCH)) == _vit_macs(inner=32)


def test_sliced_multihead_attention_counts_its_kept_heads():
    model, x = vit(2), images(BATCH)
    apply("heads", HeadPruning(0.5), model, x)
    assert count_macs(model, x) == _vit_macs(inner=16)


def test_transformer_encoder_is_counted_off_its_fused_kernel():
    # 4x4 patches of 16x16 images (16 tokens, 48 inputs each, width 32), two layers of
    # attention and an MLP 32 -> 64 -> 32, 4 classes from the mean token.
    per_token = 4 * 32 * 32 + 2 * 32 * 64
    blocks = 2 * (BATCH * 16 * per_token + _attention(BATCH, 16, 32))
    want = BATCH * 16 * 32 * 48 + blocks + BATCH * 32 * 4
    assert count_macs(encoder(2), images(BATCH)) == want


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_hugging_face_vit(attention):
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=16, patch_size=4, num_channels=3, num_labels=3, attn_implementation=attention,
    )  # fmt: skip
    model = ViTForImageClassification(config)
    per_token = 4 * 32 * 32 + 2 * 32 * 64
    blocks = 2 * (BATCH * 17 * per_token + _attention(BATCH, 17, 32))
    want = BATCH * 16 * 32 * 48 + blocks + BATCH * 32 * 3
    assert count_macs(model, {"pixel_values": images(BATCH)}) == want


class _Probe(nn.Module):
    """Records the mode it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.seen: list[tuple[bool, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(
            (self.training, torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        )
        return self.linear(x)


def test_counts_in_eval_and_inference_mode_and_leaves_the_modes_as_they_were():
    model = _Probe().train()
    model.linear.eval()  # a mixed model stays mixed
    assert count_macs(model, torch.randn(3, 4)) == 3 * 4 * 4
    assert model.seen == [(False, True, False)]
    assert model.training and not model.linear.training
    assert torch.backends.mha.get_fastpath_enabled()


def test_a_failing_forward_leaves_the_modes_as_they_were():
    model = nn.Linear(4, 4).train()
    with pytest.raises(RuntimeError):
        count_macs(model, torch.randn(3, 5))
    assert model.training and torch.backends.mha.get_fastpath_enabled()
