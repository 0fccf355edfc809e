"""Text tables of scene-graph metrics for the log."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tabulate import tabulate

from sgg.evaluation.metrics import GROUPS, RecallResult

# (row label, key pattern with {k}) of the summary table, in display order
_FAMILIES = (
    ("R", "R@{k}"),
    ("ngR", "ngR@{k}"),
    ("mR", "mR@{k}"),
    ("ng-mR", "ng-mR@{k}"),
    ("zR", "zR@{k}"),
    ("ng-zR", "ng-zR@{k}"),
    ("M", "M@{k}"),
    ("F", "F@{k}"),
    *((f"mR {g}", "mR@{k}_" + g) for g in GROUPS),
)


def format_tables(
    metrics: dict[str, float],
    recalls: RecallResult,
    topk: Sequence[int],
    predicate_names: Sequence[str],
    train_counts: np.ndarray | None = None,
) -> str:
    """A metric x K table (percent), the ``Mean`` line and a per-predicate recall table.

    Args:
        metrics: metric name -> percent, as returned by the evaluator.
        recalls: the :class:`RecallResult` (per-predicate recalls in percent).
        topk: the K values (columns).
        predicate_names: names of predicates 1..P.
        train_counts: (P,) training instances per predicate, or None.
    """
    rows = [
        [label] + [f"{metrics[pattern.format(k=k)]:.2f}" for k in topk]
        for label, pattern in _FAMILIES
        if all(pattern.format(k=k) in metrics for k in topk)
    ]
    header = ["metric"] + [f"@{k}" for k in topk]
    text = tabulate(rows, headers=header, tablefmt="pipe", stralign="right")
    if "Mean" in metrics:
        text += f"\nMean (R@50 + R@100 + mR@50 + mR@100) / 4 = {metrics['Mean']:.2f}"

    columns = [f"mR@{k}" for k in topk] + [f"ng-mR@{max(topk)}"]
    header = ["predicate", "train", "images"] + [c.replace("mR", "R") for c in columns]
    rows = []
    for i, name in enumerate(predicate_names):
        count = "-" if train_counts is None else int(train_counts[i])
        images = int(recalls.predicate_images[i]) if recalls.predicate_images is not None else 0
        rows.append([name, count, images] + [f"{recalls.per_predicate[c][i]:.2f}" for c in columns])
    text += "\nPer-predicate recall (percent; the mean over the images containing it):\n"
    text += tabulate(rows, headers=header, tablefmt="pipe", stralign="right")
    return text
