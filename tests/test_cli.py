"""The haste command's argument checking: bad values end with argparse's usage error (exit status 2) or a
one-line "haste <command>: error: ..." saying what is accepted, before any model runs."""

import argparse
import json
import subprocess
import sys

import pytest
from test_evaluate import run, write_card

from haste import zoo
from haste.cli import build_parser

COUNTS = [
    ("evaluate", "--batch-size"), ("evaluate", "--limit"), ("evaluate", "--threads"), ("evaluate", "--patch-size"),
    ("sweep", "--batch-size"), ("sweep", "--limit"), ("sweep", "--threads"), ("sweep", "--patch-size"),
    ("calibrate", "--test-limit"), ("train", "--threads"),
    ("bench", "--batch"), ("bench", "--rounds"), ("bench", "--threads"),
]  # fmt: skip
# a model that does not exist: if a bad value got past argparse, the command still fails at once (never a real run)
REQUIRED = {"evaluate": ["--model", "m"], "sweep": ["--model", "m", "--out", "o"], "calibrate": ["--model", "m"],
            "train": ["--model", "m"], "bench": ["--models", "m"]}  # fmt: skip


@pytest.mark.parametrize("command, option", COUNTS, ids=[f"{c}{o}" for c, o in COUNTS])
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_counts_must_be_positive_integers(capsys, command, option, value):
    code, _, err = run(capsys, command, *REQUIRED[command], option, value)
    assert code == 2 and f"error: argument {option}: must be a positive integer, got {value}" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (("bench", "--models", "m", "--warmup", "-1"), "argument --warmup: must be a non-negative integer, got -1"),
        (("sweep", "--model", "m", "--out", "o", "--hyperplanes", "8", "0"), "argument --hyperplanes: must be an "
         "integer from 1 to 24 (--level off runs dense), got 0"),
        (("calibrate", "--model", "m", "--hyperplanes", "25"), "argument --hyperplanes: must be an integer from 1"),
        (("sweep", "--model", "m", "--out", "o", "--sparsity", "0.5", "nan"), "argument --sparsity: must be a number "
         "in [0, 1), got nan"),
        (("sweep", "--model", "m", "--out", "o", "--start-layer", "-1"), "argument --start-layer: must be a non-neg"),
        (("sweep", "--model", "m", "--out", "o", "--schedule", "layer1:+2"), "argument --schedule: schedule entries "
         "are pattern=+N, pattern=-N or pattern=N; got 'layer1:+2'"),
        (("sweep", "--model", "m", "--out", "o", "--schedule", "layer1=+-2"), "got 'layer1=+-2'"),
        (("sweep", "--model", "m", "--out", "o", "--schedule", "=3"), "got '=3'"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_by_argparse(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_the_haste_command_reports_a_bad_value_without_a_traceback():
    """The real entry point (``python -m haste.cli``, as the console script runs it)."""
    argv = [sys.executable, "-m", "haste.cli", "bench", "--models", "m", "--batch", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == "haste bench: error: argument --batch: must be a positive integer, got 0"


@pytest.mark.parametrize("name", ["nope", "resnet50:NOPE"])
def test_bench_names_the_models_it_accepts(capsys, name):
    cheap = ("--batch", 1, "--rounds", 1, "--warmup", 0, "--levels", "off")  # if the check were missing
    code, out, err = run(capsys, "bench", "--models", name, "fmnist-resnet18", *cheap)
    assert code == 2 and not out
    if name == "nope":
        assert "unknown model 'nope'; accepted: a reference model (" in err
        assert all(n in err for n in zoo.names()) and "resnet50:IMAGENET1K_V2" in err
    else:
        assert "resnet50 has no weights 'NOPE'; accepted: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2" in err


def test_bench_markdown_refuses_a_file_that_is_not_a_report(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# haste\n")
    code, _, err = run(capsys, "bench", "--markdown", readme)
    assert code == 2 and f"haste bench: error: {readme} is not a haste bench report (JSON written by --json)" in err
    other = tmp_path / "package.json"
    other.write_text(json.dumps({"name": "x"}))
    code, _, err = run(capsys, "bench", "--markdown", other)
    assert code == 2 and "has no list 'models'" in err


def test_sweep_schedule_pattern_must_match_a_layer(tmp_path, capsys):
    card = write_card(tmp_path / "models")
    out = tmp_path / "sweep"
    code, text, err = run(capsys, "sweep", "--model", card, "--hyperplanes", 8, "--seeds", 0, "--limit", 4,
                          "--schedule", "layer1=+2", "layerX=+2,*.conv9=1", "--out", out)  # fmt: skip
    assert code == 2 and not text and not out.with_suffix(".json").exists()
    assert "schedule pattern 'layerX', '*.conv9' matches no conv of the model" in err
    assert "layer groups conv1, layer1, layer2, layer3, layer4" in err


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if name != "serve"}


@pytest.mark.parametrize("command", ["train", "evaluate", "sweep", "calibrate", "bench"])
def test_every_option_says_what_it_does(command):
    parser = _subcommands()[command]
    undocumented = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert not undocumented
    if command == "bench":
        assert parser.description


def test_schedule_help_shows_offsets_absolute_values_and_dense():
    text = " ".join(_subcommands()["sweep"].format_help().split())
    for example in ('"layer1=+2,layer4=-1" offsets', '"layer1=12" an absolute L', '"layer4=0" dense'):
        assert example in text
