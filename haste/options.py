"""The conversion options: one frozen record, ``Options``, whose fields carry their default, the values they accept
and what they do. ``haste.convert`` and ``HasteConv2d`` (their keywords, defaults, checks and docstrings), the
``haste evaluate`` / ``sweep`` / ``calibrate`` flags and sweep axes, and the model cards' ``"options"`` all read
them from here: adding an option is one field below plus the code that uses it."""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import textwrap
from collections.abc import Callable, Mapping
from typing import NamedTuple

from .functional import MERGES
from .levels import HYPERPLANES_LIMIT, MAX_HYPERPLANES
from .lsh import FAMILIES


@dataclasses.dataclass(frozen=True)
class Integer:
    """An int (not a bool) from ``low`` to ``high`` (None: no upper bound)."""

    low: int
    high: int | None = None

    def accepted(self) -> str:
        return (
            f"an integer from {self.low} to {self.high}" if self.high is not None else f"an integer {self.low} or more"
        )

    def valid(self, value: object) -> bool:
        return (
            not isinstance(value, bool) and isinstance(value, numbers.Integral)
            and value >= self.low and (self.high is None or value <= self.high)
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Number:
    """A real number (not a bool) in [``low``, ``high``); ``meaning`` is said with the range."""

    low: float
    high: float
    meaning: str = ""

    def accepted(self) -> str:
        return f"a number in [{self.low}, {self.high})" + (f" ({self.meaning})" if self.meaning else "")

    def valid(self, value: object) -> bool:
        return not isinstance(value, bool) and isinstance(value, numbers.Real) and self.low <= value < self.high


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of the strings ``choices``."""

    choices: tuple[str, ...]

    def accepted(self) -> str:
        return f"one of {', '.join(self.choices)}"

    def valid(self, value: object) -> bool:
        return isinstance(value, str) and value in self.choices


@dataclasses.dataclass(frozen=True)
class Flag:
    """True or False (a bool, not 0 or 1)."""

    def accepted(self) -> str:
        return "True or False"

    def valid(self, value: object) -> bool:
        return isinstance(value, bool)


class Option(NamedTuple):
    """One conversion option, as ``OPTIONS`` lists them: name, default, accepted values, a one-line help, whether
    ``HasteConv2d`` takes it (``layer``; else only ``convert`` does: it chooses which convs are converted),
    whether the commands have a flag for it (``flag``: ``--patch-size`` for ``patch_size``) and whether a model
    card's calibrated levels hold only for the value they were calibrated with (``calibrated``; an option that
    changes how a level runs, not what it computes, does not)."""

    name: str
    default: object
    accepts: Integer | Number | OneOf | Flag
    help: str
    layer: bool = True
    flag: bool = True
    calibrated: bool = True

    def check(self, value: object) -> None:
        """Raise ValueError, saying what is accepted, unless ``value`` is a valid value of this option."""
        if not self.accepts.valid(value):
            raise ValueError(f"{self.name} must be {self.accepts.accepted()}; got {value!r}")

    def describe(self) -> str:
        """'output tile side P, in pixels; an integer 1 or more (default 4)'."""
        return f"{self.help}; {self.accepts.accepted()} (default {shown(self.default)})"


def shown(value: object) -> str:
    """A default as the help texts show it: floats to 3 significant digits (0.667), the rest as they are."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _option(default: object, accepts: Integer | Number | OneOf | Flag, help: str, **where: bool):
    return dataclasses.field(default=default, metadata={"accepts": accepts, "help": help, **where})


@dataclasses.dataclass(frozen=True)
class Options:
    """The conversion options of ``haste.convert`` and ``HasteConv2d``, checked when the record is made (ValueError
    saying what is accepted). ``Options.from_mapping(d)`` reads a mapping (a card's ``"options"``: absent keys take
    the defaults, unknown ones raise TypeError), ``.replace(**changes)`` returns a checked copy, ``.as_dict()`` the
    JSON-ready dict. Each field's default, accepted values and help are in ``OPTIONS``."""

    patch_size: int = _option(4, Integer(1), "output tile side P, in pixels")
    sparsity: float = _option(
        2 / 3, Number(0, 1, "probability of a 0 entry"),
        "share of zero entries in the ternary hyperplanes (the paper: 2/3 on CIFAR, 1/2 on ImageNet)",
    )  # fmt: skip
    hash: str = _option("ternary", OneOf(FAMILIES), "hyperplane family: ternary (additions only) or gaussian (SimHash)")
    seed: int = _option(
        0, Integer(0), "hyperplane seed (convert samples the i-th conv's hyperplanes from seed * 1_000_003 + i)"
    )
    start_layer: int = _option(
        1, Integer(0), "index (in module order, from 0) of the first Conv2d that may be converted; 1 leaves the "
        "first conv dense", layer=False,
    )  # fmt: skip
    include_pointwise: bool = _option(False, Flag(), "also convert 1x1 convs", layer=False)
    # no flag: the commands' --hyperplanes and levels are checked against the default (24)
    max_hyperplanes: int = _option(
        MAX_HYPERPLANES, Integer(1, HYPERPLANES_LIMIT), "hyperplanes sampled per layer (the largest usable L)",
        flag=False,
    )  # fmt: skip
    merge: str = _option(
        "mean", OneOf(MERGES), "mean (the paper: hash centred across channels, mean inputs, summed filters) or "
        "scaled (hash centred within each channel, filter slices weighted by least-squares scales; see "
        "haste.functional)",
    )  # fmt: skip
    fold_batchnorm: bool = _option(
        True, Flag(), "a converted conv whose output only a BatchNorm2d reads takes the BatchNorm in: at levels "
        "other than off the CPU kernel applies it as it writes its output (level off runs both as before; see "
        "haste.fold)", layer=False, flag=False, calibrated=False,
    )  # fmt: skip

    def __post_init__(self) -> None:
        for option in OPTIONS:
            option.check(getattr(self, option.name))

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], base: Options | None = None) -> Options:
        """``base`` (default: the defaults) with the options in ``values`` changed; TypeError naming the accepted
        options if a key is not one, ValueError if a value is invalid."""
        check_names(values)
        return dataclasses.replace(base or cls(), **values)

    def replace(self, **changes: object) -> Options:
        """A copy with ``changes`` made (checked as ``from_mapping`` checks them)."""
        return self.from_mapping(changes, base=self)

    def as_dict(self) -> dict[str, object]:
        """name -> value, in field order (what ``haste.conversion(model).options`` and the cards hold)."""
        return {option.name: getattr(self, option.name) for option in OPTIONS}

    def calibrated(self) -> dict[str, object]:
        """The options a model card's calibrated levels depend on (``Option.calibrated``), name -> value."""
        return {option.name: getattr(self, option.name) for option in OPTIONS if option.calibrated}


#: Every conversion option, in field order.
OPTIONS = tuple(Option(f.name, f.default, **f.metadata) for f in dataclasses.fields(Options))
NAMES = tuple(option.name for option in OPTIONS)


def check_names(
    values: Mapping[str, object], accepted: tuple[str, ...] = NAMES, what: str = "conversion option"
) -> None:
    """TypeError naming the ``accepted`` options unless every key of ``values`` is one."""
    unknown = [key for key in values if key not in accepted]
    if unknown:
        raise TypeError(
            f"unknown {what}{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted)}"
        )


def keywords(*, layer: bool = False, default_none: bool = False) -> Callable:
    """Decorator of a function (or class) taking the options as ``**options``: its signature (its ``__init__``'s)
    gets one keyword-only parameter per option before ``levels`` (only the ``layer`` ones with ``layer=True``),
    default None (``default_none``) or the option's default, and the ``{options}`` line of its docstring becomes
    one line per option (``Option.describe``)."""
    chosen = [option for option in OPTIONS if option.layer or not layer]

    def decorate(target):
        function = target.__init__ if isinstance(target, type) else target
        signature = inspect.signature(function)
        params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = next((i for i, p in enumerate(params) if p.name == "levels"), len(params))  # the options, then levels
        added = [
            inspect.Parameter(
                option.name, inspect.Parameter.KEYWORD_ONLY, default=None if default_none else option.default,
                annotation=f"{type(option.default).__name__}{' | None' if default_none else ''}",
            )
            for option in chosen
        ]  # fmt: skip
        function.__signature__ = signature.replace(parameters=[*params[:at], *added, *params[at:]])
        lines = (target.__doc__ or "").split("\n")
        for i, line in enumerate(lines):
            if line.strip() == "{options}":
                indent = line[: len(line) - len(line.lstrip())]
                lines[i : i + 1] = [
                    textwrap.fill(f"{option.name}: {option.describe()}.", 116, initial_indent=indent,
                                  subsequent_indent=indent + "    ")
                    for option in chosen
                ]  # fmt: skip
                break
        target.__doc__ = "\n".join(lines)
        return target

    return decorate
