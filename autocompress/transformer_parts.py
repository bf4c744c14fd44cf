"""Where a transformer keeps its blocks, attention heads and MLPs.

Recognised: Hugging Face BERT-style encoders (``query``/``key``/``value`` + an output
``dense``), GPT-2-style decoders (fused ``c_attn`` + ``c_proj``, ``Conv1D``),
``nn.MultiheadAttention`` (fused ``in_proj_weight`` + ``out_proj``) and
``nn.TransformerEncoderLayer``. Anything else is not a transformer to the methods that need
one (head, MLP-width and depth pruning), which then say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


def _hf_conv1d() -> tuple[type[nn.Module], ...]:
    """transformers' ``Conv1D`` (GPT-2's linear layer, weight stored [in, out]) when installed."""
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # noqa: BLE001 - transformers is optional; any import failure means none
        return ()
    return (Conv1D,)


# Below the architecture facts (which find these parts): the one place that asks transformers.
HF_CONV1D = _hf_conv1d()


@dataclass
class Attention:
    """One attention module.

    Attributes:
        name: Its module name.
        kind: ``bert`` (separate q/k/v Linear + output dense), ``gpt2`` (fused c_attn /
            c_proj Conv1D) or ``mha`` (``nn.MultiheadAttention``).
        num_heads: Heads it has now.
        head_dim: Width of one head.
        projections: Names of its projection layers (q, k, v, output), relative to the model.
    """

    name: str
    kind: str
    num_heads: int
    head_dim: int
    projections: tuple[str, ...] = ()


@dataclass
class Mlp:
    """The feed-forward part of a block: ``up`` widens, ``down`` narrows back."""

    up: str
    down: str


@dataclass
class TransformerParts:
    """A transformer's repeated blocks and what is inside them.

    Attributes:
        blocks_path: Module name of the ``nn.ModuleList`` holding the blocks.
        blocks: Names of the blocks, in order.
        attention: The attention module of each block (same order).
        mlps: The MLP of each block, where recognised.
    """

    blocks_path: str
    blocks: list[str]
    attention: list[Attention] = field(default_factory=list)
    mlps: list[Mlp] = field(default_factory=list)

    def attention_layer_names(self) -> set[str]:
        """Every projection layer inside attention (kept out of channel pruning)."""
        names: set[str] = set()
        for a in self.attention:
            names.update(a.projections)
        return names


def _attention(name: str, module: nn.Module) -> Attention | None:
    if isinstance(module, nn.MultiheadAttention):
        heads = module.num_heads
        return Attention(name, "mha", heads, module.head_dim, (f"{name}.out_proj",))
    children = dict(module.named_children())
    if {"query", "key", "value"} <= set(children) and all(
        isinstance(children[k], nn.Linear) for k in ("query", "key", "value")
    ):
        heads = getattr(module, "num_attention_heads", None)
        head_dim = getattr(module, "attention_head_size", None)
        if heads is None or head_dim is None:
            return None
        return Attention(
            name,
            "bert",
            int(heads),
            int(head_dim),
            tuple(f"{name}.{k}" for k in ("query", "key", "value")),
        )
    if HF_CONV1D and isinstance(children.get("c_attn"), HF_CONV1D) and "c_proj" in children:
        heads = getattr(module, "num_heads", None)
        head_dim = getattr(module, "head_dim", None)
        if heads is None or head_dim is None:
            return None
        return Attention(
            name, "gpt2", int(heads), int(head_dim), (f"{name}.c_attn", f"{name}.c_proj")
        )
    return None


def _find_attention(root: str, module: nn.Module) -> Attention | None:
    for sub_name, sub in module.named_modules():
        full = f"{root}.{sub_name}" if sub_name else root
        found = _attention(full, sub)
        if found is not None:
            if found.kind == "bert":
                # BERT's attention output projection lives beside the self-attention module.
                parent = full.rsplit(".", 1)[0]
                out = dict(module.named_modules()).get(
                    parent.removeprefix(root).lstrip(".") + ".output.dense"
                    if parent != root
                    else "output.dense"
                )
                if isinstance(out, nn.Linear):
                    found.projections = (*found.projections, f"{parent}.output.dense")
            return found
    return None


def _find_mlp(root: str, block: nn.Module) -> Mlp | None:
    mods = dict(block.named_modules())
    pairs = (
        ("intermediate.dense", "output.dense"),  # BERT
        ("mlp.c_fc", "mlp.c_proj"),  # GPT-2
        ("linear1", "linear2"),  # nn.TransformerEncoderLayer
        ("mlp.fc1", "mlp.fc2"),
        ("mlp.0", "mlp.2"),
    )
    for up, down in pairs:
        if up in mods and down in mods:
            return Mlp(f"{root}.{up}", f"{root}.{down}")
    return None


def find_transformer_parts(model: nn.Module) -> TransformerParts | None:
    """The model's blocks, attention and MLPs, or ``None`` when it has no attention blocks.

    The blocks are the longest ``nn.ModuleList`` of two or more modules of one type, each
    holding an attention module.
    """
    best: TransformerParts | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 1:
            continue
        kinds = {type(m) for m in module}
        if len(kinds) != 1:
            continue
        blocks = [f"{name}.{i}" if name else str(i) for i in range(len(module))]
        attention = [_find_attention(b, m) for b, m in zip(blocks, module, strict=True)]
        if any(a is None for a in attention):
            continue
        mlps = [_find_mlp(b, m) for b, m in zip(blocks, module, strict=True)]
        parts = TransformerParts(
            name,
            blocks,
            [a for a in attention if a is not None],
            [m for m in mlps if m is not None] if all(mlps) else [],
        )
        if best is None or len(parts.blocks) > len(best.blocks):
            best = parts
    return best
