"""The model families users bring, each tiny, built here (no downloads), as workloads.

Referenced as ``tests.model_families:NAME`` (a user's ``module:function``) by the tests and by
``python -m benchmarks.model_families``. Data is synthetic but learnable, so a baseline trained
for a few epochs is better than chance and compression can visibly cost accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

from autocompress.data import TensorData
from autocompress.training import TrainingConfig
from autocompress.workload import Workload

IMAGE, CLASSES = 16, 4


def _images(n: int, seed: int, channels: int = 3) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randn(n, channels, IMAGE, IMAGE, generator=g) * 0.3
    half = IMAGE // 2
    for c in range(CLASSES):
        r, col = divmod(c, 2)
        x[y == c, :, r * half : (r + 1) * half, col * half : (col + 1) * half] += 1.0
    return TensorData(x, y)


class _Block(nn.Module):
    """Depthwise-separable residual block with batch norm (MobileNet-style)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.pw(torch.relu(self.bn1(self.dw(x)))))


def depthwise_cnn() -> nn.Module:
    """MobileNet-style: stem, two depthwise-separable residual blocks, pooled classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        _Block(32),
        _Block(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet() -> nn.Module:
    """A ResNet with strided shortcut convolutions."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        _BasicBlock(16, 16, 1),
        _BasicBlock(16, 32, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )


class TinyViT(nn.Module):
    """Patch embedding, class token, positional parameters, ``nn.MultiheadAttention`` blocks."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, patch: int = 4) -> None:
        super().__init__()
        n = (IMAGE // patch) ** 2
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([_ViTBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, 0]))


class _ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class EncoderClassifier(nn.Module):
    """``nn.TransformerEncoder`` over patch tokens."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.pos = nn.Parameter(torch.randn(1, (IMAGE // 4) ** 2, dim) * 0.02)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.encoder(tokens).mean(dim=1))


def _image_workload(factory, epochs: int = 4) -> Workload:  # noqa: ANN001
    return Workload(
        train=_images(256, 0),
        val=_images(96, 1),
        test=_images(96, 2),
        model_factory=factory,
        baseline_training=TrainingConfig(epochs=epochs, batch_size=32, lr=3e-3),
    )


def depthwise_cnn_workload() -> Workload:
    return _image_workload(depthwise_cnn)


def resnet_workload() -> Workload:
    return _image_workload(resnet)


def vit_workload() -> Workload:
    return _image_workload(TinyViT, epochs=15)  # attention learns slower than convolutions


def encoder_workload() -> Workload:
    return _image_workload(EncoderClassifier, epochs=15)


VOCAB, SEQ = 64, 16


def _token_data(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Sequences with a learnable rule (the next token is the previous one plus one, mod vocab)
    and a class label (the first token's parity); some right-padding."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    ids = (start + torch.arange(SEQ)) % VOCAB
    lengths = torch.randint(SEQ // 2, SEQ + 1, (n,), generator=g)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    return {"input_ids": ids, "attention_mask": mask, "class": (start[:, 0] % 2)}


def tiny_bert_config():  # noqa: ANN201
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=SEQ, num_labels=2,
        attn_implementation="eager",
    )  # fmt: skip


def _dict_batches(data: dict[str, torch.Tensor], labels: str | None, size: int = 32) -> list[dict]:
    out = []
    n = len(data["input_ids"])
    for i in range(0, n, size):
        batch = {k: data[k][i : i + size] for k in ("input_ids", "attention_mask")}
        if labels is not None:
            batch["labels"] = data[labels][i : i + size]
        out.append(batch)
    return out


def bert_workload() -> Workload:
    """Hugging Face ``BertForSequenceClassification`` from a tiny config, passed as it is, with
    lists of dict batches (``input_ids``, ``attention_mask``, ``labels``)."""
    from transformers import BertForSequenceClassification

    def factory() -> nn.Module:
        return BertForSequenceClassification(tiny_bert_config())

    return Workload(
        train=_dict_batches(_token_data(256, 0), "class"),
        val=_dict_batches(_token_data(96, 1), "class"),
        test=_dict_batches(_token_data(96, 2), "class"),
        model_factory=factory,
        baseline_training=TrainingConfig(epochs=4, batch_size=32, lr=2e-3),
    )


class _DictDataset(torch.utils.data.Dataset):
    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data["input_ids"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.data["input_ids"][i],
            "attention_mask": self.data["attention_mask"][i],
        }


def gpt2_workload() -> Workload:
    """A tiny causal LM (Hugging Face GPT-2 config) with DataLoaders of dict batches; the metric
    is perplexity (lower is better)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def factory() -> nn.Module:
        config = GPT2Config(  # type: ignore[call-arg]  # attn_implementation: PretrainedConfig's **kwargs
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=SEQ,
            use_cache=False, attn_implementation="eager", bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        return GPT2LMHeadModel(config)

    def loader(n: int, seed: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(_DictDataset(_token_data(n, seed)), batch_size=16)

    return Workload(
        train=loader(256, 0),
        val=loader(64, 1),
        test=loader(64, 2),
        model_factory=factory,
        baseline_training=TrainingConfig(epochs=3, batch_size=16, lr=3e-3),
        task="language-modeling",
    )


FAMILIES = {
    "depthwise-cnn": "tests.model_families:depthwise_cnn_workload",
    "resnet": "tests.model_families:resnet_workload",
    "vit-mha": "tests.model_families:vit_workload",
    "transformer-encoder": "tests.model_families:encoder_workload",
    "hf-bert": "tests.model_families:bert_workload",
    "hf-gpt2-lm": "tests.model_families:gpt2_workload",
}
