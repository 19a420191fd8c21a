"""Pictures of a run: the loss curves."""

from __future__ import annotations

from pathlib import Path


def plot_losses(history: list[dict], path: Path, title: str) -> Path | None:
    """Train and validation loss against step, saved as a PNG. History rows: {step, name: value}."""
    fig = loss_figure(history, title)  # selects the Agg backend before pyplot is imported
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    fig.savefig(path)
    plt.close(fig)
    return path


def loss_figure(history: list[dict], title: str):
    """The matplotlib figure of plot_losses (None when the history has no losses)."""
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
    values = [v for _, v in train + valid if v > 0]
    if values and max(values) > 10 * min(values):
        ax.set_yscale("log")  # from ln(vocab) ~ 10 down to ~0.1: the end of training is the part worth seeing
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
