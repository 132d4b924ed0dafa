"""``haste evaluate``: accuracy and FLOPs of a model dense and with HASTE, on labelled images.

    haste evaluate --model fmnist-resnet34 --level high --json
    haste evaluate --model resnet50:IMAGENET1K_V2 --dataset imagefolder --data-dir /data/imagenet/val

Both forwards see the same images in the same order; accuracies and the saving are fractions, FLOPs
are multiply-adds per image (means over the images). The result is deterministic for a given seed.
"""

from __future__ import annotations

import copy
import json
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from haste import zoo
from haste.cli import FLAG_OPTIONS, add_option_arguments, hyperplane_count, positive_int
from haste.convert import conversion, convert
from haste.levels import LEVELS, MAX_HYPERPLANES, compression
from haste.preprocess import InputSpec, normalize, preprocess
from haste.profile import Report, profile

DATASETS = ("fashion-mnist", "cifar10", "imagefolder")


@dataclass
class Data:
    """Labelled images in a fixed order, served in batches of normalised model inputs.

    Either ``x``/``y`` tensors (in memory) or a torch ``dataset`` yielding (input, label).
    """

    name: str
    split: str
    size: int
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    dataset: torch.utils.data.Dataset | None = None

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.x is not None:
            for i in range(0, self.size, batch_size):
                yield self.x[i : i + batch_size], self.y[i : i + batch_size]
            return
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        yield from loader


def default_dataset(card: dict) -> str:
    """The dataset a model card says its model was trained for (imagefolder for ImageNet models)."""
    dataset = card.get("dataset", "fashion-mnist")
    return {"imagenet": "imagefolder", "cifar-10": "cifar10"}.get(dataset, dataset)


def load_data(
    card: dict,
    *,
    dataset: str | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> Data:
    """The evaluation images for a model with ``card``: the first ``limit`` of ``split`` of ``dataset``
    (default: the card's dataset), preprocessed with the card's input spec.

    Raises FileNotFoundError if the data is absent, ValueError for an unknown dataset or split.
    """
    from . import data as datasets

    dataset = dataset or default_dataset(card)
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images; got {limit!r}")
    spec = InputSpec.from_dict({k: v for k, v in card["input"].items() if k not in ("channels", "size")})
    if dataset == "fashion-mnist":
        images, labels = datasets.fashion_mnist(split, data_dir)
        images, labels = images[:limit], labels[:limit]
        x = normalize(images[:, None], spec)
        if spec.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return Data(dataset, split, len(labels), x=x, y=labels)
    if data_dir is None:
        example = "root holding cifar-10-batches-py" if dataset == "cifar10" else "root/<class>/<image files>"
        raise FileNotFoundError(f"--dataset {dataset} needs --data-dir ({example}); nothing is downloaded")

    def transform(image):
        return preprocess(image, spec)

    if dataset == "cifar10":
        ds = datasets.cifar10(data_dir, split, transform=transform)
    else:
        ds = datasets.image_folder(data_dir, transform=transform)
        ds.target_transform = _class_mapping(ds.classes, card["labels"])
    size = len(ds) if limit is None else min(limit, len(ds))
    return Data(dataset, split, size, dataset=torch.utils.data.Subset(ds, range(size)))


def _class_mapping(classes: list[str], labels: list[str]):
    """Map ImageFolder class indices (sorted folder names) to model output indices: by label name when
    every folder is named after a label, else by position when the folder count equals the label count
    (sorted ImageNet wnids are the ImageNet class order)."""
    by_name = {label.lower(): i for i, label in enumerate(labels)}
    if all(c.lower() in by_name for c in classes):
        table = [by_name[c.lower()] for c in classes]
    elif len(classes) == len(labels):
        table = list(range(len(classes)))
    else:
        raise ValueError(
            f"cannot map {len(classes)} image folders to the model's {len(labels)} labels: name the folders "
            "after the labels, or provide one folder per label (e.g. all 1000 ImageNet wnids)"
        )
    return table.__getitem__


@torch.no_grad()
def predict(
    model: nn.Module,
    data: Data,
    *,
    level: str | None = None,
    hyperplanes: int | None = None,
    batch_size: int = 250,
) -> tuple[torch.Tensor, torch.Tensor, Report]:
    """Predicted classes (N,), labels (N,) and the FLOPs report of ``model`` on ``data`` at a level."""
    model.eval()
    preds, labels = [], []
    with profile(model) as report, compression(level, hyperplanes=hyperplanes):
        for x, y in data.batches(batch_size):
            preds.append(model(x).argmax(1))
            labels.append(torch.as_tensor(y))
    return torch.cat(preds), torch.cat(labels), report


def summarise(
    dense_preds: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor, report: Report, *, layers: bool = True
) -> dict:
    """Accuracies (fractions), drop (points), agreement with dense and the FLOPs of one HASTE run."""
    dense_accuracy = float((dense_preds == labels).double().mean())
    accuracy = float((preds == labels).double().mean())
    flops = report.as_dict()
    out = {
        "images": int(labels.numel()),
        "dense_accuracy": dense_accuracy,
        "accuracy": accuracy,
        "drop_points": 100 * (dense_accuracy - accuracy),
        "agreement": float((preds == dense_preds).double().mean()),
        "flops_dense": flops["flops_dense"],
        "flops_executed": flops["flops_executed"],
        "flops_overhead": flops["flops_overhead"],
        "saving": flops["saving"],
        "saving_without_overhead": 1 - flops["flops_executed"] / flops["flops_dense"] if flops["flops_dense"] else 0,
    }
    if layers:
        out["layers"] = flops["layers"]
    return out


def evaluate(
    model_name: str,
    *,
    level: str | None = "medium",
    hyperplanes: int | None = None,
    limit: int | None = None,
    batch_size: int = 250,
    dataset: str | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    **options,
) -> dict:
    """Evaluate ``model_name`` dense and converted at ``level`` (or ``hyperplanes``, which wins).

    ``options`` are haste.convert options (the fields of ``haste.Options``); None or absent means the card's
    calibrated options, else the defaults.
    Returns a JSON-ready dict: dense_accuracy, accuracy (fractions), drop_points, agreement,
    flops_dense / flops_executed / flops_overhead (multiply-adds per image), saving (fraction,
    overhead included), per-layer breakdown, conversion options and skipped layers.
    """
    if hyperplanes is not None:
        level = None
    elif level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    start = time.time()
    model = zoo.load(model_name)
    card = model.haste_card
    data = load_data(card, dataset=dataset, split=split, data_dir=data_dir, limit=limit)
    dense_preds, labels, _ = predict(model, data, level="off", batch_size=batch_size)
    # options not given: the card's calibrated ones, else the defaults; the level tables themselves, not the
    # per-batch-size plans (a plan runs a subset of its table's HASTE layers: the table is the accuracy floor)
    convert(model, **options, plans={})
    preds, _, report = predict(model, data, level=level, hyperplanes=hyperplanes, batch_size=batch_size)
    record = conversion(model)
    result = {
        "model": card.get("name", model_name),
        "dataset": data.name,
        "split": data.split,
        "level": level,
        "hyperplanes": hyperplanes,
        "options": record.options,
        **summarise(dense_preds, preds, labels, report),
        "skipped": record.skipped,
        "seconds": round(time.time() - start, 1),
    }
    return result


def dense_copy(model: nn.Module) -> nn.Module:
    """A deep copy of a dense model (its card kept), to convert without touching the original."""
    twin = copy.deepcopy(model)
    if hasattr(model, "haste_card"):
        twin.haste_card = model.haste_card
    return twin


def add_convert_arguments(p) -> None:
    """haste.convert options as CLI flags (default: the card's calibrated options, else the library's)."""
    g = p.add_argument_group("conversion options (default: the card's calibrated options, else haste.convert's)")
    add_option_arguments(g)


def add_data_arguments(p, *, split: str = "test") -> None:
    p.add_argument("--dataset", choices=DATASETS, help="default: the model card's dataset")
    p.add_argument("--data-dir", help="dataset root (Fashion-MNIST IDX files, CIFAR-10 root, or an image folder tree)")
    p.add_argument("--split", default=split, help=f"dataset split (default {split}; calibration = held-out train)")
    p.add_argument("--limit", type=positive_int, help="use only the first K images of the split")
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per forward (default 250)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")


def add_command(sub) -> None:
    """Register ``haste evaluate``."""
    p = sub.add_parser("evaluate", help="accuracy and FLOPs of a model dense and with HASTE")
    p.add_argument("--model", required=True, help="reference model, torchvision arch[:WEIGHTS], or a card .json")
    p.add_argument("--level", default="medium", help=f"compression level: {', '.join(LEVELS)} (default medium)")
    p.add_argument(
        "--hyperplanes",
        type=hyperplane_count,
        help=f"explicit hyperplanes (1..{MAX_HYPERPLANES}) for every converted layer (overrides --level)",
    )
    add_data_arguments(p)
    add_convert_arguments(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run)


def command_line(argv: list[str] | None = None) -> str:
    return shlex.join(["haste", *(sys.argv[1:] if argv is None else argv)])


def _run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    result = evaluate(
        args.model,
        level=args.level,
        hyperplanes=args.hyperplanes,
        limit=args.limit,
        batch_size=args.batch_size,
        dataset=args.dataset,
        split=args.split,
        data_dir=args.data_dir,
        **{option.name: getattr(args, option.name) for option in FLAG_OPTIONS},
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    setting = f"hyperplanes={args.hyperplanes}" if args.hyperplanes else f"level {result['level']}"
    print(f"{result['model']} on {result['dataset']} {result['split']} ({result['images']} images), {setting}")
    print(f"  dense accuracy   {100 * result['dense_accuracy']:.2f}%")
    print(f"  HASTE accuracy   {100 * result['accuracy']:.2f}%  (drop {result['drop_points']:.2f} points)")
    print(f"  dense FLOPs      {result['flops_dense'] / 1e6:.2f} M multiply-adds per image")
    print(f"  executed FLOPs   {result['flops_executed'] / 1e6:.2f} M")
    print(f"  overhead FLOPs   {result['flops_overhead'] / 1e6:.2f} M")
    print(f"  saving           {100 * result['saving']:.2f}% (overhead included)")
    return 0
