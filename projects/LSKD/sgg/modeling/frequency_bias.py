"""The frequency bias: log p(predicate | subject class, object class) from the training set.

The table starts from the empirical predicate distribution of each ordered class pair in the
training relations (duplicate predicates on a pair all counted); its background column counts
the training box pairs of that class pair whose boxes overlap, plus one. It is then trained with
the rest of the relation head.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def predicate_statistics(
    dataset_dicts: list[dict], num_classes: int, num_predicates: int
) -> np.ndarray:
    """(C, C, P + 1) int64 counts: [s, o, p] = training relations (s, o, p) for p >= 1, and
    [s, o, 0] = 1 + ordered pairs of distinct overlapping boxes of classes (s, o).

    Args:
        dataset_dicts: scene-graph dataset dicts (``annotations`` with XYXY ``bbox`` and
            ``category_id``, ``relations`` (R, 3)).
    """
    counts = np.zeros((num_classes, num_classes, num_predicates + 1), dtype=np.int64)
    for record in dataset_dicts:
        labels = np.array([a["category_id"] for a in record["annotations"]], dtype=np.int64)
        relations = np.asarray(record.get("relations", np.zeros((0, 3))), dtype=np.int64)
        if len(relations):
            s, o, p = relations.T
            np.add.at(counts, (labels[s], labels[o], p), 1)
        if len(labels) > 1:
            boxes = np.array([a["bbox"] for a in record["annotations"]], dtype=np.float64)
            lo = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
            hi = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
            overlap = ((hi - lo) > 0).all(axis=2)
            np.fill_diagonal(overlap, False)
            i, j = np.nonzero(overlap)
            np.add.at(counts, (labels[i], labels[j], 0), 1)
    counts[:, :, 0] += 1
    return counts


class FrequencyBias(nn.Module):
    """A trainable (C * C, P + 1) table indexed by the ordered class pair.

    Args:
        num_classes: C object classes.
        num_predicates: P predicates (the table has P + 1 columns, background first).
        statistics: optional (C, C, P + 1) counts (:func:`predicate_statistics`); the table
            starts at log(counts / counts.sum(-1) + 1e-3). Without it, at 0.
    """

    def __init__(self, num_classes: int, num_predicates: int, statistics=None):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes * num_classes, num_predicates + 1)
        with torch.no_grad():
            if statistics is None:
                self.table.weight.zero_()
            else:
                counts = torch.as_tensor(np.asarray(statistics), dtype=torch.float64)
                expected = (num_classes, num_classes, num_predicates + 1)
                if tuple(counts.shape) != expected:
                    raise ValueError(
                        f"FrequencyBias: statistics of shape {tuple(counts.shape)}, "
                        f"expected {expected}"
                    )
                dist = counts / counts.sum(dim=2, keepdim=True)
                self.table.weight.copy_(torch.log(dist + 1e-3).flatten(0, 1).float())

    def forward(self, subject_labels: torch.Tensor, object_labels: torch.Tensor) -> torch.Tensor:
        """(M,) x (M,) class ids 0 .. C-1 -> (M, P + 1) bias logits."""
        return self.table(subject_labels * self.num_classes + object_labels)
