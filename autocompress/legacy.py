"""Reading what earlier versions wrote: format-1 search spaces and trial configurations.

Studies, artifacts and recipes made before compression methods became units stored their
configuration as four fixed sections (``prune``, ``finetune``, ``distill``, ``quantize``) and
their search spaces as ``pruning`` / ``quantization`` / ``distillation`` / ``finetune``. Both
convert to today's form, so nothing a study recorded is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def config_from_v1(d: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 trial configuration as today's ``{"format": 2, "methods", "seed"}``.

    Raises:
        ValueError: It is not a format-1 configuration either.
    """
    if not {"prune", "quantize"} <= set(d):
        raise ValueError("not a compression configuration (no methods and no format-1 sections)")
    methods: dict[str, Any] = {}
    prune = d.get("prune") or {}
    if prune.get("method") in ("structured", "unstructured") and (
        prune.get("amount") or prune.get("layer_amounts")
    ):
        layer_amounts = dict(prune.get("layer_amounts") or {})
        if prune["method"] == "unstructured":
            layer_amounts = {f"{k}.weight" if k else "weight": v for k, v in layer_amounts.items()}
        methods[prune["method"]] = {
            "amount": prune.get("amount", 0.0),
            "layer_amounts": layer_amounts,
        }
    quantize = d.get("quantize") or {}
    bits = int(quantize.get("weight_bits", 32))
    if bits < 32:
        methods["weights"] = {
            "bits": bits,
            "granularity": quantize.get("granularity", "per_channel"),
            "algorithm": "rtn",
            "keep_edges_8bit": bool(quantize.get("keep_edges_8bit", True)),
            "embeddings": False,
            "layer_bits": {
                f"{k}.weight" if k else "weight": v
                for k, v in dict(quantize.get("layer_bits") or {}).items()
            },
        }
    if quantize.get("int8_activations"):
        methods["int8"] = {
            "mode": "static",
            "per_channel": quantize.get("granularity", "per_channel") == "per_channel",
        }
    finetune = dict(d.get("finetune") or {})
    if finetune.get("epochs"):
        methods["finetune"] = finetune
        if d.get("distill"):
            methods["distillation"] = dict(d["distill"])
    return {"format": 2, "methods": methods, "seed": int(d.get("seed", 0))}


def _toggle(values: Any, on: Any) -> Any:
    """A format-2 ``enabled`` from a format-1 choice list (or scalar) and the value meaning on."""
    choices = values if isinstance(values, list) else [values]
    flags = sorted({c == on if not callable(on) else on(c) for c in choices})
    return flags[0] if len(flags) == 1 else flags


def space_from_v1(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 search-space document as a format-2 one (sections named after methods)."""
    out: dict[str, Any] = {"format_version": 2}
    if "description" in doc:
        out["description"] = doc["description"]
    pruning = dict(doc.get("pruning") or {})
    method = pruning.get("method", "none")
    for name in ("structured", "unstructured"):
        enabled = _toggle(method, name)
        if enabled is False:
            continue
        section = {"enabled": enabled}
        for key in ("amount", "per_layer", "layer_scale"):
            if key in pruning:
                section[key] = pruning[key]
        if "per_layer" in pruning:
            section["allocation"] = "sampled"  # what format 1 meant by per-layer
        out[name] = section
    quant = dict(doc.get("quantization") or {})
    bits = quant.get("weight_bits", 32)
    bit_list = bits if isinstance(bits, list) else [bits]
    kept = [b for b in bit_list if b != 32]
    if kept:
        weights: dict[str, Any] = {
            "enabled": _toggle(bit_list, lambda b: b != 32),
            "bits": kept if len(kept) > 1 else kept[0],
            "embeddings": False,
        }
        for key in ("granularity", "keep_edges_8bit", "per_layer"):
            if key in quant:
                weights[key] = quant[key]
        if "per_layer" in quant:
            weights["allocation"] = "sampled"
        out["weights"] = weights
        int8 = quant.get("int8_activations", False)
        if _toggle(int8, True) is not False:
            out["int8"] = {"enabled": _toggle(int8, True)}
    finetune = dict(doc.get("finetune") or {})
    epochs = finetune.get("epochs", 0)
    if epochs not in (0, [0]) and epochs != {"low": 0, "high": 0}:
        out["finetune"] = {"enabled": True, **finetune}
        distill = dict(doc.get("distillation") or {})
        enabled = distill.pop("enabled", False)
        if _toggle(enabled, True) is not False:
            out["distillation"] = {"enabled": _toggle(enabled, True), **distill}
    return out
