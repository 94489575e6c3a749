"""What a LightningModule keeps in its checkpoint beyond weights and optimizer, so that a resumed run
equals the uninterrupted one: the best validation score so far (a MaxMetric, which torchmetrics
leaves out of the state dict)."""

from __future__ import annotations

from torchmetrics import MaxMetric

BEST_KEY = "val_best"


def save_best(metric: MaxMetric, checkpoint: dict) -> None:
    """checkpoint[BEST_KEY] = the best score so far, when there is one. The value is this process's:
    every process updates the metric with the same (synced) score, so no collective is needed while
    a checkpoint is written."""
    if metric.update_count:
        checkpoint[BEST_KEY] = float(metric.max_value)


def restore_best(metric: MaxMetric, checkpoint: dict) -> None:
    """The best score of a checkpoint written by save_best (none: the metric starts empty)."""
    metric.reset()
    if checkpoint.get(BEST_KEY) is not None:
        metric.update(checkpoint[BEST_KEY])
