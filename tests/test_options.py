"""haste.Options (the conversion options: defaults, checks, reading a mapping) and Skip (why a conv stays dense)."""

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import haste
from haste.cli import build_parser
from haste.convert import _summary, skip_reason
from haste.module import unsupported
from haste.options import OPTIONS, Options

CARDS = sorted((Path(haste.__file__).parent / "zoo" / "weights").glob("*.json"))


def test_the_defaults_are_the_ones_convert_has_always_used():
    expected = dict(
        patch_size=4, sparsity=2 / 3, hash="ternary", seed=0, start_layer=1, include_pointwise=False,
        max_hyperplanes=24, merge="mean", fold_batchnorm=True,
    )  # fmt: skip
    assert Options().as_dict() == expected and list(Options().as_dict()) == list(expected)
    model = haste.convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)))
    assert haste.conversion(model).options == expected
    layer = model[1]
    assert layer.options == Options(seed=1) and (layer.patch_size, layer.merge, layer.max_hyperplanes) == (
        4,
        "mean",
        24,
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(patch_size=0), "patch_size must be an integer 1 or more; got 0"),
        (dict(patch_size=2.0), "patch_size must be an integer 1 or more; got 2.0"),
        (dict(sparsity=1), r"sparsity must be a number in \[0, 1\) \(probability of a 0 entry\); got 1"),
        (dict(sparsity=False), "sparsity must be a number"),
        (dict(hash="md5"), "hash must be one of ternary, gaussian; got 'md5'"),
        (dict(seed=-1), "seed must be an integer 0 or more; got -1"),
        (dict(start_layer=True), "start_layer must be an integer 0 or more; got True"),
        (dict(include_pointwise=1), "include_pointwise must be True or False; got 1"),
        (dict(max_hyperplanes=63), "max_hyperplanes must be an integer from 1 to 62; got 63"),
        (dict(merge="median"), "merge must be one of mean, scaled; got 'median'"),
    ],
)
def test_options_are_checked_when_made_with_the_messages_convert_gives(changes, message):
    with pytest.raises(ValueError, match=message):
        Options(**changes)
    with pytest.raises(ValueError, match=message):
        Options().replace(**changes)
    with pytest.raises(ValueError, match=message):
        haste.convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)), **changes)


def test_from_mapping_fills_the_defaults_and_names_the_accepted_options():
    options = Options.from_mapping({"patch_size": 2, "merge": "scaled"})
    assert options == Options(patch_size=2, merge="scaled") and options.sparsity == 2 / 3
    assert Options.from_mapping(json.loads(json.dumps(options.as_dict()))) == options  # a card's round trip
    assert Options.from_mapping({"seed": 5}, base=options) == options.replace(seed=5)
    with pytest.raises(TypeError, match="unknown conversion option 'patch'; accepted: patch_size, sparsity, hash"):
        Options.from_mapping({"patch": 2})
    with pytest.raises(TypeError, match="unknown conversion options 'a', 'b'"):
        Options().replace(a=1, b=2)
    with pytest.raises(TypeError, match="unknown conversion option 'patch'"):
        haste.convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)), patch=2)


def test_options_are_frozen_and_replace_returns_a_copy():
    options = Options()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.patch_size = 2
    assert options.replace(patch_size=2).patch_size == 2 and options.patch_size == 4


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_every_cards_options_read_through_options(path):
    card = json.loads(path.read_text())
    options = Options.from_mapping(card["haste"]["options"])
    assert {k: v for k, v in options.as_dict().items() if k in card["haste"]["options"]} == card["haste"]["options"]


def test_hasteconv2d_takes_an_options_record_or_its_keywords():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    by_record = haste.HasteConv2d(conv, options=Options(patch_size=2, seed=3, hash="gaussian"))
    by_keywords = haste.HasteConv2d(conv, patch_size=2, seed=3, hash="gaussian")
    assert by_record.options == by_keywords.options and torch.equal(by_record.planes, by_keywords.planes)
    assert haste.HasteConv2d(conv, options=Options(patch_size=2), seed=3).options == by_keywords.options.replace(
        hash="ternary"
    )
    with pytest.raises(TypeError, match="unknown HasteConv2d option 'start_layer'; accepted: patch_size, sparsity"):
        haste.HasteConv2d(conv, start_layer=1)


def test_signatures_docstrings_and_flags_list_every_option():
    convert = inspect.signature(haste.convert).parameters
    layer = inspect.signature(haste.HasteConv2d).parameters
    for option in OPTIONS:
        assert convert[option.name].default is None and f"{option.name}: {option.help[:20]}" in haste.convert.__doc__
        if option.layer:
            assert layer[option.name].default == option.default and f"{option.name}: " in haste.HasteConv2d.__doc__
        else:
            assert option.name not in layer
    assert list(convert)[-2:] == ["levels", "plans"]
    args = build_parser().parse_args(["evaluate", "--model", "m", "--patch-size", "2", "--include-pointwise"])
    assert (args.patch_size, args.include_pointwise, args.merge) == (2, True, None)
    args = build_parser().parse_args(["sweep", "--model", "m", "--out", "o", "--merge", "mean", "scaled"])
    assert (args.merge, args.patch_size) == (["mean", "scaled"], [4])


def _hooked() -> nn.Conv2d:
    conv = nn.Conv2d(8, 8, 3)
    conv.register_forward_hook(lambda m, args, out: out)
    return conv


@pytest.mark.parametrize(
    ("conv", "text"),
    [
        (nn.Conv1d(8, 8, 3), "not an nn.Conv2d (Conv1d): HasteConv2d wraps 2-D convolutions only"),
        (_hooked(), "module hooks (forward hook): the wrapper does not call the conv module, so they would not run"),
        (nn.Conv2d(8, 8, 3, groups=2), "grouped conv (groups=2): merging channels across groups breaks the grouping"),
        (nn.Conv2d(8, 8, 3, dilation=2), "dilated conv (dilation=(2, 2)): tile regions assume dilation 1"),
        (nn.Conv2d(8, 8, 3, padding_mode="reflect"), "padding_mode='reflect': only zero padding is supported"),
    ],
)  # fmt: skip
def test_a_skip_reads_as_the_reason_text(conv, text):
    skip = unsupported(conv)
    assert isinstance(skip, haste.Skip) and str(skip) == text


def test_skip_reasons_of_convert_and_their_summary():
    conv = nn.Conv2d(8, 8, 3)
    assert str(skip_reason(conv, 0, Options())) == "before start_layer=1 (conv #0, the first conv)"
    pointwise = skip_reason(nn.Conv2d(8, 8, 1), 2, Options())
    assert pointwise == haste.Skip("1x1 conv", "overhead relatively high; pass include_pointwise=True to convert it")
    assert (
        skip_reason(conv, 2, Options()) is None
        and skip_reason(nn.Conv2d(8, 8, 1), 2, Options().replace(include_pointwise=True)) is None
    )
    why = "merging channels across groups breaks the grouping"
    skips = {
        "a": haste.Skip("depthwise conv", "groups=16", why), "b": haste.Skip("depthwise conv", "groups=32", why),
        "c": haste.Skip("depthwise conv", "groups=16", why), "d": pointwise,
    }  # fmt: skip
    assert _summary(skips) == f"3 x depthwise conv (groups=16, 32): {why}; 1 x {pointwise}"
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3))
    record = haste.conversion(haste.convert(model))
    assert record.skips["1"] == haste.Skip("depthwise conv", "groups=8", why)
    assert record.skipped == {
        "0": "before start_layer=1 (conv #0, the first conv)",
        "1": f"depthwise conv (groups=8): {why}",
    }
    assert json.loads(json.dumps(record.skipped)) == record.skipped
