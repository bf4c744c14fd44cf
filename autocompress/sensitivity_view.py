"""The stored sensitivity profile as readers see it: sections, rows, columns and a legend.

A leaf module (no torch): ``autocompress sensitivity`` prints these tables and the report draws
them. The profile itself is measured by :mod:`autocompress.sensitivity` when a study with
per-layer allocation by sensitivity is created, and kept in the study's record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autocompress.record import SENSITIVITY

# (profile key, the method it measures, what one number is, how a column is headed)
SECTIONS = (
    ("bits", "weights", "only this weight rounded to nearest at that many bits", "bits"),
    ("prune", "unstructured", "only this weight's smallest-magnitude share zeroed", "pruned"),
    ("channels", "structured", "only this layer's lowest-L2-norm share of output channels zeroed",
     "channels"),
    ("heads.magnitude", "heads", "only this attention module's lowest-weight-norm share of heads "
     "removed", "heads"),
    ("heads.activation", "heads", "only this attention module's share of heads of least mean "
     "|output| removed", "heads"),
    ("mlp.magnitude", "mlp", "only this block's lowest-weight-norm share of MLP neurons removed "
     "(params: the MLP's widening layer; its narrowing layer has as many)", "neurons"),
    ("mlp.activation", "mlp", "only this block's share of MLP neurons of least mean |activation| "
     "removed (params: the MLP's widening layer; its narrowing layer has as many)", "neurons"),
    ("depth", "depth", "only this block skipped (its input passed on unchanged)", ""),
)  # fmt: skip
# What a row of a method's section is, where it is not a weight.
_NOUNS = {"structured": "layer", "heads": "attention", "mlp": "MLP", "depth": "block"}
SORTS = ("sensitivity", "model")
NO_PROFILE_HINT = (
    "one is measured when a study is created with per-layer allocation by sensitivity "
    "(per_layer: true and allocation: sensitivity, the default, in the weights, structured, "
    "unstructured, heads or mlp section; e.g. search_spaces/per_layer.yaml)"
)


@dataclass(frozen=True)
class ProfileRow:
    """One weight or layer of a section.

    Attributes:
        name: The parameter (``fc1.weight``) or layer (``fc1``) name, as stored.
        params: Its number of weights (``None`` in profiles of earlier versions).
        increases: Loss increase at each of the section's settings (``None`` where not measured).
    """

    name: str
    params: int | None
    increases: tuple[float | None, ...]

    @property
    def worst(self) -> float:
        """The largest loss increase of the row (how the table ranks sensitivity)."""
        measured = [v for v in self.increases if v is not None and math.isfinite(v)]
        return max(measured) if measured else -math.inf


@dataclass(frozen=True)
class ProfileSection:
    """One kind of measurement of the profile: a table of rows by settings.

    Attributes:
        key: ``bits``, ``prune``, ``channels``, ``heads.magnitude``, ... (the profile's key).
        method: The method it measures (whose per-layer allocation reads it; depth pruning
            reads none).
        what: What one number measures, in words.
        settings: The settings as stored (``"8"``, ``"0.25"``), in the profile's order.
        headers: The settings as columns are headed (``8 bits``, ``25% pruned``).
        rows: In the model's order (the profile's).
    """

    key: str
    method: str
    what: str
    settings: tuple[str, ...]
    headers: tuple[str, ...]
    rows: tuple[ProfileRow, ...]

    def __post_init__(self) -> None:
        if len(self.settings) != len(self.headers):
            raise ValueError("one header per setting")
        if any(len(r.increases) != len(self.settings) for r in self.rows):
            raise ValueError("one loss increase per setting in every row")

    @property
    def noun(self) -> str:
        """What a row is (a table's first header): weight, layer, attention, MLP or block."""
        return _NOUNS.get(self.method, "weight")

    def sorted_rows(self, by: str = "sensitivity") -> list[ProfileRow]:
        """Rows most sensitive first (largest increase in the row; ties in model order), or in
        the model's order."""
        if by not in SORTS:
            raise ValueError(f"sort by one of {SORTS}, got {by!r}")
        if by == "model":
            return list(self.rows)
        return sorted(self.rows, key=lambda r: -r.worst)  # stable: ties keep model order


def study_profile(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """The study's sensitivity profile, or ``None`` when its space asked for none."""
    profile = info.get(SENSITIVITY)
    return profile if isinstance(profile, dict) else None


def _header(key: str, setting: str, word: str) -> str:
    if key == "bits":
        return f"{setting} {word}"
    if not word:  # depth: the setting is a word
        return setting
    return f"{float(setting):.0%} {word}"


def profile_sections(profile: Mapping[str, Any]) -> list[ProfileSection]:
    """The sections the profile holds, in the order weights, unstructured, structured, heads,
    MLP, depth."""
    params = profile.get("params") or {}
    out = []
    for key, method, what, word in SECTIONS:
        curves = profile.get(key)
        if not isinstance(curves, dict) or not curves:
            continue
        settings = tuple(dict.fromkeys(s for curve in curves.values() for s in curve))
        rows = tuple(
            ProfileRow(
                name=name,
                params=params.get(name),
                increases=tuple(
                    None if curve.get(s) is None else float(curve[s]) for s in settings
                ),
            )
            for name, curve in curves.items()
        )
        headers = tuple(_header(key, s, word) for s in settings)
        out.append(ProfileSection(key, method, what, settings, headers, rows))
    return out


def legend(info: Mapping[str, Any], profile: Mapping[str, Any]) -> str:
    """What the numbers are, in one paragraph: loss, data, baseline, when, how long."""
    calibration = profile.get("calibration") or {}
    rows, split = calibration.get("rows", "?"), calibration.get("split", "train")
    task = (info.get("task") or {}).get("name", "the task")
    base = profile.get("base_loss")
    base_words = f" ({base:.4g})" if base is not None else ""
    request = profile.get("request") or {}
    grid = (
        f", weights on a {request['granularity']} grid"
        if request.get("granularity") and request.get("bits")
        else ""
    )
    took = f", in {profile['seconds']:.3g} s" if profile.get("seconds") else ""
    return (
        f"Increase of the {task} loss over the uncompressed model's{base_words} when one "
        "weight, layer or transformer block alone is compressed, the rest left as it is; "
        f"measured once, when the study was created, on the first {rows} examples of the {split} "
        f"split{grid}{took}. Higher is more sensitive: per-layer allocation spends bits and "
        "keeps weights where the increase is large. A negative number is a loss that went "
        "down (noise)."
    )


def format_increase(value: float | None) -> str:
    """A loss increase as tables print it (4 significant digits)."""
    return "-" if value is None else f"{value:.4g}"


def format_params(value: int | None) -> str:
    """A parameter count as tables print it."""
    return "-" if value is None else f"{value:,}"


__all__ = [
    "NO_PROFILE_HINT",
    "SECTIONS",
    "SORTS",
    "ProfileRow",
    "ProfileSection",
    "format_increase",
    "format_params",
    "legend",
    "profile_sections",
    "study_profile",
]
