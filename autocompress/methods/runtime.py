"""The target runtime's own settings, searched beside the methods.

A deploy-stage entry whose parameters are those the runtimes declare
(:data:`autocompress.runtimes.RUNTIMES`): precision, graph fusion, int8 calibration knobs.
A trial asks only for the settings of the study's runtime, only those it uses with the
methods already chosen (SmoothQuant's alpha only with static int8), and only among the
choices this host offers (bf16 where the CPU has it); a value the space lists that the host
does not offer is left out of the search (the study says so when it starts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from autocompress.methods._base import Context, Method, Suggester
from autocompress.params import Param
from autocompress.runtimes import RUNTIMES, Runtime


def _merged_search() -> dict[str, Param]:
    """Every runtime's parameters under one name each (choices are the union)."""
    merged: dict[str, Param] = {}
    for cls in RUNTIMES.values():
        for key, param in cls.SEARCH.items():
            known = merged.get(key)
            if known is None:
                merged[key] = param
            elif known.kind is not param.kind:
                raise TypeError(f"runtimes declare {key!r} with two kinds")
            elif param.choices is not None and known.choices is not None:
                extra = tuple(c for c in param.choices if c not in known.choices)
                merged[key] = Param(
                    known.kind, known.default, known.help, choices=known.choices + extra
                )
    return merged


def host_choices(runtime: str, param: str, device: str = "cpu") -> tuple[Any, ...] | None:
    """The values of ``param`` the runtime offers on this host (``None``: any declared)."""
    return RUNTIMES[runtime].offered(param, device)


def not_offered(space: Any, runtime: str, device: str = "cpu") -> list[str]:
    """Warnings for the choices of the space's ``runtime`` section this host does not offer
    (they are left out of the search), e.g. ``runtime.precision: bf16 is not offered ...``."""
    if "runtime" not in getattr(space, "methods", ()):
        return []
    warnings = []
    own = RUNTIMES[runtime].SEARCH
    searched = [k for k in RuntimeSettings.SEARCH if space.dims[f"runtime.{k}"].searched]
    # The shipped spaces hold every runtime's settings; only a section that does nothing for
    # this study's runtime (none of its settings are this runtime's) is worth a word.
    if searched and not any(k in own for k in searched):
        warnings += [
            f"runtime.{k}: {runtime} has no such setting (another runtime's); ignored"
            for k in searched
        ]
    for key in RuntimeSettings.SEARCH:
        dim = space.dims[f"runtime.{key}"]
        if key not in own:
            continue
        values = dim.values()
        offered = host_choices(runtime, key, device) or own[key].choices
        if values is None or offered is None:
            continue
        missing = [str(v) for v in values if v not in offered]
        if missing:
            warnings.append(
                f"runtime.{key}: {', '.join(missing)} not offered by {runtime} on this "
                f"{device.upper()}; searching {', '.join(map(str, offered))}"
            )
    return warnings


def _keep(offered: tuple[Any, ...] | None, declared: tuple[Any, ...] | None) -> Any:
    """A filter of choices: those this host offers and the runtime declares."""

    def keep(value: Any) -> bool:
        return (offered is None or value in offered) and (declared is None or value in declared)

    return keep


@dataclass(frozen=True)
class RuntimeSettings(Method):
    """The settings a trial deploys with on its runtime.

    Attributes:
        runtime: The runtime's name in :data:`~autocompress.runtimes.RUNTIMES`.
        settings: Its settings that differ from the runtime's own defaults, by name.
    """

    runtime: str = "torch"
    settings: Mapping[str, Any] = field(default_factory=dict)

    WARM_START_OFF: ClassVar[bool] = False  # the runtime's settings, not a method to switch off
    stage: ClassVar[str] = "deploy"
    SEARCH: ClassVar[dict[str, Param]] = _merged_search()

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        self.build()  # validates the settings

    def build(self) -> Runtime:
        """The runtime with these settings.

        Raises:
            ValueError: A setting the runtime does not have, or a value it does not allow.
        """
        cls = RUNTIMES[self.runtime]
        unknown = sorted(set(self.settings) - set(cls.SEARCH))
        if unknown:
            raise ValueError(
                f"{self.runtime} has no setting {unknown[0]!r}; it takes "
                f"{', '.join(cls.SEARCH) or 'none'}"
            )
        return cls(**dict(self.settings))

    def params(self) -> dict[str, Any]:
        return {"runtime": self.runtime, **dict(self.settings)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Method:
        params = dict(params)
        runtime = params.pop("runtime", "torch")
        return cls(runtime=runtime, settings=params)

    @classmethod
    def suggest(cls, s: Suggester) -> Method | None:
        runtime = RUNTIMES[s.runtime]
        settings = {}
        for key, param in runtime.SEARCH.items():
            if runtime.asks(key, s.chosen, s.facts):
                keep = _keep(host_choices(s.runtime, key), param.choices)
                settings[key] = s(key, keep=keep)
        return cls(runtime=s.runtime, settings=settings)

    def describe(self) -> str:
        return self.build().describe()

    def apply(self, model: nn.Module, ctx: Context) -> None:
        """Nothing here: deployment builds the runtime's form with these settings."""
