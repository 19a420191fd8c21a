"""Pictures of a run: the loss curves."""

from __future__ import annotations

from pathlib import Path


def plot_losses(history: list[dict], path: Path, title: str) -> Path | None:
    """Train and validation loss against step, saved as a PNG. History rows: {step, name: value}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    valid = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if not train and not valid:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for points, label, style in ((train, "train loss", "-"), (valid, "validation loss", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
