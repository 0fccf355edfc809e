"""Candidate object pairs of the relation head, and their predicate labels in training.

* Test: every ordered pair (i, j), i != j (optionally only pairs whose boxes overlap).
* Training on GT boxes (PredCls / SGCls): every GT relation is a foreground pair, at most
  ``batch_size * positive_fraction`` of them (a random subset beyond); the rest of the
  ``batch_size`` pairs are background (predicate 0), drawn at random from the ordered pairs that
  carry no GT relation.
* Training on detections (SGDet): a detection stands for a GT object when it has the same label
  and IoU > 0.5. For each GT relation (s, o, p) the detection pairs standing for (s, o) are
  foreground pairs of predicate p, at most ``num_sample_per_gt_rel`` of them, drawn with
  probability proportional to the product of the two IoUs. Background pairs are drawn among the
  other ordered pairs of detections that stand for some GT object.

Randomness comes from torch's global generator (seeded per worker by detectron2).
"""

from __future__ import annotations

import torch
from detectron2.structures import Boxes, pairwise_iou
from torch import nn


def all_ordered_pairs(
    num_objects: int, device: torch.device, boxes: torch.Tensor | None = None
) -> torch.Tensor:
    """(N (N - 1), 2) long, every ordered pair i != j in row-major order; with ``boxes`` (N, 4),
    only pairs whose boxes intersect."""
    idx = torch.arange(num_objects, device=device)
    i, j = torch.meshgrid(idx, idx, indexing="ij")
    keep = i != j
    if boxes is not None:
        keep &= pairwise_iou(Boxes(boxes), Boxes(boxes)) > 0
    return torch.stack([i[keep], j[keep]], dim=1)


def _random_subset(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` random True entries of a flat bool ``mask`` (all when fewer)."""
    candidates = torch.nonzero(mask).flatten()
    if len(candidates) > count:
        candidates = candidates[torch.randperm(len(candidates), device=mask.device)[:count]]
    return candidates


class PairSampler(nn.Module):
    """Training pairs and predicate labels of each image (no parameters).

    A module, so that distillers can record its output (``relation_head.sampler``).

    Args:
        batch_size_per_image: pairs per image.
        positive_fraction: the largest share of foreground pairs.
        num_sample_per_gt_rel: SGDet, detection pairs per GT relation.
        fg_iou_threshold: SGDet, IoU above which a detection stands for a GT object.
    """

    def __init__(
        self,
        batch_size_per_image: int = 1024,
        positive_fraction: float = 0.25,
        num_sample_per_gt_rel: int = 4,
        fg_iou_threshold: float = 0.5,
    ):
        super().__init__()
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.num_sample_per_gt_rel = num_sample_per_gt_rel
        self.fg_iou_threshold = fg_iou_threshold

    def forward(
        self,
        num_objects: list[int],
        relations: list[torch.Tensor],
        matches: list[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image, (M_i, 2) pairs and (M_i,) predicate labels (0 = background).

        Args:
            num_objects: N_i objects per image.
            relations: per image, (R_i, 3) GT relations (subject, object, predicate) over the GT
                objects.
            matches: SGDet only, per image (N_i, G_i) float: IoU of object i with GT object g
                where their labels agree, else 0. None: the objects are the GT objects.
        """
        pairs, labels = [], []
        for i, (n, rels) in enumerate(zip(num_objects, relations, strict=True)):
            if matches is None:
                fg_pairs, fg_labels = rels[:, :2], rels[:, 2]
                eligible = torch.ones(n, dtype=torch.bool, device=rels.device)
            else:
                fg_pairs, fg_labels = self._detection_positives(matches[i], rels)
                eligible = (matches[i] > self.fg_iou_threshold).any(dim=1)
            p, lab = self._sample_image(n, fg_pairs, fg_labels, eligible)
            pairs.append(p)
            labels.append(lab)
        return pairs, labels

    def _sample_image(self, n, fg_pairs, fg_labels, eligible):
        device = fg_labels.device
        max_fg = int(self.batch_size_per_image * self.positive_fraction)
        is_fg = torch.zeros(n * n, dtype=torch.bool, device=device)
        is_fg[fg_pairs[:, 0] * n + fg_pairs[:, 1]] = True  # never background, sampled or not
        keep = _random_subset(torch.ones(len(fg_pairs), dtype=torch.bool, device=device), max_fg)
        fg_pairs, fg_labels = fg_pairs[keep], fg_labels[keep]
        candidates = (eligible[:, None] & eligible[None, :]).flatten()
        candidates &= ~torch.eye(n, dtype=torch.bool, device=device).flatten() & ~is_fg
        bg = _random_subset(candidates, self.batch_size_per_image - len(fg_pairs))
        bg_pairs = torch.stack([bg // n, bg % n], dim=1)
        pairs = torch.cat([fg_pairs.long(), bg_pairs], dim=0)
        labels = torch.cat(
            [fg_labels.long(), torch.zeros(len(bg), dtype=torch.long, device=device)]
        )
        return pairs, labels

    def _detection_positives(self, match_iou: torch.Tensor, rels: torch.Tensor):
        """Foreground detection pairs of each GT relation, drawn without replacement with
        probability proportional to the IoU product (Gumbel top-k, all relations at once)."""
        n = len(match_iou)
        good = match_iou * (match_iou > self.fg_iou_threshold)  # (N, G)
        # (R, N, N): how well detection pair (a, b) stands for relation r's (subject, object)
        score = good[:, rels[:, 0]].T[:, :, None] * good[:, rels[:, 1]].T[:, None, :]
        score = score * ~torch.eye(n, dtype=torch.bool, device=score.device)
        score = score.flatten(1)
        gumbel = -torch.log(-torch.log(torch.rand_like(score).clamp(min=1e-12)))
        keys = torch.where(score > 0, score.log() + gumbel, torch.full_like(score, -torch.inf))
        top = keys.topk(min(self.num_sample_per_gt_rel, keys.shape[1]), dim=1)
        valid = top.values > -torch.inf
        chosen = top.indices[valid]
        labels = rels[:, 2, None].expand_as(top.indices)[valid]
        pairs = torch.stack([chosen // n, chosen % n], dim=1)
        # a detection pair drawn for two relations keeps one of them, at random
        order = torch.randperm(len(pairs), device=pairs.device)
        pairs, labels = pairs[order], labels[order]
        key = pairs[:, 0] * n + pairs[:, 1]
        first = torch.full((n * n,), len(key), dtype=torch.long, device=pairs.device)
        first.scatter_reduce_(0, key, torch.arange(len(key), device=key.device), reduce="amin")
        unique = first[first < len(key)]
        return pairs[unique], labels[unique]
