"""GPTQ (Frantar et al., ICLR 2023): round a linear layer's weights one input column at a time,
spreading each column's rounding error over the columns not yet rounded, weighted by the
inverse Hessian ``H = 2 X^T X`` of the layer's inputs on calibration data.

Used by weight quantization with ``algorithm: gptq``. The result lies exactly on the grid of
:mod:`autocompress.grid` (codes times the scales returned), so the packed artifact stores it
as it is. The Hessians of all layers are collected in one pass of the float model (the layers
do not see each other's rounding: the cheaper, "parallel" form of the method).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from autocompress.data import Inputs, call_model
from autocompress.grid import QuantSpec, absmax_scale, codes_for
from autocompress.transformer_parts import HF_CONV1D

DAMPING = 0.01  # share of the mean Hessian diagonal added to it (as the paper does)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or bool(HF_CONV1D and isinstance(module, HF_CONV1D))


def linear_inputs(
    model: nn.Module, weight_names: Iterable[str], calibration: list[Inputs]
) -> dict[str, torch.Tensor]:
    """``X^T X / n`` of the inputs of each named linear weight, over the calibration batches.

    Weights of other layers (convolutions, embeddings) are left out: they are rounded to
    nearest.
    """
    modules = dict(model.named_modules())
    owners = {}
    for name in weight_names:
        owner, _, attr = name.rpartition(".")
        if attr == "weight" and _is_linear(modules.get(owner, nn.Identity())):
            owners[owner] = name
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for owner, name in owners.items():

        def hook(_m: nn.Module, args: tuple[Any, ...], _out: object, name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]

        handles.append(modules[owner].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in calibration:
                call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: sums[name] / counts[name] for name in sums}


def gptq_quantize(
    weight: torch.Tensor, spec: QuantSpec, hessian: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ codes and scales of one linear weight.

    Args:
        weight: ``[out, in]`` (``nn.Linear``) or ``[in, out]`` (``spec.channel_axis == 1``).
        spec: The grid (bits, per-channel / per-tensor / group granularity).
        hessian: ``X^T X / n`` of the layer's inputs, ``[in, in]``.

    Returns:
        Codes (int32, the shape of ``weight``) and scales, as :func:`autocompress.grid.quantize`.
    """
    w = weight.detach().to(torch.float64)
    if spec.channel_axis == 1:
        w = w.T
    w = w.clone()
    columns = w.shape[1]
    h = hessian.to(torch.float64).clone()
    dead = torch.diag(h) == 0  # inputs that never fire: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += DAMPING * torch.mean(torch.diag(h)) * torch.eye(columns, dtype=h.dtype)
    try:
        upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError:  # not positive definite even after damping: round to nearest
        scale = absmax_scale(weight, spec)
        return codes_for(weight, scale, spec), scale
    row_spec = QuantSpec(spec.bits, spec.granularity)  # on the [out, in] view
    group = spec.group_size
    if group is None:
        scale = absmax_scale(w.to(torch.float32), row_spec)
        groups = None
    else:
        groups = []
    qmax = spec.qmax
    codes = torch.zeros_like(w, dtype=torch.int32)
    for i in range(columns):
        if group is not None and i % group == 0:
            block = w[:, i : i + group].abs().amax(dim=1).to(torch.float32) / qmax
            groups.append(block)
        if group is None:
            col_scale = scale if scale.dim() == 0 else scale
        else:
            col_scale = groups[-1]
        safe = torch.where(col_scale > 0, col_scale, torch.ones_like(col_scale)).to(torch.float64)
        q = torch.round(w[:, i] / safe).clamp(-qmax, qmax)
        codes[:, i] = q.to(torch.int32)
        err = (w[:, i] - q * safe) / upper[i, i]
        if i + 1 < columns:
            w[:, i + 1 :] -= err[:, None] * upper[i, i + 1 :][None, :]
    if group is not None:
        scale = torch.stack(groups, dim=1)
    if spec.channel_axis == 1:
        codes = codes.T.contiguous()
    return codes, scale.to(torch.float32)
