"""``haste train``: train a reference model with its fixed recipe and seed, write safetensors + card.

Training is not part of HASTE; it only produces the pre-trained model that HASTE compresses.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from haste.cli import positive_int
from haste.counting import count_flops
from haste.preprocess import normalize
from haste.zoo import WEIGHTS_DIR, build, paths
from haste.zoo.registry import entry

from .data import fashion_mnist


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels (zero-padded) and horizontal flips, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2), value=float(x.amin()))
    dy = torch.randint(0, 5, (n,), generator=gen)
    dx = torch.randint(0, 5, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 4)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def inputs(images: torch.Tensor, spec) -> torch.Tensor:
    """uint8 (N, H, W) dataset images -> normalised model inputs (N, C, H', W')."""
    return normalize(images[:, None], spec)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))  # fmt: skip
    return correct / len(x)


def train(name: str, *, out_dir: Path | None = None, data_dir: str | None = None, log=print) -> dict:
    """Train reference model ``name`` and write ``<name>.safetensors`` and ``<name>.json`` to ``out_dir``."""
    spec_entry = entry(name)
    recipe = spec_entry.recipe
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    train_x, train_y = fashion_mnist("train", data_dir)
    test_x, test_y = fashion_mnist("test", data_dir)
    x, tx = inputs(train_x, spec_entry.spec), inputs(test_x, spec_entry.spec)
    model = build(spec_entry.arch, width=spec_entry.width, in_channels=spec_entry.spec.channels,
                  num_classes=len(spec_entry.labels)).to(memory_format=torch.channels_last)  # fmt: skip
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
    )  # fmt: skip
    steps_per_epoch = len(x) // recipe.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, epochs=recipe.epochs,
                                                steps_per_epoch=steps_per_epoch)  # fmt: skip
    start = time.time()
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            logits = model(_augment(x[idx], gen).contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, train_y[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        acc = accuracy(model, tx, test_y)
        log(f"{name} epoch {epoch + 1}/{recipe.epochs} loss {total / steps_per_epoch:.4f} "
            f"test acc {acc:.4f} ({time.time() - start:.0f}s)")  # fmt: skip
    model.eval()
    calib_x, calib_y = fashion_mnist("calibration", data_dir)
    weights_path, card_path = paths(name, out_dir or WEIGHTS_DIR)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path))
    card = {
        "name": name,
        "arch": spec_entry.arch,
        "width": spec_entry.width,
        "architecture": f"CIFAR-style {spec_entry.arch} (3x3 stem, no max-pool) from torchvision blocks, "
        f"base width {spec_entry.width}",
        "dataset": spec_entry.dataset,
        "input": {
            **spec_entry.spec.as_dict(),
            "channels": spec_entry.spec.channels,
            "size": list(spec_entry.spec.size),
        },  # fmt: skip
        "labels": list(spec_entry.labels),
        "test_accuracy": accuracy(model, tx, test_y),
        "calibration_accuracy": accuracy(model, inputs(calib_x, spec_entry.spec), calib_y),
        "flops_dense": count_flops(model, (spec_entry.spec.channels, *spec_entry.spec.size)),
        "flops_convention": "multiply-adds per image (torchvision GFLOPS convention)",
        "recipe": {
            **recipe.__dict__,
            "command": f"haste train --model {name}",
            "train_split": "first 55000 Fashion-MNIST training images",
            "seconds": round(time.time() - start),
        },  # fmt: skip
        "seed": recipe.seed,
        "sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        "version": "1",
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    log(f"wrote {weights_path} and {card_path}: test accuracy {card['test_accuracy']:.4f}")
    return card


def add_command(sub) -> None:
    """Register ``haste train``."""
    p = sub.add_parser("train", help="train reference models with their fixed recipe and seed")
    p.add_argument("--model", nargs="+", required=True, help="reference model names (haste.zoo.names())")
    p.add_argument("--out", help="output directory (default: the package's zoo/weights)")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.model:
        train(name, out_dir=Path(args.out) if args.out else None, data_dir=args.data_dir)
    return 0
