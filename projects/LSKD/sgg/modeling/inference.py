"""Turning relation-head outputs into ranked scene graphs (the benchmark's inference)."""

from __future__ import annotations

import torch
from detectron2.layers import batched_nms


def refine_labels_with_nms(
    boxes: torch.Tensor, obj_logits: torch.Tensor, nms_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGDet: per-class NMS over the refined class probabilities, then each box takes its best
    surviving class.

    Every (box, class) entry competes with the same class's entries of overlapping boxes; an
    entry suppressed by a higher-scoring box of its class drops out, so two overlapping boxes do
    not both keep the same label.

    Args:
        boxes: (N, 4) XYXY.
        obj_logits: (N, C + 1) refined object logits, background last.

    Returns:
        (N,) labels 0 .. C-1 and (N,) their probabilities (0 if every class was suppressed; the
        label is then the unsuppressed argmax).
    """
    probs = obj_logits.float().softmax(dim=1)[:, :-1]  # (N, C)
    n, c = probs.shape
    flat_boxes = boxes.float()[:, None, :].expand(n, c, 4).reshape(-1, 4)
    classes = torch.arange(c, device=boxes.device).repeat(n)
    kept = batched_nms(flat_boxes, probs.flatten(), classes, nms_threshold)
    surviving = torch.zeros_like(probs.flatten())
    surviving[kept] = probs.flatten()[kept]
    surviving = surviving.view(n, c)
    scores, labels = surviving.max(dim=1)
    none_left = scores <= 0
    labels[none_left] = probs[none_left].argmax(dim=1)
    return labels, scores


def rank_relations(
    pairs: torch.Tensor, rel_logits: torch.Tensor, obj_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort one image's pairs by triplet score = max foreground predicate probability x subject
    score x object score.

    Args:
        pairs: (M, 2) subject / object indices.
        rel_logits: (M, P + 1) predicate logits (bias included), background column 0.
        obj_scores: (N,) object scores (1 in PredCls).

    Returns:
        The sorted (M, 2) pairs, (M, P + 1) softmax predicate scores, (M,) triplet scores.
    """
    rel_scores = rel_logits.float().softmax(dim=1)
    best = rel_scores[:, 1:].max(dim=1).values if rel_scores.shape[0] else rel_scores[:, 0]
    triplet = best * obj_scores[pairs[:, 0]] * obj_scores[pairs[:, 1]]
    order = torch.argsort(triplet, descending=True, stable=True)
    return pairs[order], rel_scores[order], triplet[order]
