"""The training curves as a PNG beside metrics.jsonl: losses on the left, validation metrics and the
learning rate on the right. Needs matplotlib (the ``train`` extra); without it the plot is left out."""

from __future__ import annotations

import os


def plot_metrics(records: list[dict], path: str) -> bool:
    """Write the plot; False (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [r["epoch"] for r in records]
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("train_loss", "-o"), ("val_loss", "--o")):
        if any(key in r for r in records):
            loss_ax.plot(epochs, [r.get(key) for r in records], style, label=key.replace("_", " "))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    for key in ("val_top1", "val_top5", "val_top1_ema", "val_miou", "val_miou_ema", "val_pixel_accuracy"):
        if any(key in r for r in records):
            metric_ax.plot(epochs, [r.get(key) for r in records], "-o", label=key.replace("_", " "))
    metric_ax.set_xlabel("epoch")
    metric_ax.set_ylabel("validation (fraction)")
    metric_ax.set_ylim(0, 1)
    metric_ax.grid(alpha=0.3)
    metric_ax.legend(loc="lower right")
    lr_ax = metric_ax.twinx()
    lr_ax.plot(epochs, [r["lr"] for r in records], ":", color="grey", label="lr")
    lr_ax.set_ylabel("learning rate (dotted)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True
