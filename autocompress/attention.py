"""``nn.MultiheadAttention`` over a subset of its heads, computed from its own parameters.

``nn.MultiheadAttention`` ties its heads to its width: ``num_heads * head_dim == embed_dim``,
checked in its constructor and in ``F.multi_head_attention_forward``. The width is the
residual stream's, which must stay, so heads cannot be removed by slicing its projections
alone. :class:`SlicedMultiheadAttention` lifts that tie: same parameters under the same names
(``in_proj_weight`` ``[3 * heads * head_dim, embed_dim]``, ``in_proj_bias``, ``out_proj``),
same call, same results, any number of heads. Its forward has no constant sequence length, so
it is also what the ONNX export runs in place of a whole ``nn.MultiheadAttention``, whose
traced form bakes the example's sequence length in (pytorch/pytorch#117209).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


def unsupported(mha: nn.MultiheadAttention) -> str | None:
    """Why ``mha`` cannot be computed head by head here, or ``None`` when it can."""
    if not mha._qkv_same_embed_dim and mha.in_proj_weight is None:
        return "separate key/value widths (kdim/vdim)"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "add_bias_kv or add_zero_attn"
    return None


class SlicedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` keeping the heads ``kept_heads`` of an original module.

    Built by :meth:`convert` from a whole module, never by its constructor (which cannot make
    a head count that does not divide ``embed_dim``). ``embed_dim``, ``head_dim``, the input
    and output widths are unchanged; ``num_heads`` is the number of heads kept.

    Attributes:
        kept_heads: The original module's heads this one computes, in order (a per-head
            ``attn_mask`` of the original ``[batch * heads, L, S]`` shape is sliced to them).
        original_heads: The original module's number of heads.
    """

    kept_heads: tuple[int, ...]
    original_heads: int

    @classmethod
    def convert(
        cls, mha: nn.MultiheadAttention, keep: Sequence[int] | None = None
    ) -> SlicedMultiheadAttention:
        """Turn ``mha`` into this class in place, keeping the heads ``keep`` (all by default).

        Raises:
            ValueError: ``mha`` is not supported (see :func:`unsupported`), or ``keep`` is
                empty or names heads it does not have.
        """
        reason = unsupported(mha)
        if reason is not None:
            raise ValueError(f"attention with {reason} cannot be sliced by heads")
        current = tuple(getattr(mha, "kept_heads", range(mha.num_heads)))
        positions = list(range(mha.num_heads)) if keep is None else sorted(set(keep))
        if not positions or positions[0] < 0 or positions[-1] >= mha.num_heads:
            raise ValueError(f"cannot keep heads {list(keep or [])} of {mha.num_heads}")
        d = mha.head_dim
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in positions])
        inner = mha.num_heads * d
        with torch.no_grad():
            qkv_rows = torch.cat([rows, rows + inner, rows + 2 * inner])
            mha.in_proj_weight = nn.Parameter(mha.in_proj_weight[qkv_rows].clone())
            if mha.in_proj_bias is not None:
                mha.in_proj_bias = nn.Parameter(mha.in_proj_bias[qkv_rows].clone())
            out = mha.out_proj
            out.weight = nn.Parameter(out.weight[:, rows].clone())
            out.in_features = len(rows)
        original = getattr(mha, "original_heads", mha.num_heads)
        mha.__class__ = cls
        sliced = cast(SlicedMultiheadAttention, mha)  # the same object, now of this class
        sliced.kept_heads = tuple(current[p] for p in positions)
        sliced.original_heads = original
        sliced.num_heads = len(positions)
        # False keeps nn.TransformerEncoderLayer off its fused kernel, which assumes
        # num_heads * head_dim == embed_dim.
        sliced._qkv_same_embed_dim = False
        return sliced

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As :meth:`nn.MultiheadAttention.forward`."""
        unbatched = query.dim() == 2
        context, weights = head_outputs(
            self, query, key, value, key_padding_mask, attn_mask, is_causal, need_weights
        )
        out = F.linear(context.flatten(-2), self.out_proj.weight, self.out_proj.bias)
        if not self.batch_first and not unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(0)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (``True``: not attended) as an additive one."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def head_outputs(
    mha: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each head's output before the output projection, ``[batch, L, heads, head_dim]``, and
    the attention weights ``[batch, heads, L, S]`` when ``need_weights``.

    Works on a whole ``nn.MultiheadAttention`` too (the activation score of head pruning).
    """
    heads, d = mha.num_heads, mha.head_dim
    if query.dim() == 2:  # unbatched: [L, E]
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif not mha.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    w, b = mha.in_proj_weight, mha.in_proj_bias
    # unflatten + unbind rather than chunk: torch-pruning's tracer (structured pruning after
    # head pruning) follows these, while chunk's split made its dependency search blow up.
    if query is key and key is value:  # self-attention: one matrix product
        q, k, v = F.linear(query, w, b).unflatten(-1, (3, -1)).unbind(-2)
    else:
        wq, wk, wv = w.unflatten(0, (3, -1)).unbind(0)
        bq, bk, bv = b.unflatten(0, (3, -1)).unbind(0) if b is not None else (None, None, None)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
    # unflatten keeps the sequence length symbolic in a traced or exported graph
    q, k, v = (t.unflatten(-1, (heads, d)).transpose(1, 2) for t in (q, k, v))
    mask = _additive(key_padding_mask, q.dtype)
    if mask is not None:
        mask = mask[:, None, None, :]
    extra = _additive(attn_mask, q.dtype)
    if extra is not None:
        if extra.dim() == 3:  # per head: [batch * original heads, L, S]
            original = getattr(mha, "original_heads", heads)
            extra = extra.unflatten(0, (-1, original))
            kept = getattr(mha, "kept_heads", None)
            if kept is not None and len(kept) != original:
                extra = extra[:, list(kept)]
        mask = extra if mask is None else mask + extra
    dropout = mha.dropout if mha.training else 0.0
    if not need_weights:
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None
        )
        return context.transpose(1, 2), None
    scores = q @ k.transpose(-2, -1) * d**-0.5
    if is_causal and mask is None:
        length, source = scores.shape[-2:]
        causal = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
        mask = _additive(causal, q.dtype)
    if mask is not None:
        scores = scores + mask
    weights = F.dropout(scores.softmax(dim=-1), dropout, training=dropout > 0)
    return (weights @ v).transpose(1, 2), weights


def width_problems(model: nn.Module) -> list[str]:
    """Where ``model``'s ``nn.MultiheadAttention`` modules break their own shape rules.

    A whole module needs ``embed_dim`` divisible by ``num_heads`` (``head_dim * num_heads ==
    embed_dim``, what its forward asserts) and projections of that width; a
    :class:`SlicedMultiheadAttention` needs projections of ``num_heads * head_dim`` rows.
    A method that leaves any of these broken leaves a model that cannot run.

    Returns:
        One phrase per problem, naming the module (empty when all hold).
    """
    problems = []
    for name, mha in model.named_modules():
        if not isinstance(mha, nn.MultiheadAttention):
            continue
        where = f"attention {name or '(model)'}"
        inner = mha.num_heads * mha.head_dim
        if not isinstance(mha, SlicedMultiheadAttention):
            if mha.num_heads < 1 or mha.embed_dim % mha.num_heads or inner != mha.embed_dim:
                problems.append(
                    f"{where}: embed_dim {mha.embed_dim} is not num_heads {mha.num_heads} x "
                    f"head_dim {mha.head_dim}"
                )
                continue
        w = mha.in_proj_weight
        if w is not None and tuple(w.shape) != (3 * inner, mha.embed_dim):
            problems.append(
                f"{where}: in_proj_weight is {list(w.shape)}, expected [{3 * inner}, "
                f"{mha.embed_dim}] for {mha.num_heads} heads of {mha.head_dim}"
            )
        if mha.out_proj.weight.shape[1] != inner:
            problems.append(
                f"{where}: out_proj reads {mha.out_proj.weight.shape[1]} features, the heads "
                f"give {inner}"
            )
    return problems
