"""Plots of the accuracy / FLOPs trade-off (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

#: The paper's CIFAR-10 headlines: (FLOPs saving %, top-1 drop in points).
PAPER_POINTS = {
    "paper ResNet34, CIFAR-10 (drop drawn from this dense)": (46.2, 1.25),
    "paper VGG19-BN, CIFAR-10 (drop drawn from this dense)": (38.83, 1.63),
}


def tradeoff(
    summary: list[dict],
    path: str | Path,
    *,
    dense_accuracy: float,
    title: str,
    series: tuple[str, ...] = (),
    paper: bool = True,
) -> Path:
    """Accuracy (%) against FLOPs saving (%, overhead included), mean +/- std over seeds.

    ``summary`` rows need accuracy_mean/std, saving_mean/std and hyperplanes; one line per distinct
    value of the ``series`` keys, points annotated with their hyperplanes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = defaultdict(list)
    for row in summary:
        lines[tuple(row.get(k) for k in series)].append(row)
    many = len(lines) > 4  # then the legend goes below the axes, one entry per line
    height = 5 + (0.14 * (len(lines) + 3) + 0.3 if many else 0)
    fig, ax = plt.subplots(figsize=(7.5, height))
    for key, rows in sorted(lines.items(), key=lambda kv: str(kv[0])):
        rows = sorted(rows, key=lambda r: r["saving_mean"])
        label = ", ".join(f"{k}={v}" for k, v in zip(series, key) if v not in (None, "")) or "uniform"
        label = label if len(label) <= 100 else label[:97] + "..."
        ax.errorbar(
            [100 * r["saving_mean"] for r in rows],
            [100 * r["accuracy_mean"] for r in rows],
            xerr=[100 * r["saving_std"] for r in rows],
            yerr=[100 * r["accuracy_std"] for r in rows],
            marker="o",
            markersize=3,
            capsize=2,
            label=label,
        )
        for r in rows:
            ax.annotate(
                str(r.get("label", r["hyperplanes"])),
                (100 * r["saving_mean"], 100 * r["accuracy_mean"]),
                fontsize=6,
                xytext=(2, 2),
                textcoords="offset points",
            )
    ax.axhline(100 * dense_accuracy, color="black", linewidth=0.8, label=f"dense {100 * dense_accuracy:.2f}%")
    if paper:
        for name, (saving, drop) in PAPER_POINTS.items():
            ax.plot([saving], [100 * dense_accuracy - drop], marker="*", markersize=10, linestyle="none", label=name)
    ax.set_xlabel("FLOPs saving, overhead included (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if many:  # axes in the top 5 inches, the legend under them
        fig.subplots_adjust(left=0.1, right=0.97, top=1 - 0.45 / height, bottom=1 - 4.4 / height)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(-0.08, -0.1), frameon=False)
    else:
        ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
