"""A searchable parameter: what methods and runtimes declare in their ``SEARCH``.

It lives below both so that the search-space schema, labels and recipes read one kind of
declaration whichever unit declares it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """One searchable parameter of a method.

    Attributes:
        kind: ``bool``, ``int``, ``float`` or ``str``.
        default: What a search space that omits the parameter gets: a value, a list of
            choices or a ``{"low", "high"}`` range.
        help: One line for users.
        choices: The values allowed, when the parameter is categorical by nature.
        bounds: The closed range allowed, for numbers.
    """

    kind: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    bounds: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in (bool, int, float, str):
            raise TypeError(f"a parameter's kind is bool, int, float or str, not {self.kind}")
        if self.kind is bool and self.choices is None:
            object.__setattr__(self, "choices", (False, True))
