"""Converting a model: replace eligible ``nn.Conv2d`` modules by ``HasteConv2d`` wrappers, and back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from .functional import check_merge
from .levels import MAX_HYPERPLANES, resolve_table
from .lsh import FAMILIES
from .module import HasteConv2d


@dataclass
class Conversion:
    """What ``convert`` did: converted layer names, skipped layers with the reason, the options."""

    replaced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def skip_reason(conv: nn.Conv2d, index: int, *, start_layer: int, include_pointwise: bool) -> str | None:
    """Why ``conv`` (the index-th Conv2d of its model) is left dense, or None if it is converted."""
    if index < start_layer:
        return f"before start_layer={start_layer} (conv #{index}{', the first conv' if index == 0 else ''})"
    if conv.groups != 1:
        kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
        return f"{kind} conv (groups={conv.groups}): merging channels across groups breaks the grouping"
    if tuple(conv.dilation) != (1, 1):
        return f"dilated conv (dilation={tuple(conv.dilation)}): tile regions assume dilation 1"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}: only zero padding is supported"
    if tuple(conv.kernel_size) == (1, 1) and not include_pointwise:
        return "1x1 conv (overhead relatively high; pass include_pointwise=True to convert it)"
    return None


#: convert()'s options when neither the call nor the model's card sets them.
DEFAULT_OPTIONS = dict(
    patch_size=4, sparsity=2 / 3, hash="ternary", seed=0, start_layer=1, include_pointwise=False,
    max_hyperplanes=MAX_HYPERPLANES, merge="mean",
)  # fmt: skip


def convert(
    model: nn.Module,
    *,
    patch_size: int | None = None,
    sparsity: float | None = None,
    hash: str | None = None,
    seed: int | None = None,
    start_layer: int | None = None,
    include_pointwise: bool | None = None,
    max_hyperplanes: int | None = None,
    merge: str | None = None,
    levels: Mapping[str, object] | None = None,
) -> nn.Module:
    """Replace the eligible convs of ``model`` in place by HASTE wrappers and return ``model``.

    Every option left at None takes the value the model's card was calibrated with (a model loaded
    with ``haste.zoo.load`` carries its card), else ``DEFAULT_OPTIONS`` (P=4, sparsity 2/3, ternary,
    seed 0, start_layer 1, no 1x1, 24 hyperplanes, the paper's mean merge).

    Args:
        patch_size: tile side P, in output pixels.
        sparsity: ternary hyperplanes: probability of a 0 entry (the paper: 2/3 CIFAR, 1/2 ImageNet).
        hash: "ternary" (additions only) or "gaussian" (SimHash).
        seed: hyperplanes of the i-th conv are sampled from ``seed * 1_000_003 + i``.
        start_layer: index (in module order, from 0) of the first Conv2d that may be converted;
            the default 1 leaves the first conv dense.
        include_pointwise: also convert 1x1 convs.
        max_hyperplanes: hyperplanes sampled per layer (the largest usable L).
        merge: "mean" (the paper: hash centred across channels, mean inputs, summed filters) or
            "scaled" (hash centred within each channel, filter slices weighted by least-squares scales;
            see ``haste.functional``).
        levels: level table overriding ``haste.LEVELS``: name -> int, or name -> {layer: int,
            "default": int} for a per-layer schedule. By default, a model with a card uses the
            calibrated table of its card when the options equal the ones it was calibrated with
            (always, unless an option is passed that differs), and ``haste.LEVELS`` otherwise.

    Grouped/depthwise, dilated and non-zero-padded convs stay dense; ``model.haste_conversion``
    records what was replaced and what was skipped and why. Converting a converted model is a no-op.
    Raises ValueError if no conv is eligible.
    """
    given = dict(
        patch_size=patch_size, sparsity=sparsity, hash=hash, seed=seed, start_layer=start_layer,
        include_pointwise=include_pointwise, max_hyperplanes=max_hyperplanes, merge=merge,
    )  # fmt: skip
    calibrated = calibrated_options(model)
    options = {k: v if v is not None else calibrated[k] for k, v in given.items()}
    patch_size, sparsity, hash, seed = options["patch_size"], options["sparsity"], options["hash"], options["seed"]
    start_layer, include_pointwise = options["start_layer"], options["include_pointwise"]
    max_hyperplanes = options["max_hyperplanes"]
    if hash not in FAMILIES:
        raise ValueError(f"hash must be one of {', '.join(FAMILIES)}; got {hash!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity!r}")
    check_merge(options["merge"])
    if not 1 <= max_hyperplanes <= 62:
        raise ValueError(f"max_hyperplanes must be from 1 to 62; got {max_hyperplanes!r}")
    if any(isinstance(m, HasteConv2d) for m in model.modules()):
        return model
    if isinstance(model, nn.Conv2d):
        raise ValueError("convert() replaces convs inside a model; wrap a single conv with haste.HasteConv2d(conv)")
    record = Conversion(options=options)
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    chosen = []
    for index, (name, conv) in enumerate(convs):
        reason = skip_reason(conv, index, start_layer=start_layer, include_pointwise=include_pointwise)
        if reason:
            record.skipped[name] = reason
        else:
            chosen.append((index, name, conv))
    if not chosen:
        if convs and start_layer >= len(convs):
            raise ValueError(
                f"start_layer={start_layer} is past the model's last conv: it has {len(convs)} Conv2d, numbered 0 to "
                f"{len(convs) - 1} in module order (start_layer is the number of the first conv that may be converted)"
            )
        raise ValueError(f"no convolution of this model can be converted: {_summary(record.skipped)}")
    if levels is None:
        levels = card_levels(model, record.options)
    tables = {name: resolve_table(levels, name) for _, name, _ in chosen}
    for index, name, conv in chosen:
        wrapper = HasteConv2d(
            conv,
            name=name,
            patch_size=patch_size,
            hash=hash,
            sparsity=sparsity,
            seed=seed * 1_000_003 + index,
            max_hyperplanes=max_hyperplanes,
            levels=tables[name],
            merge=options["merge"],
        )
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, wrapper)
        record.replaced.append(name)
    model.haste_conversion = record
    return model


def _calibration(model: nn.Module) -> dict:
    """The "haste" section of the model card carried by ``model`` (``model.haste_card``, set by
    ``haste.zoo.load``): calibrated options and levels; {} without a card."""
    return (getattr(model, "haste_card", None) or {}).get("haste") or {}


def calibrated_options(model: nn.Module) -> dict:
    """The conversion options the model's card was calibrated with, ``DEFAULT_OPTIONS`` where it has none."""
    return {**DEFAULT_OPTIONS, **(_calibration(model).get("options") or {})}


def card_levels(model: nn.Module, options: dict) -> Mapping[str, object] | None:
    """The calibrated level table of the model's card, if it was calibrated with these conversion
    options; else None."""
    levels = _calibration(model).get("levels")
    calibrated = calibrated_options(model)
    if levels and all(calibrated.get(k) == v for k, v in options.items()):
        return levels
    return None


def _summary(skipped: dict[str, str]) -> str:
    """'3 depthwise conv, 1 before start_layer=1, ...': skip reasons counted by kind."""
    if not skipped:
        return "the model has no nn.Conv2d"
    kinds = Counter(reason.split(" (")[0].split(":")[0] for reason in skipped.values())
    first = {}
    for reason in skipped.values():
        first.setdefault(reason.split(" (")[0].split(":")[0], reason)
    for kind, count in kinds.items():
        if kind.startswith("before start_layer="):  # not conv #0's own reason: the range it covers
            first[kind] = f"{kind} (convs #0 to #{count - 1})" if count > 1 else first[kind]
    return "; ".join(f"{count} x {first[kind]}" for kind, count in kinds.most_common())


def revert(model: nn.Module) -> nn.Module:
    """Put every original conv back in place of its HASTE wrapper (bit-exact) and return ``model``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, HasteConv2d):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.conv)
    if "haste_conversion" in model.__dict__:
        del model.haste_conversion
    return model


def conversion(model: nn.Module) -> Conversion | None:
    """What ``convert`` recorded for ``model`` (None if it is not converted)."""
    return model.__dict__.get("haste_conversion")
