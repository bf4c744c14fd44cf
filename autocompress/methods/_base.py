"""What every compression method shares: declared parameters, the stage, the context it runs in.

A method is a frozen dataclass whose fields are its settings, validated in ``__post_init__``.
It declares its searchable parameters in ``SEARCH`` (kind, default, allowed choices or
bounds, help), the ``stage`` of the pipeline it belongs to, how it applies to a model
(:meth:`Method.apply`, which writes what it decided to ``ctx.records`` so that a recipe can
replay it exactly) and a one-line description. The one dict of methods is
:data:`autocompress.methods.METHODS`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

from torch import nn

from autocompress.data import Inputs, Split
from autocompress.params import Param as Param  # re-exported: methods declare with it
from autocompress.tasks import Task

if TYPE_CHECKING:
    from autocompress.architecture import ModelFacts
    from autocompress.pipeline import CompressionConfig

STAGES = ("prune", "train", "quantize", "deploy")
HOW = ("kept", "renamed", "split")


@dataclass(frozen=True)
class Origin:
    """Where a layer or parameter of the model being compressed comes from in the baseline.

    Attributes:
        baseline: The baseline's name of the layer (or parameter) it comes from.
        how: ``kept`` (same name), ``renamed`` (depth pruning renumbered its block) or
            ``split`` (one of the ``parts`` layers a method replaced it with, e.g. low-rank
            factors).
        part: Which part (0-based) of a split layer.
        parts: How many parts the baseline layer was split into (1 when not split).
    """

    baseline: str
    how: str = "kept"
    part: int = 0
    parts: int = 1

    def __post_init__(self) -> None:
        if self.how not in HOW:
            raise ValueError(f"how must be one of {HOW}, got {self.how!r}")
        if not 0 <= self.part < self.parts:
            raise ValueError(f"part {self.part} of {self.parts} is out of range")

    @property
    def last(self) -> bool:
        """Whether this layer makes the baseline layer's outputs (a kept layer, a last part)."""
        return self.part == self.parts - 1

    def describe(self) -> str:
        """``split part 1 of 2 of fc``-style words, for notes."""
        if self.how == "split":
            return f"part {self.part + 1} of {self.parts} of {self.baseline}"
        return self.how if self.how == "kept" else f"renamed from {self.baseline}"


@dataclass
class Context:
    """What a method may read while it applies, and where it writes what it decided.

    Attributes:
        task: The workload's task (loss, distillation loss, metric).
        example_input: One batch of inputs the model accepts.
        train: The training split (fine-tuning, calibration); never validation or test.
        facts: Architecture facts of the baseline (layers, output layers, blocks, heads).
        config: The whole configuration, so a method can see the others (e.g. fine-tuning
            reads the distillation and the weight plan).
        teacher: The uncompressed model, for distillation.
        calibration: Calibration inputs from the training split (built on first use).
        replay: Records of an earlier run to reproduce exactly (a recipe, a stored artifact);
            empty in a new trial.
        records: What each method decided, by method name (written by ``apply``).
        notes: Facts a user should know about the result (what gave no speed-up, what was
            left whole).
        seed: Seed of every random choice.
        on_epoch: Called after each fine-tuning epoch with ``(epoch, mean loss, model)``.
        teacher_outputs: Cache of the teacher's outputs on the training split.
        scales: Scales of the weights the quantize stage put on a grid, by parameter name
            (the packed artifact stores exactly those codes).
        distill_data: Unlabeled inputs for distillation
            (:class:`~autocompress.corpus.DistillData`), or ``None``.
        corpus_teacher: The teacher's outputs on ``distill_data``
            (:class:`~autocompress.corpus.CorpusTeacher`), made on first use.
        renamed: Modules of the baseline that now have another name, or none (``None``), by
            their baseline name: depth pruning removes blocks and renumbers the rest. Methods
            that read names from ``facts`` map them with :meth:`current_name`.
        splits: Baseline layers a method replaced with several layers, and how many: the parts
            are the children ``0``, ``1``, ... of the layer's current name (low-rank factors).

    Methods see the model *as it is now*: they iterate its current layers and parameters
    (:meth:`layers`, :meth:`params`) and read each one's baseline origin (:meth:`origin`)
    for settings keyed by baseline names (per-layer amounts and bits).
    """

    task: Task
    example_input: Inputs
    train: Split | None
    facts: ModelFacts
    config: CompressionConfig
    teacher: nn.Module | None = None
    calibration_rows: int = 256
    replay: Mapping[str, Any] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seed: int = 0
    on_epoch: Callable[[int, float, nn.Module], None] | None = None
    teacher_outputs: Any = None
    scales: dict[str, Any] = field(default_factory=dict)
    renamed: dict[str, str | None] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    distill_data: Any = None
    corpus_teacher: Any = None
    _calibration: list[Inputs] | None = None

    @property
    def calibration(self) -> list[Inputs]:
        """Input batches of the training split's first ``calibration_rows`` examples."""
        if self._calibration is None:
            from autocompress.data import input_batches

            if self.train is None:
                raise ValueError("calibration needs the training split")
            self._calibration = input_batches(self.train, self.calibration_rows)
        return self._calibration

    def current_name(self, name: str) -> str | None:
        """The name in the model being compressed of the baseline's module or parameter
        ``name``, or ``None`` when it was removed."""
        for old, new in self.renamed.items():
            if name == old or name.startswith(old + "."):
                return None if new is None else new + name[len(old) :]
        return name

    def split(self, layer: str, parts: int) -> None:
        """Record that the current layer ``layer`` was replaced by ``parts`` child layers
        ``layer.0`` ... (by the method calling this)."""
        self.splits[self.origin(layer).baseline] = parts

    def origin(self, name: str) -> Origin:
        """Where the current layer or parameter ``name`` comes from in the baseline.

        A parameter of a split part is traced to the baseline layer's parameter of the same
        key: ``fc.1.weight`` of a layer ``fc`` split in two comes from ``fc.weight``.
        """
        base = name
        for old, new in self.renamed.items():
            if new is not None and (name == new or name.startswith(new + ".")):
                base = old + name[len(new) :]
                break
        how = "kept" if base == name else "renamed"
        for layer, parts in self.splits.items():
            if base.startswith(layer + "."):
                head, _, rest = base[len(layer) + 1 :].partition(".")
                if head.isdigit() and int(head) < parts:
                    return Origin(f"{layer}.{rest}" if rest else layer, "split", int(head), parts)
        return Origin(base, how)

    def layers(self, model: nn.Module) -> dict[str, Origin]:
        """The model's current conv and linear layers, each with its baseline origin."""
        from autocompress.architecture import weight_layers

        return {n: self.origin(n) for n, _ in weight_layers(model)}

    def params(self, model: nn.Module, roles: tuple[str, ...]) -> dict[str, Origin]:
        """The model's current parameters whose role is one of ``roles`` (tied ones once),
        each with its baseline origin."""
        from autocompress.architecture import parameter_inventory

        return {p.name: self.origin(p.name) for p in parameter_inventory(model) if p.role in roles}


class Suggester:
    """What a method's :meth:`Method.suggest` asks: the values of its parameters in a trial.

    Implemented by :class:`autocompress.search_space.SearchSpace` for one trial.

    Attributes:
        facts: The baseline's architecture facts (layer names, transformer parts).
        chosen: Methods already chosen for this trial, by name (earlier in ``METHODS``).
        runtime: The target's runtime (a name in :data:`autocompress.runtimes.RUNTIMES`): a
            method may ask only for the settings that runtime uses.
        profile: The study's sensitivity profile (:mod:`autocompress.sensitivity`), measured
            once when the study was created, or ``None`` outside a study that has one.
    """

    facts: ModelFacts
    chosen: dict[str, Method]
    runtime: str = "torch"
    profile: Mapping[str, Any] | None = None

    def __call__(self, param: str, keep: Callable[[Any], bool] | None = None) -> Any:
        """The value of the method's parameter ``param`` (suggested, or fixed by the space),
        among its choices that ``keep`` accepts when given."""
        raise NotImplementedError

    def per_layer(self, param: str, layer: str, keep: Callable[[Any], bool] | None = None) -> Any:
        """A value of ``param``'s dimension suggested separately for ``layer`` (its choices
        filtered by ``keep`` when given)."""
        raise NotImplementedError

    def choices(self, param: str) -> tuple[Any, ...] | None:
        """The values the space offers for ``param`` (``None`` for a range), asking nothing."""
        raise NotImplementedError


class Method:
    """Base of the method dataclasses: parameter plumbing shared by all of them."""

    stage: ClassVar[str] = "prune"
    SEARCH: ClassVar[dict[str, Param]] = {}
    # What the method does to the file a runtime loads: "always" changes it (shapes, kernels,
    # precision), "never" (only weight values: zeros, fine-tuned values; the file keeps its
    # size and speed), "low_bit" where the runtime keeps low-bit weights (Runtime.LOW_BIT_WEIGHTS).
    CHANGES_DEPLOYED: ClassVar[str] = "always"

    def apply(self, model: nn.Module, ctx: Context) -> None:
        """Apply the method to ``model`` in place; record decisions in ``ctx.records``."""
        raise NotImplementedError

    def describe(self) -> str:
        """One short phrase for tables, e.g. ``heads -50%``."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The method's settings as plain values (its recipe form)."""
        return dict(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Method:
        """Inverse of :meth:`params`; unknown names are an error.

        Raises:
            ValueError: An unknown or invalid setting.
        """
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(names))}")
        return cls(**params)

    @classmethod
    def suggest(cls, s: Suggester) -> Method | None:
        """This method's settings for one trial (``None``: not applied in this trial).

        By default, one value per declared parameter that is a field.
        """
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: s(k) for k in cls.SEARCH if k in names})

    @classmethod
    def unavailable(cls, facts: ModelFacts) -> str | None:
        """Why this method cannot apply to the model, or ``None`` when it can."""
        return None

    @classmethod
    def check_replay(cls, recorded: Any, got: Any) -> str | None:
        """Why a rebuild's decisions ``got`` differ from the ``recorded`` ones a recipe
        replayed, or ``None`` when they agree. By default, equal as JSON values."""
        if _plain(recorded) == _plain(got):
            return None
        return "the rebuilt model's decisions differ from the recipe's (another model?)"

    # Warm starts (:meth:`autocompress.search_space.SearchSpace.warm_starts`) switch off every
    # method they do not name, where the space lets them (``WARM_START_OFF``; not a runtime's
    # own settings). A start is dropped when the space always applies such a method that
    # defines what a start is (``WARM_START_REQUIRED_OFF``: pruning, quantization), and kept
    # with it on otherwise (methods on top of any start: transformer pruning, training).
    WARM_START_OFF: ClassVar[bool] = True
    WARM_START_REQUIRED_OFF: ClassVar[bool] = False

    # Header of this method's column in a trial note's per-layer table (``None``: none).
    LAYER_COLUMN: ClassVar[str | None] = None

    @classmethod
    def layer_cells(cls, record: Any, widths: Mapping[str, int]) -> dict[str, str]:
        """This method's cell of each layer of a trial's per-layer table, by layer name.

        Args:
            record: What the method recorded in the trial.
            widths: Output channels of each baseline layer (may be empty).
        """
        return {}


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


ALLOCATIONS = ("sensitivity", "sampled")


def allocation_param(what: str) -> Param:
    """The ``allocation`` parameter of a method with per-layer settings."""
    return Param(
        str, "sensitivity",
        f"per layer: {what} from the study's sensitivity profile, or sampled per layer",
        choices=ALLOCATIONS,
    )  # fmt: skip


def profile_part(s: Suggester, key: str, method: str) -> Mapping[str, Any]:
    """The part ``key`` of the study's sensitivity profile a method allocates from.

    Raises:
        ValueError: The suggester has no profile with that part (outside a study).
    """
    part = None if s.profile is None else s.profile.get(key)
    if part is None:
        raise ValueError(
            f"{method}: allocation 'sensitivity' needs the sensitivity profile a study measures "
            "when it is created; outside a study use allocation: sampled"
        )
    return cast(Mapping[str, Any], part)


def fraction(value: float, name: str, high: float = 0.95) -> None:
    """Raise unless ``0 <= value <= high``."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= high:
        raise ValueError(f"{name} must be a number in [0, {high}], got {value!r}")
