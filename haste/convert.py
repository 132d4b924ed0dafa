"""Converting a model: replace eligible ``nn.Conv2d`` modules by ``HasteConv2d`` wrappers, and back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from .levels import MAX_HYPERPLANES, resolve_table
from .module import HasteConv2d, check_options, unsupported
from .plans import check_plan_layers, check_plans


@dataclass
class Conversion:
    """What ``convert`` did: converted layer names, skipped layers with the reason, the options."""

    replaced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    #: the level plans the layers run (engine -> level -> entries, ``haste.plans``); {} without plans
    plans: dict = field(default_factory=dict)


def skip_reason(conv: nn.Conv2d, index: int, *, start_layer: int, include_pointwise: bool) -> str | None:
    """Why ``conv`` (the index-th Conv2d of its model) is left dense, or None if it is converted: before
    ``start_layer``, what ``HasteConv2d`` cannot wrap (``module.unsupported``: custom forward, module hooks,
    uninitialised lazy conv, grouped, dilated, non-zero padding), or 1x1 without ``include_pointwise``."""
    if index < start_layer:
        return f"before start_layer={start_layer} (conv #{index}{', the first conv' if index == 0 else ''})"
    reason = unsupported(conv)
    if reason:
        return reason
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
    plans: Mapping[str, object] | None = None,
) -> nn.Module:
    """Replace the eligible convs of ``model`` in place by HASTE wrappers and return ``model``.

    Every option left at None takes the value the model's card was calibrated with (a model loaded
    with ``haste.zoo.load`` carries its card), else ``DEFAULT_OPTIONS`` (P=4, sparsity 2/3, ternary,
    seed 0, start_layer 1, no 1x1, 24 hyperplanes, the paper's mean merge).

    Args:
        patch_size: tile side P, in output pixels (an integer, 1 or more).
        sparsity: ternary hyperplanes: probability of a 0 entry, in [0, 1) (the paper: 2/3 CIFAR, 1/2 ImageNet).
        hash: "ternary" (additions only) or "gaussian" (SimHash).
        seed: an integer, 0 or more; hyperplanes of the i-th conv are sampled from ``seed * 1_000_003 + i``.
        start_layer: index (in module order, from 0) of the first Conv2d that may be converted;
            the default 1 leaves the first conv dense.
        include_pointwise: True to also convert 1x1 convs.
        max_hyperplanes: hyperplanes sampled per layer (the largest usable L), 1 to 62.
        merge: "mean" (the paper: hash centred across channels, mean inputs, summed filters) or
            "scaled" (hash centred within each channel, filter slices weighted by least-squares scales;
            see ``haste.functional``).
        levels: level table overriding ``haste.LEVELS``: name -> int, or name -> {layer: int,
            "default": int} for a per-layer schedule (layer = a conv's name in the model). Values are
            integers, 0 (dense) or 1..max_hyperplanes; the default table must fit max_hyperplanes too. By
            default, a model with a card uses the calibrated table of its card when the options equal the ones
            it was calibrated with (always, unless an option is passed that differs), and ``haste.LEVELS`` otherwise.
        plans: what each level runs per engine and batch size (``haste.plans``: engine -> level -> entries). By
            default the card's plans, when the card's levels are used (no ``levels`` passed) and the options equal
            the calibrated ones; none otherwise (each level then runs its table at every batch size).

    Grouped/depthwise, dilated and non-zero-padded convs, convs whose class overrides nn.Conv2d's forward
    (the wrapper would bypass it), convs with module hooks (e.g. the old ``nn.utils.weight_norm``) and
    uninitialised lazy convs stay dense; ``haste.conversion(model)`` records what was replaced and what was
    skipped and why. A conv registered under several names is replaced under all of them by one wrapper.
    Converting a converted model again with the same options (or none) returns it unchanged; with other options
    it raises ValueError (``haste.revert`` it first), as does converting a model part of which was converted
    on its own. Raises ValueError for an invalid option, and if no conv is eligible; the model is left
    unchanged when convert raises.
    """
    given = dict(
        patch_size=patch_size, sparsity=sparsity, hash=hash, seed=seed, start_layer=start_layer,
        include_pointwise=include_pointwise, max_hyperplanes=max_hyperplanes, merge=merge,
    )  # fmt: skip
    if isinstance(model, HasteConv2d):
        raise ValueError("convert() takes the model containing the convs; this is already a HasteConv2d")
    if isinstance(model, nn.Conv2d):
        raise ValueError("convert() replaces convs inside a model; wrap a single conv with haste.HasteConv2d(conv)")
    calibrated = calibrated_options(model)
    options = {k: v if v is not None else calibrated[k] for k, v in given.items()}
    check_options(**options)
    record = conversion(model)
    if record is not None:
        return _reconverted(model, record, {k: v for k, v in given.items() if v is not None}, levels, plans)
    _check_not_partly_converted(model)
    patch_size, sparsity, hash, seed = options["patch_size"], options["sparsity"], options["hash"], options["seed"]
    start_layer, include_pointwise = options["start_layer"], options["include_pointwise"]
    record = Conversion(options=options)
    aliases: dict[int, list[str]] = {}  # every name of each conv (a module may be registered under several)
    convs = []
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Conv2d):
            if id(m) not in aliases:
                aliases[id(m)] = []
                convs.append((name, m))
            aliases[id(m)].append(name)
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
        if plans is None and levels is not None:
            plans = _calibration(model).get("plans")
    names = [n for names in aliases.values() for n in names]
    check_layer_names(levels, names)
    if plans:
        plans = check_plans(plans)
        check_plan_layers(plans, names)
    record.plans = dict(plans or {})
    wrappers = [  # all built (and their levels checked) before the model changes
        HasteConv2d(
            conv,
            name=name,
            patch_size=patch_size,
            hash=hash,
            sparsity=sparsity,
            seed=seed * 1_000_003 + index,
            max_hyperplanes=options["max_hyperplanes"],
            levels=levels,
            merge=options["merge"],
            plans=record.plans,
        )
        for index, name, conv in chosen
    ]
    for (_, name, conv), wrapper in zip(chosen, wrappers):
        for alias in aliases[id(conv)]:
            parent_name, _, child = alias.rpartition(".")
            setattr(model.get_submodule(parent_name), child, wrapper)
        record.replaced.append(name)
    model.haste_conversion = record
    return model


def check_layer_names(levels: Mapping[str, object] | None, conv_names: list[str]) -> None:
    """Raise ValueError if a per-layer entry of ``levels`` names no conv of the model (``conv_names``)."""
    if not isinstance(levels, Mapping):
        return  # resolve_table says what levels must be
    unknown = [
        f"{level}: {layer!r}"
        for level, value in levels.items()
        if isinstance(value, Mapping)
        for layer in value
        if layer != "default" and layer not in conv_names
    ]
    if unknown:
        raise ValueError(
            f"levels name layers that are not convs of the model ({', '.join(unknown)}); per-layer levels are keyed "
            f"by conv names or 'default': {layer_hint(conv_names)}"
        )


def layer_hint(conv_names: list[str]) -> str:
    """'layer groups conv1, layer1, ... (conv names such as layer1.0.conv1, ...)': what a model's convs are called."""
    groups = list(dict.fromkeys(name.split(".")[0] for name in conv_names))
    return f"layer groups {', '.join(groups)} (conv names such as {', '.join(conv_names[1:3] or conv_names)})"


def _reconverted(
    model: nn.Module, record: Conversion, given: dict, levels: Mapping[str, object] | None, plans: object = None
) -> nn.Module:
    """``model`` (already converted as ``record`` says) if ``given`` options, ``levels`` and ``plans`` agree with
    that conversion; else ValueError."""
    differ = {k: v for k, v in given.items() if record.options.get(k) != v}
    if plans is not None and dict(plans) != record.plans:
        differ["plans"] = plans
    if levels is not None:
        for name in record.replaced:
            layer = model.get_submodule(name)
            try:
                same = resolve_table(levels, layer.name, layer.max_hyperplanes) == layer.levels
            except ValueError:
                same = False
            if not same:
                differ["levels"] = levels
                break
    if differ:
        asked = ", ".join(f"{k}={v!r}" for k, v in differ.items())
        had = ", ".join(f"{k}={record.options[k]!r}" for k in differ if k in record.options)
        raise ValueError(
            f"the model is already converted ({had or 'with other levels'}; all options: {record.options}); "
            f"to convert it with {asked}, haste.revert(model) first"
        )
    return model


def _check_not_partly_converted(model: nn.Module) -> None:
    """ValueError if ``model`` (not converted itself) already holds HASTE layers."""
    wrapped = [name for name, m in model.named_modules() if isinstance(m, HasteConv2d)]
    if not wrapped:
        return
    parts = [name for name, m in model.named_modules() if name and conversion(m) is not None]
    if parts:
        part = f"model.get_submodule({parts[0]!r})"
        raise ValueError(
            f"part of this model was converted on its own ({', '.join(map(repr, parts))}: haste.conversion({part}) "
            f"is its record); haste.revert({part}) first, then convert the whole model"
        )
    raise ValueError(
        f"this model already holds HASTE layers ({', '.join(wrapped[:3])}{', ...' if len(wrapped) > 3 else ''}) "
        "that haste.convert did not put there; replace them by their .conv (or convert a model without them)"
    )


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


def _kind(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0]


def _summary(skipped: dict[str, str]) -> str:
    """'11 x depthwise conv (groups=32, 96, 144, ...): ..., 1 x before start_layer=1 ...': skip reasons counted
    by kind, the details of a kind listed when they differ from conv to conv."""
    if not skipped:
        return "the model has no nn.Conv2d"
    kinds: dict[str, list[str]] = {}
    for reason in skipped.values():
        kinds.setdefault(_kind(reason), []).append(reason)
    parts = []
    for kind, reasons in sorted(kinds.items(), key=lambda item: -len(item[1])):
        if kind.startswith("before start_layer=") and len(reasons) > 1:  # the range it covers
            text = f"{kind} (convs #0 to #{len(reasons) - 1})"
        elif len(set(reasons)) == 1:
            text = reasons[0]
        else:
            text = _merged(kind, reasons)
        parts.append(f"{len(reasons)} x {text}")
    return "; ".join(parts)


def _merged(kind: str, reasons: list[str]) -> str:
    """One text for different reasons of one kind, "kind (detail): why": the distinct details listed."""
    details, whys = [], []
    for reason in reasons:
        head, sep, why = reason.partition("): ")
        if not sep or not head.startswith(kind + " ("):
            return kind  # not of the "kind (detail): why" form: the kind alone is what they share
        details.append(head[len(kind) + 2 :])
        whys.append(why)
    distinct = list(dict.fromkeys(details))
    keys = {d.partition("=")[0] for d in distinct}
    if len(keys) == 1 and all("=" in d for d in distinct):  # groups=32, groups=96 -> groups=32, 96
        key = keys.pop()
        distinct = [f"{key}={distinct[0].partition('=')[2]}", *(d.partition("=")[2] for d in distinct[1:])]
    shown = ", ".join(distinct[:4]) + (", ..." if len(distinct) > 4 else "")
    why = whys[0] if len(set(whys)) == 1 else "see haste.conversion(model).skipped"
    return f"{kind} ({shown}): {why}"


def revert(model: nn.Module) -> nn.Module:
    """Put every original conv back in place of its HASTE wrapper (bit-exact, under every name it has) and
    return ``model``, the model containing the wrappers (a single HasteConv2d's conv is its ``.conv``)."""
    if isinstance(model, HasteConv2d):
        raise ValueError(
            "revert() takes the model containing the HASTE layers, not a HasteConv2d: revert the model it is part "
            "of, or use its original conv, .conv"
        )
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if isinstance(module, HasteConv2d):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.conv)
    if "haste_conversion" in model.__dict__:
        del model.haste_conversion
    return model


def refresh(model: nn.Module) -> nn.Module:
    """Make every HASTE layer of ``model`` (or ``model`` itself, a HasteConv2d) read its conv's weights again
    at the next forward, and return ``model``.

    The fused CPU kernel keeps each layer's weights in its own layout, rebuilt when the weight or bias is
    replaced (``conv.weight = ...``, ``weight.data = ...``), changed by in-place ops on the parameter itself
    (``weight.mul_(2)`` under ``torch.no_grad()``, ``load_state_dict``, an optimizer step) or moved
    (``.to()``). In-place edits through ``.data`` (``weight.data.mul_(2)``, ``weight.data.copy_(t)``) bypass
    the version counters this relies on: call ``haste.refresh(model)`` after them.
    """
    for m in model.modules():
        if isinstance(m, HasteConv2d):
            m._cpu_cache = None
    return model


def conversion(model: nn.Module) -> Conversion | None:
    """What ``convert`` recorded for ``model`` (None if it is not converted)."""
    return model.__dict__.get("haste_conversion")
