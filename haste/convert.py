"""Converting a model: replace eligible ``nn.Conv2d`` modules by ``HasteConv2d`` wrappers, and back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from . import options as _options
from .fold import FoldedBatchNorm2d, batchnorm_pairs, fold, unfold
from .levels import resolve_table
from .module import HasteConv2d, Skip, unsupported
from .options import Options
from .plans import check_plan_layers, check_plans


@dataclass
class Conversion:
    """What ``convert`` did: converted layer names, skipped layers with the reason, the options."""

    replaced: list[str] = field(default_factory=list)
    #: layer name -> why it stayed dense (``Skip``: kind, detail, why); ``skipped`` has them as text
    skips: dict[str, Skip] = field(default_factory=dict)
    #: the options it converted with (``Options.as_dict()``)
    options: dict = field(default_factory=dict)
    #: the level plans the layers run (engine -> level -> entries, ``haste.plans``); {} without plans
    plans: dict = field(default_factory=dict)
    #: converted conv name -> name of the BatchNorm2d it took in (``haste.fold``; option ``fold_batchnorm``)
    folded: dict[str, str] = field(default_factory=dict)
    #: why no BatchNorm was folded although ``fold_batchnorm`` asked for it (the model cannot be traced), or None
    unfolded: str | None = None

    @property
    def skipped(self) -> dict[str, str]:
        """Layer name -> why it stayed dense, as text: "depthwise conv (groups=32): merging channels across ..."."""
        return {name: str(skip) for name, skip in self.skips.items()}


def skip_reason(conv: nn.Conv2d, index: int, options: Options) -> Skip | None:
    """Why ``conv`` (the index-th Conv2d of its model) is left dense with these conversion ``options``, or None if
    it is converted: before ``start_layer``, what ``HasteConv2d`` cannot wrap (``module.unsupported``: custom
    forward, module hooks, uninitialised lazy conv, grouped, dilated, non-zero padding), or 1x1 without
    ``include_pointwise``."""
    start_layer = options.start_layer
    if index < start_layer:
        return Skip(f"{_BEFORE_START}={start_layer}", f"conv #{index}{', the first conv' if index == 0 else ''}")
    reason = unsupported(conv)
    if reason:
        return reason
    if tuple(conv.kernel_size) == (1, 1) and not options.include_pointwise:
        return Skip("1x1 conv", "overhead relatively high; pass include_pointwise=True to convert it")
    return None


_BEFORE_START = "before start_layer"


@_options.keywords(default_none=True)
def convert(
    model: nn.Module,
    *,
    levels: Mapping[str, object] | None = None,
    plans: Mapping[str, object] | None = None,
    **options: object,
) -> nn.Module:
    """Replace the eligible convs of ``model`` in place by HASTE wrappers and return ``model``.

    Every option left at None takes the value the model's card was calibrated with (a model loaded
    with ``haste.zoo.load`` carries its card), else its default (``haste.Options``).

    Args:
        {options}
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
    _options.check_names(options)
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(model, HasteConv2d):
        raise ValueError("convert() takes the model containing the convs; this is already a HasteConv2d")
    if isinstance(model, nn.Conv2d):
        raise ValueError("convert() replaces convs inside a model; wrap a single conv with haste.HasteConv2d(conv)")
    chosen_options = calibrated_options(model).replace(**given)
    record = conversion(model)
    if record is not None:
        return _reconverted(model, record, given, levels, plans)
    _check_not_partly_converted(model)
    start_layer = chosen_options.start_layer
    record = Conversion(options=chosen_options.as_dict())
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
        reason = skip_reason(conv, index, chosen_options)
        if reason:
            record.skips[name] = reason
        else:
            chosen.append((index, name, conv))
    if not chosen:
        if convs and start_layer >= len(convs):
            raise ValueError(
                f"start_layer={start_layer} is past the model's last conv: it has {len(convs)} Conv2d, numbered 0 to "
                f"{len(convs) - 1} in module order (start_layer is the number of the first conv that may be converted)"
            )
        raise ValueError(f"no convolution of this model can be converted: {_summary(record.skips)}")
    if levels is None:
        levels = card_levels(model, chosen_options)
        if plans is None and levels is not None:
            plans = _calibration(model).get("plans")
    names = [n for names in aliases.values() for n in names]
    check_layer_names(levels, names)
    if plans:
        plans = check_plans(plans)
        check_plan_layers(plans, names)
    record.plans = dict(plans or {})
    norms = _batchnorms(model, chosen, aliases, record) if chosen_options.fold_batchnorm else {}
    wrappers = [  # all built (and their levels checked) before the model changes
        HasteConv2d(
            conv,
            name=name,
            options=chosen_options.replace(seed=chosen_options.seed * 1_000_003 + index),
            levels=levels,
            plans=record.plans,
            batchnorm=norms.get(name, (None, None))[1],
        )
        for index, name, conv in chosen
    ]
    for (_, name, conv), wrapper in zip(chosen, wrappers):
        for alias in aliases[id(conv)]:
            _set(model, alias, wrapper)
        wrapper.converted_in = id(model)  # a profile of this model knows the layer at once (haste.profile)
        record.replaced.append(name)
        if name in norms:
            bn_name, bn = norms[name]
            fold(bn)
            record.folded[name] = bn_name
    model.haste_conversion = record
    return model


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in ``model`` under the qualified ``name``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def _batchnorms(
    model: nn.Module, chosen: list, aliases: dict[int, list[str]], record: Conversion
) -> dict[str, tuple[str, nn.BatchNorm2d]]:
    """conv name -> (name, module) of the BatchNorm2d each chosen conv takes in (``haste.fold.batchnorm_pairs``:
    the only reader of its output), for convs and BatchNorms registered under one name only; sets
    ``record.unfolded`` when the model cannot be traced."""
    pairs, record.unfolded = batchnorm_pairs(model)
    counts: dict[int, int] = {}  # names of each module
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    norms = {}
    for _, name, conv in chosen:
        bn_name = pairs.get(name)
        if bn_name is None or len(aliases[id(conv)]) != 1:
            continue
        bn = model.get_submodule(bn_name)
        if counts[id(bn)] == 1:
            norms[name] = (bn_name, bn)
    return norms


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


def calibrated_options(model: nn.Module) -> Options:
    """The conversion options the model's card was calibrated with (its ``"options"``, read by
    ``Options.from_mapping``), the defaults where it has none."""
    return Options.from_mapping(_calibration(model).get("options") or {})


def card_levels(model: nn.Module, options: Options) -> Mapping[str, object] | None:
    """The calibrated level table of the model's card, if it was calibrated with these conversion
    options; else None."""
    levels = _calibration(model).get("levels")
    if levels and calibrated_options(model).calibrated() == options.calibrated():
        return levels
    return None


def _summary(skips: dict[str, Skip]) -> str:
    """'11 x depthwise conv (groups=32, 96, 144, ...): ..., 1 x before start_layer=1 ...': skip reasons counted
    by kind, the details of a kind listed when they differ from conv to conv."""
    if not skips:
        return "the model has no nn.Conv2d"
    kinds: dict[str, list[Skip]] = {}
    for skip in skips.values():
        kinds.setdefault(skip.kind, []).append(skip)
    parts = []
    for kind, group in sorted(kinds.items(), key=lambda item: -len(item[1])):
        if kind.startswith(_BEFORE_START) and len(group) > 1:  # the range it covers
            text = f"{kind} (convs #0 to #{len(group) - 1})"
        elif len(set(group)) == 1:
            text = str(group[0])
        else:
            text = _merged(kind, group)
        parts.append(f"{len(group)} x {text}")
    return "; ".join(parts)


def _merged(kind: str, skips: list[Skip]) -> str:
    """One text for different skips of one kind, "kind (details): why": the distinct details listed."""
    if any(skip.detail is None or not skip.why for skip in skips):
        return kind  # nothing but the kind to share
    distinct = list(dict.fromkeys(skip.detail for skip in skips))
    keys = {d.partition("=")[0] for d in distinct}
    if len(keys) == 1 and all("=" in d for d in distinct):  # groups=32, groups=96 -> groups=32, 96
        key = keys.pop()
        distinct = [f"{key}={distinct[0].partition('=')[2]}", *(d.partition("=")[2] for d in distinct[1:])]
    shown = ", ".join(distinct[:4]) + (", ..." if len(distinct) > 4 else "")
    whys = {skip.why for skip in skips}
    why = whys.pop() if len(whys) == 1 else "see haste.conversion(model).skipped"
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
            _set(model, name, module.conv)
        elif isinstance(module, FoldedBatchNorm2d):
            unfold(module)
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
            m._folded = None
            m._calls = {}
    return model


def conversion(model: nn.Module) -> Conversion | None:
    """What ``convert`` recorded for ``model`` (None if it is not converted)."""
    return model.__dict__.get("haste_conversion")
